"""A local Redis server (Debian's redis-server) on loopback with AOF persistence."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cmrqc_cli.infra.kafka import HOST, InfraError
from cmrqc_cli.infra.paths import run_dir
from cmrqc_cli.infra.process import port_open, read_pid, start_background, stop_process, wait_until

REDIS_PORT = 6379


def redis_dir() -> Path:
    return run_dir() / "redis"


def _pid_file() -> Path:
    return redis_dir() / "redis.pid"


def redis_url() -> str:
    return f"redis://{HOST}:{REDIS_PORT}/0"


def redis_ready() -> bool:
    """Redis answers PING and has finished loading its AOF."""
    if not port_open(HOST, REDIS_PORT):
        return False
    import redis

    try:
        client = redis.Redis(host=HOST, port=REDIS_PORT, socket_timeout=1)
        try:
            return bool(client.ping()) and client.info("persistence").get("loading") == 0
        finally:
            client.close()
    except redis.RedisError:
        return False


def start_redis(timeout_s: float = 20.0) -> float:
    """Start Redis if it is not running; return the seconds it took (0 if already up)."""
    started = time.monotonic()
    if read_pid(_pid_file()) and redis_ready():
        return 0.0
    server = shutil.which("redis-server")
    if server is None:
        raise InfraError("redis-server not found: apt-get install redis-server")
    if port_open(HOST, REDIS_PORT) and read_pid(_pid_file()) is None:
        raise InfraError(f"port {REDIS_PORT} is taken by a Redis this tool did not start")
    directory = redis_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if read_pid(_pid_file()) is None:
        start_background(
            [
                server,
                "--bind",
                HOST,
                "--port",
                str(REDIS_PORT),
                "--dir",
                str(directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            log_file=directory / "redis.log",
            pid_file=_pid_file(),
            cwd=directory,
        )
    if not wait_until(redis_ready, timeout_s):
        raise InfraError(f"Redis not ready in {timeout_s:.0f} s; see {directory / 'redis.log'}")
    return time.monotonic() - started


def stop_redis() -> bool:
    return stop_process(_pid_file())


def redis_status() -> dict[str, object]:
    pid = read_pid(_pid_file())
    return {"url": redis_url(), "pid": pid, "ready": bool(pid) and redis_ready()}
