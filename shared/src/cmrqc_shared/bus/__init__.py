"""The bus: one runner over kafka-python, its error policy and its observability."""

from cmrqc_shared.bus.errors import (
    ErrorAction,
    ErrorPolicy,
    PermanentError,
    failure_reason,
    retry_then_dead_letter,
)
from cmrqc_shared.bus.observability import ObservabilityServer, RunnerMetrics
from cmrqc_shared.bus.runner import (
    BatchHandler,
    Handler,
    Output,
    Produce,
    RecordContext,
    RunStats,
    StreamRunner,
)

__all__ = [
    "BatchHandler",
    "ErrorAction",
    "ErrorPolicy",
    "Handler",
    "ObservabilityServer",
    "Output",
    "PermanentError",
    "Produce",
    "RecordContext",
    "RunStats",
    "RunnerMetrics",
    "StreamRunner",
    "failure_reason",
    "retry_then_dead_letter",
]
