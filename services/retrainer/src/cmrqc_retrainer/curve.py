"""``cmrqc retrainer-curve``: the online learning curve, replayed from a labelled QC dataset.

The retrainer's own parts — label store, ``Retrainer`` rounds, model registry, blob store,
``ModelPublished`` on Kafka — run for real; what is simulated is the arrival of labels, fed to
the label store in chunks instead of through the RCA labeller's topic:

1. An initial predictor is trained from scratch on a small ground-truth set (the first
   ``initial_cases`` QC_VAL samples of the label file, with their true Dice).
2. The QC_TRAIN samples of the label file arrive in chunks of ``chunk``, in a seeded random
   order of their scans. A sample whose series
   falls in the retrainer's holdout arrives as an annotator's ground truth (true Dice), every
   other one as its RCA label (the file's ``calibrated_dsc``): as in a deployment where
   annotators verify a fixed sample of studies and RCA labels the rest.
3. After each chunk the retrainer runs a round (challenger fine-tuned from the champion,
   promoted only when better on the holdout). Each point records the retrainer's holdout WH
   MAE of the model serving after the round and — what it cannot see — that model's WH MAE
   against the true Dice on the QC_TEST split.

Writes ``curve.json`` and ``curve.png`` under ``--out``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from cmrqc_qc_predictor.artifact import QcModel, artifact_bytes, load_artifact
from cmrqc_qc_predictor.conformal import ConformalCalibration
from cmrqc_qc_predictor.data import (
    FastArrays,
    QcDatasets,
    balanced_split,
    fast_arrays,
    fast_arrays_from_cases,
)
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, FastConfig, FastQcNet
from cmrqc_qc_predictor.training import fit_fast, predict_fast_arrays
from cmrqc_retrainer.labels import CLASSES, LabelledCase, LabelStore, split_of
from cmrqc_retrainer.settings import RetrainerSettings
from cmrqc_retrainer.worker import Retrainer
from cmrqc_shared.blobs import open_blob_store
from cmrqc_shared.bus.publisher import EventPublisher
from cmrqc_shared.events import ProducerInfo
from cmrqc_shared.qcdata.dataset import QcSample
from cmrqc_shared.registry import ModelRegistry
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import ensure_namespaced_topics


def _read_labels(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rows(arrays: FastArrays, rows: slice) -> FastArrays:
    return FastArrays(
        arrays.crops[rows], arrays.features[rows], arrays.references[rows], arrays.targets[rows]
    )


def initial_artifact(
    dataset: QcDatasets,
    cases: list[tuple[QcSample, dict[str, float]]],
    *,
    epochs: int,
    seed: int = 0,
) -> bytes:
    """The fast model trained from scratch on ``cases`` (sample, true Dice), 80/20 by order:
    the artifact's bytes."""
    inputs, targets = [], []
    for sample, dsc in cases:
        scan = dataset.scan(sample.scan_id)
        inputs.append(
            (scan.image, dataset.segmentation(sample), scan.pixel_spacing_mm, scan.slice_spacing_mm)
        )
        targets.append([dsc[c] for c in CLASSES])
    arrays = fast_arrays_from_cases(inputs, np.asarray(targets, np.float32))
    cut = max(1, int(len(cases) * 0.8))
    fit, val = _rows(arrays, slice(None, cut)), _rows(arrays, slice(cut, None))
    torch.manual_seed(seed)
    config = FastConfig(aux=False)
    network = FastQcNet(config)
    features = torch.from_numpy(fit.features)
    network.set_feature_statistics(features.mean(dim=0), features.std(dim=0))
    network, _, val_predicted, _ = fit_fast(
        network,
        fit,
        val,
        epochs=epochs,
        batch_size=16,
        learning_rate=2e-3,
        seed=seed,
        progress=False,
        reference_loss=False,
    )
    return artifact_bytes(
        network,
        architecture=FAST_ARCHITECTURE,
        calibration=ConformalCalibration.fit(val_predicted, val.targets),
        name="qc-predictor",
        version=f"curve-initial-{len(cases)}gt",
        options=asdict(config),
    )


def initial_model(
    dataset: QcDatasets, rows: list[dict[str, Any]], *, epochs: int, seed: int = 0
) -> QcModel:
    """``initial_artifact`` of label-file ``rows`` with their true Dice, loaded."""
    by_id = {s.sample_id: s for s in dataset.samples}
    cases = [(by_id[row["sample_id"]], row["true_dsc"]) for row in rows]
    return load_artifact(initial_artifact(dataset, cases, epochs=epochs, seed=seed))


