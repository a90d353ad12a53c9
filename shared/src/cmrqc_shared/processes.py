"""Services started as child processes, the way their containers run them.

``cmrqc demo`` and the retrainer's live learning curve start every service as its own process
(``cmrqc-<name>``) with its settings in the environment, wait for ``/readyz`` and stop them
with SIGTERM (they drain and commit).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """One service started as a child process, with its health port and log file."""

    name: str
    env_prefix: str
    extra_env: dict[str, str] = field(default_factory=dict)
    instance: str | None = None
    """Distinguishes replicas of one service (log file name; ``name`` otherwise)."""
    health_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        return self.instance or self.name

    def executable(self) -> str | None:
        script = f"cmrqc-{self.name}"
        return shutil.which(script) or (
            str(Path(sys.executable).parent / script)
            if (Path(sys.executable).parent / script).exists()
            else None
        )

    def start(self, common_env: dict[str, str], log_dir: Path) -> None:
        executable = self.executable()
        if executable is None:
            raise RuntimeError(f"service {self.name} is not installed (no cmrqc-{self.name})")
        env = {**os.environ, **common_env, **self.extra_env}
        env[f"{self.env_prefix}RUNNER__HEALTH_PORT"] = str(self.health_port)
        env[f"{self.env_prefix}RUNNER__HEALTH_HOST"] = "127.0.0.1"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{self.label}.log", "ab") as log:
            self.process = subprocess.Popen(
                [executable],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"service {self.label} exited (see its log)")
        try:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def ingest_process(
    dicom_port: int, spool_dir: Path, extra_env: dict[str, str] | None = None
) -> ServiceProcess:
    """The ingest service listening for C-STORE on ``dicom_port`` (STOW-RS on a free port),
    spooling under ``spool_dir``."""
    return ServiceProcess(
        "ingest",
        "CMRQC_INGEST_",
        {
            "CMRQC_INGEST_DICOM_PORT": str(dicom_port),
            "CMRQC_INGEST_STOW_PORT": str(free_port()),
            "CMRQC_INGEST_SPOOL_DIR": str(spool_dir),
            **(extra_env or {}),
        },
    )
