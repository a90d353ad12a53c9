"""Starting the pass-through service as a real process, as the cross-service tests need it."""

from __future__ import annotations

import os
import subprocess
import sys

from cmrqc_shared.settings import KafkaSettings


def start_passthrough(
    kafka: KafkaSettings,
    *,
    input_topic: str,
    output_topic: str,
    group: str,
    instance_id: str,
    idle_timeout_s: float,
    **runner_settings: str,
) -> subprocess.Popen[bytes]:
    """``python -m cmrqc_cli.passthrough`` in the test's topic namespace.

    ``runner_settings`` become ``CMRQC_PASSTHROUGH_RUNNER__<NAME>`` variables.
    """
    env = {
        **os.environ,
        "CMRQC_PASSTHROUGH_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CMRQC_PASSTHROUGH_KAFKA__TOPIC_NAMESPACE": kafka.topic_namespace,
        "CMRQC_PASSTHROUGH_RUNNER__GROUP_ID": group,
        "CMRQC_PASSTHROUGH_RUNNER__INSTANCE_ID": instance_id,
        "CMRQC_PASSTHROUGH_RUNNER__HEALTH_PORT": "0",
        "CMRQC_PASSTHROUGH_LOG_LEVEL": "WARNING",
    }
    env.update({f"CMRQC_PASSTHROUGH_RUNNER__{k.upper()}": v for k, v in runner_settings.items()})
    command = [
        sys.executable,
        "-m",
        "cmrqc_cli.passthrough",
        "--input-topic",
        input_topic,
        "--output-topic",
        output_topic,
        "--idle-timeout",
        str(idle_timeout_s),
    ]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
