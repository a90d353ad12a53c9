"""Fixtures of the retrainer's tests: labelled synthetic cases in a real Redis, tiny models."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import torch

from cmrqc_qc_predictor.artifact import QcModel, artifact_bytes, load_artifact
from cmrqc_qc_predictor.conformal import ConformalCalibration
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, FastConfig, FastQcNet
from cmrqc_retrainer.labels import LabelledCase, LabelSource, LabelStore
from cmrqc_shared.blobs import BlobStore, RedisBlobStore
from cmrqc_shared.datasets.splits import QC_TRAIN
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import dilate, erode, shift
from cmrqc_shared.synth import render_study

TINY = FastConfig(stem=4, widths=(8, 8, 8), hidden=8, aux=False)


def tiny_model(seed: int = 0, version: str = "initial", views: tuple[int, ...] = ()) -> QcModel:
    """An untrained tiny fast model (predicts about 0.5 everywhere); ``views``: the averaged
    view counts it carries interval calibrations for."""
    torch.manual_seed(seed)
    network = FastQcNet(TINY)
    data = artifact_bytes(
        network,
        architecture=FAST_ARCHITECTURE,
        calibration=ConformalCalibration(np.full((20, 5), 0.1, np.float32)),
        name="qc-predictor",
        version=version,
        options={
            "stem": TINY.stem,
            "widths": list(TINY.widths),
            "hidden": TINY.hidden,
            "aux": False,
        },
        view_calibrations={
            n: ConformalCalibration(np.full((20, 5), 0.1, np.float32)) for n in views
        },
    )
    return load_artifact(data)


@pytest.fixture(scope="session")
def synthetic_cases() -> list[tuple[np.ndarray, np.ndarray, list[list[float]], dict[str, float]]]:
    """40 (volume, segmentation, affine, true Dice): 8 subjects, mostly decent segmentations."""
    rng = np.random.default_rng(7)
    cases = []
    for seed in range(QC_TRAIN.start + 300, QC_TRAIN.start + 308):
        study = render_study(seed, phases=("ED",))
        phase = study.phase("ED")
        affine = np.asarray(study.affine, np.float64).tolist()
        for corrupt in (None, shift, dilate, erode, None):
            labels = phase.labels if corrupt is None else corrupt(phase.labels, rng, 0.5)[0]
            truth = dice_per_class(labels, phase.labels).model_dump()
            cases.append((phase.image, labels.astype(np.uint8), affine, truth))
    return cases


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test; its keys (retained model artifacts among them, which
    never expire) are deleted afterwards."""
    name = f"test:{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{name}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def blobs(redis_url: str, prefix: str) -> Iterator[BlobStore]:
    store = RedisBlobStore(redis_url, ttl_seconds=3600, key_prefix=f"{prefix}:blob:")
    yield store
    store.close()


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[LabelStore]:
    labels = LabelStore(redis.Redis.from_url(redis_url), f"{prefix}:labels", 0.3)
    yield labels
    labels.close()


def labelled(
    blobs: BlobStore,
    case: tuple[np.ndarray, np.ndarray, list[list[float]], dict[str, float]],
    index: int,
    *,
    source: LabelSource = "rca",
    dsc: dict[str, float] | None = None,
    series: str | None = None,
) -> LabelledCase:
    image, labels, affine, truth = case
    return LabelledCase(
        segmentation_event_id=f"seg-{index}",
        series_instance_uid=series or f"1.2.3.{index}",
        volume=blobs.put_array(image),
        labelmap=blobs.put_array(labels),
        affine=affine,
        dsc=dsc or truth,
        source=source,
        label_event_id=f"{source}-{index}-{uuid.uuid4().hex[:6]}",
    )
