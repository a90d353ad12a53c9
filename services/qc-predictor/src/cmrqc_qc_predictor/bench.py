"""``cmrqc bench qc``: the paper's network against the fast one, in the same run.

Per case, from the arrays in memory to five Dice values: input preparation (validation,
resampling to the 5 × 8 × 224 × 224 grid, and for the fast model its crop and shape features)
plus the network's forward pass. Measured at batch 1 (one case at a time) and batched (N cases
prepared, then one forward pass; per-case = total / N), on the CPU with a fixed number of torch
threads, and on the GPU when ``torch.cuda.is_available()`` (float16 autocast, synchronised).
The cases are synthetic studies from the DEMO seed range. Each model runs in its own process
(as the services do), warmed up by one untimed round; timed rounds alternate between the
models, one process working at a time; figures are medians over rounds; nothing is asserted
about them.

OpenMP's wait policy changes CPU figures a lot on a 2-core machine (idle threads spinning or
sleeping between the many small parallel regions of a forward pass), and the workers would
otherwise inherit whatever the parent process set — ``cmrqc``'s segmenter plugin sets
``OMP_WAIT_POLICY=PASSIVE`` for its own service when imported. So the CPU is measured under
each policy of ``CPU_WAIT_POLICIES`` explicitly: unset (the runtime's default, as the QC
predictor's container runs) and ``PASSIVE`` (as a deployment may set it for CPU-limited pods).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrqc_qc_predictor.artifact import (
    BUILTIN_FAST,
    QcModel,
    check_view_count,
    load_artifact_file,
)
from cmrqc_qc_predictor.inputs import case_inputs, collate
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, PAPER_ARCHITECTURE, PaperResNet3d
from cmrqc_qc_predictor.predictor import Case, run_network
from cmrqc_qc_predictor.prepare import prepare_input
from cmrqc_shared.datasets.splits import DEMO


def bench_cases(count: int) -> list[Case]:
    """``count`` synthetic ED cases (DEMO seeds) with their true labels as segmentation."""
    from cmrqc_shared.synth import render_study

    cases = []
    for seed in DEMO.seeds(count):
        phase = render_study(seed, phases=("ED",)).phase("ED")
        cases.append(
            Case(phase.image, phase.labels, phase.pixel_spacing_mm, phase.slice_spacing_mm)
        )
    return cases


def _prepare(architecture: str, case: Case) -> dict[str, torch.Tensor]:
    prepared = prepare_input(case.image, case.labels, case.pixel_spacing_mm, case.slice_spacing_mm)
    return case_inputs(architecture, prepared)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Per-case milliseconds of one model, appended to round by round."""

    single_prepare: list[float] = field(default_factory=list)
    single_forward: list[float] = field(default_factory=list)
    batched_prepare: list[float] = field(default_factory=list)
    batched_forward: list[float] = field(default_factory=list)

    def summary(self, batch: int) -> dict[str, Any]:
        """Medians: prepare / forward / total ms at batch 1 and batched."""

        def one(prepare_ms: list[float], forward_ms: list[float]) -> dict[str, float]:
            prep, fwd = statistics.median(prepare_ms), statistics.median(forward_ms)
            return {
                "prepare_ms": round(prep, 2),
                "forward_ms": round(fwd, 2),
                "total_ms": round(prep + fwd, 2),
            }

        return {
            "batch_1": one(self.single_prepare, self.single_forward),
            f"batch_{batch}": one(self.batched_prepare, self.batched_forward),
        }


def measure_round(
    model: QcModel,
    cases: list[Case],
    device: torch.device,
    batch: int,
    timings: Timings,
    views: int = 1,
) -> None:
    """One round: every case alone (batch 1), then all of them as one batch; the network
    averaged over ``views`` in-plane views (fast model)."""
    architecture = model.architecture
    for case in cases[:batch]:
        _sync(device)
        started = time.perf_counter()
        one = collate([_prepare(architecture, case)])
        prepared_at = time.perf_counter()
        run_network(model, one, device, views)
        _sync(device)
        timings.single_prepare.append((prepared_at - started) * 1000.0)
        timings.single_forward.append((time.perf_counter() - prepared_at) * 1000.0)
    _sync(device)
    started = time.perf_counter()
    stacked = collate([_prepare(architecture, case) for case in cases[:batch]])
    prepared_at = time.perf_counter()
    run_network(model, stacked, device, views)
    _sync(device)
    timings.batched_prepare.append((prepared_at - started) * 1000.0 / batch)
    timings.batched_forward.append((time.perf_counter() - prepared_at) * 1000.0 / batch)


FAST_VIEWS_PREFIX = "fast-views-"
"""Worker name of the fast model averaged over N in-plane views: ``fast-views-N``."""


def _views_of(name: str) -> int:
    return int(name.removeprefix(FAST_VIEWS_PREFIX)) if name.startswith(FAST_VIEWS_PREFIX) else 1


