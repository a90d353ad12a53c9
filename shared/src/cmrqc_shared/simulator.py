"""A PACS, simulated: synthetic studies pushed by C-STORE, one association per study.

Used by ``cmrqc simulate``, ``cmrqc demo`` and the retrainer's live learning curve. Needs the
``simulator`` extra (pynetdicom, tqdm).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmrqc_shared.datasets.splits import DEMO
from cmrqc_shared.dicom_scu import guard_response_race, set_tcp_nodelay


def push_studies(
    *,
    studies: int,
    rate_per_s: float,
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "CMRQC-SIM",
    seed_start: int = DEMO.start,
    enhanced: bool = False,
    progress: bool = True,
    on_study: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Render and C-STORE ``studies`` synthetic studies, one association each, at a rate.

    Returns one summary per study: seed, StudyInstanceUID, instances, status counts (or
    ``error`` when the association failed), seconds, and when its last instance was sent;
    ``on_study`` gets each summary as soon as its association is released.
    """
    from pydicom import dcmread
    from pydicom.uid import UID
    from pynetdicom import AE, evt
    from tqdm import tqdm

    from cmrqc_shared.synth import render_study, write_dicom_series

    # The SOP classes by UID (pynetdicom's named constants are generated at import time,
    # which static type checkers cannot see).
    mr_image_storage = UID("1.2.840.10008.5.1.4.1.1.4")
    enhanced_mr_image_storage = UID("1.2.840.10008.5.1.4.1.1.4.1")
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(mr_image_storage)
    ae.add_requested_context(enhanced_mr_image_storage)
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
    summary: list[dict[str, Any]] = []
    next_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cmrqc-simulate-") as tmp:
        for index in tqdm(range(studies), desc="simulate", unit="study", disable=not progress):
            seed = seed_start + index
            files = write_dicom_series(render_study(seed), Path(tmp) / str(seed), enhanced=enhanced)
            datasets = [dcmread(path) for path in files]
            time.sleep(max(0.0, next_start - time.monotonic()))
            next_start = max(next_start + interval, time.monotonic())
            started = time.perf_counter()
            assoc = guard_response_race(
                ae.associate(host, port, ae_title=called_aet, evt_handlers=handlers)
            )
            if not assoc.is_established:
                summary.append({"seed": seed, "error": "association rejected or aborted"})
                if on_study:
                    on_study(summary[-1])
                continue
            statuses: dict[str, int] = {}
            for dataset in datasets:
                status = assoc.send_c_store(dataset)
                code = f"0x{status.Status:04X}" if status else "no-response"
                statuses[code] = statuses.get(code, 0) + 1
            last_sent = time.time()
            assoc.release()
            summary.append(
                {
                    "seed": seed,
                    "study_instance_uid": str(datasets[0].StudyInstanceUID),
                    "series_instance_uid": str(datasets[0].SeriesInstanceUID),
                    "instances": len(datasets),
                    "statuses": statuses,
                    "seconds": round(time.perf_counter() - started, 3),
                    "last_instance_sent_at": last_sent,
                }
            )
            if on_study:
                on_study(summary[-1])
    return summary


def study_failed(study: dict[str, Any]) -> bool:
    """Whether a pushed study met an association failure or a non-success status."""
    return "error" in study or bool(set(study["statuses"]) - {"0x0000"})