def run_curve(
    *,
    dataset_root: Path,
    labels_file: Path,
    out: Path,
    kafka: KafkaSettings,
    redis_url: str,
    initial_cases: int = 50,
    chunk: int = 100,
    epochs: int = 8,
    initial_epochs: int = 20,
    holdout_fraction: float = 0.2,
    min_holdout: int = 10,
    seed: int = 0,
    keep: bool = False,
) -> dict[str, Any]:
    """Replay the label stream; returns (and writes) the curve. The simulation's label store,
    registry and model artifacts are deleted from Redis afterwards unless ``keep``."""
    started = time.monotonic()
    dataset = QcDatasets([dataset_root])
    rows = _read_labels(labels_file)
    by_id = {s.sample_id: s for s in dataset.samples}
    seed_rows = [r for r in rows if by_id[r["sample_id"]].split == "val"][:initial_cases]
    stream = [r for r in rows if by_id[r["sample_id"]].split == "train"]
    # Arrival order: shuffled (seeded) by scan — the label file is ordered by Dice bin, and
    # studies do not arrive sorted by their segmentation's quality.
    scans = sorted({by_id[r["sample_id"]].scan_id for r in stream})
    rank = {scan: i for i, scan in enumerate(np.random.default_rng(seed).permutation(scans))}
    stream.sort(key=lambda r: (rank[by_id[r["sample_id"]].scan_id], r["sample_id"]))
    initial = initial_model(dataset, seed_rows, epochs=initial_epochs, seed=seed)

    run = f"curve-{uuid.uuid4().hex[:8]}"
    kafka = kafka.model_copy(update={"topic_namespace": f"{kafka.topic_namespace}{run}."})
    ensure_namespaced_topics(kafka)
    client = redis.Redis.from_url(redis_url)
    blobs = open_blob_store(redis_url)
    store = LabelStore(client, f"cmrqc:{run}:labels", holdout_fraction)
    settings = RetrainerSettings(
        min_new_labels=max(1, int(chunk * (1 - holdout_fraction) * 0.5)),
        min_holdout=min_holdout,
        epochs=epochs,
        batch_size=16,
        learning_rate=1e-3,
        holdout_fraction=holdout_fraction,
    )
    test_samples = balanced_split(dataset, "test", seed=0)
    test = fast_arrays(dataset, test_samples, progress=False)

    def test_wh_mae(model: QcModel) -> float:
        network = model.network
        assert isinstance(network, FastQcNet)
        predicted = predict_fast_arrays(network, test.crops, test.features)
        return float(np.abs(predicted[:, 4] - test.targets[:, 4]).mean())

    points: list[dict[str, Any]] = [
        {
            "round": 0,
            "labels_seen": 0,
            "serving": initial.version,
            "promoted": None,
            "holdout_wh_mae": None,
            "test_wh_mae": test_wh_mae(initial),
        }
    ]
    with EventPublisher(kafka) as publisher:
        registry = ModelRegistry(
            client,
            blobs,
            publisher,
            actor=ProducerInfo(service="retrainer-curve", version="0"),
            key_prefix=f"cmrqc:{run}:models:",
        )
        trainer = Retrainer(settings, store, registry, blobs, initial)
        for start in range(0, len(stream), chunk):
            for row in stream[start : start + chunk]:
                sample = by_id[row["sample_id"]]
                scan = dataset.scan(sample.scan_id)
                holdout = split_of(sample.scan_id, holdout_fraction) == "holdout"
                label = row["true_dsc"] if holdout else (row["calibrated_dsc"] or row["rca_dsc"])
                store.record(
                    LabelledCase(
                        segmentation_event_id=sample.sample_id,
                        series_instance_uid=sample.scan_id,
                        volume=blobs.put_array(scan.image),
                        labelmap=blobs.put_array(dataset.segmentation(sample)),
                        affine=np.asarray(scan.affine, np.float64).tolist(),
                        dsc={c: float(label[c]) for c in CLASSES},
                        source="groundtruth" if holdout else "rca",
                        label_event_id=f"{run}-{sample.sample_id}",
                    )
                )
            decision = trainer.run_once()
            serving, version = trainer.champion()
            points.append(
                {
                    "round": len(points),
                    "labels_seen": min(start + chunk, len(stream)),
                    "serving": version,
                    "promoted": decision.promoted if decision else None,
                    "holdout_wh_mae": decision.serving_holdout_wh_mae if decision else None,
                    "challenger_holdout_wh_mae": (
                        decision.challenger_holdout_mae["WH"] if decision else None
                    ),
                    "test_wh_mae": test_wh_mae(serving),
                    "store": store.counts(),
                }
            )
    summary = {
        "dataset": str(dataset_root),
        "labels": str(labels_file),
        "initial_ground_truth_cases": len(seed_rows),
        "streamed_labels": len(stream),
        "chunk": chunk,
        "test_cases": len(test_samples),
        "points": points,
        "seconds": round(time.monotonic() - started, 1),
        "run": run,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_curve_png(summary, out / "curve.png")
    if not keep:
        for entry in registry.versions("qc-predictor"):
            blobs.delete(entry.artifact.sha256)  # retained blobs never expire on their own
        for key in client.scan_iter(match=f"cmrqc:{run}:*"):
            client.delete(key)
    store.close()
    return summary


def write_curve_png(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = summary["points"]
    labels = [p["labels_seen"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(
        labels, [p["test_wh_mae"] for p in points], "o-", label="serving model, QC_TEST (true Dice)"
    )
    held = [(p["labels_seen"], p["holdout_wh_mae"]) for p in points if p["holdout_wh_mae"]]
    if held:
        ax.plot(*zip(*held, strict=True), "s--", label="serving model, retrainer holdout")
    for p in points:
        if p["promoted"]:
            ax.axvline(p["labels_seen"], color="tab:green", alpha=0.2)
    ax.set_xlabel("labels streamed (RCA; ground truth on the holdout series)")
    ax.set_ylabel("WH Dice MAE")
    ax.set_title(
        f"Online retraining from {summary['initial_ground_truth_cases']} ground-truth cases "
        "(green: promotion)"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