def _load_model(name: str, fast_artifact: str) -> QcModel:
    if name == "fast" or name.startswith(FAST_VIEWS_PREFIX):
        path = BUILTIN_FAST if fast_artifact == "builtin" else Path(fast_artifact)
        return load_artifact_file(path)
    from cmrqc_qc_predictor.conformal import ConformalCalibration

    torch.manual_seed(0)
    return QcModel(
        network=PaperResNet3d().eval(),
        architecture=PAPER_ARCHITECTURE,
        calibration=ConformalCalibration(np.zeros((1, 5), np.float32)),
        name="paper-untrained-for-timing",
        version="random-init",
    )


def _model_worker(
    connection: Connection,
    name: str,
    fast_artifact: str,
    device_name: str,
    batch: int,
    threads: int,
) -> None:
    """One model in its own process: warm up (one untimed round), then a timed round per
    request; the timings when asked to stop."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    model = _load_model(name, fast_artifact)
    model.network.to(device).eval()
    cases = bench_cases(batch)
    views = _views_of(name)
    measure_round(model, cases, device, batch, Timings(), views)  # warm-up: allocator, kernels
    connection.send("ready")
    timings = Timings()
    while connection.recv() == "round":
        measure_round(model, cases, device, batch, timings, views)
        connection.send("done")
    connection.send(timings)


def measure_side_by_side(
    names: list[str],
    *,
    fast_artifact: str,
    device_name: str,
    batch: int,
    rounds: int,
    threads: int,
) -> dict[str, dict[str, Any]]:
    """Per-case timings of every model, each in its own warmed-up process (as deployed: the
    services never share a process), rounds alternating between the models in turned order
    and only one process working at a time.

    Raises:
        RuntimeError: a worker failed (its traceback is on stderr).
    """
    context = multiprocessing.get_context("spawn")
    workers = {}
    try:
        for name in names:
            parent, child = context.Pipe()
            process = context.Process(
                target=_model_worker,
                args=(child, name, fast_artifact, device_name, batch, threads),
                daemon=True,
            )
            process.start()
            workers[name] = (process, parent)
            if _receive(parent, name) != "ready":
                raise RuntimeError(f"bench worker for {name} did not start")
        for index in range(rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                workers[name][1].send("round")
                _receive(workers[name][1], name)
        results = {}
        for name, (_, connection) in workers.items():
            connection.send("stop")
            measured: Timings = _receive(connection, name)
            results[name] = measured.summary(batch)
        return results
    finally:
        for process, _ in workers.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


CPU_WAIT_POLICIES: dict[str, str | None] = {"cpu": None, "cpu-omp-passive": "PASSIVE"}
"""Report key → ``OMP_WAIT_POLICY`` of the workers (None: unset, the runtime's default)."""


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name]`` set (or removed, for None) while workers are spawned: a spawned
    child copies the environment when it starts."""
    saved = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _receive(connection: Connection, name: str) -> Any:
    try:
        return connection.recv()
    except EOFError as error:
        raise RuntimeError(f"bench worker for {name} failed (see its traceback)") from error


def run_bench(
    *,
    batch: int = 8,
    rounds: int = 3,
    threads: int = 2,
    devices: list[str] | None = None,
    fast_artifact: str = "builtin",
    fast_views: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Both models, every device; per-case latencies and the paper/fast ratios.
    ``fast_views``: also the fast model averaged over that many in-plane views (each in its own
    process, in the same alternating rounds), with its own ratios.

    Raises:
        ArtifactError, OSError: the fast artifact cannot be loaded.
    """
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    _load_model("fast", fast_artifact)  # a bad artifact fails here, not in a worker
    report: dict[str, Any] = {
        "cases": f"{batch} synthetic ED studies (DEMO seeds), true labels as segmentation",
        "threads": threads,
        "batch": batch,
        "rounds": rounds,
        "torch": torch.__version__,
        "devices": {},
    }
    runs: list[tuple[str, str, str | None]] = []  # report key, device, OMP_WAIT_POLICY
    for name in devices:
        if torch.device(name).type == "cpu":
            runs += [(key, name, policy) for key, policy in CPU_WAIT_POLICIES.items()]
        else:
            runs.append((name, name, os.environ.get("OMP_WAIT_POLICY")))
    for views in fast_views:
        check_view_count(views)
    names = ["paper", "fast"] + [f"{FAST_VIEWS_PREFIX}{views}" for views in fast_views]
    for key, name, policy in runs:
        device = torch.device(name)
        with _environment("OMP_WAIT_POLICY", policy):
            results = measure_side_by_side(
                names,
                fast_artifact=fast_artifact,
                device_name=name,
                batch=batch,
                rounds=rounds,
                threads=threads,
            )
        ratios = {
            size: round(results["paper"][size]["total_ms"] / results["fast"][size]["total_ms"], 1)
            for size in results["fast"]
        }
        view_ratios = {
            f"ratio_paper_over_{model_name.replace('-', '_')}": {
                size: round(
                    results["paper"][size]["total_ms"] / results[model_name][size]["total_ms"], 1
                )
                for size in results[model_name]
            }
            for model_name in names[2:]
        }
        report["devices"][key] = {
            **results,
            "ratio_paper_over_fast": ratios,
            **view_ratios,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "omp_wait_policy": policy or "unset (runtime default)",
        }
    report["architectures"] = {"paper": PAPER_ARCHITECTURE, "fast": FAST_ARCHITECTURE}
    return report
