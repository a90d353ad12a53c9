"""Training either network on a QC dataset, with validation each epoch and conformal calibration.

* Data: the dataset's own splits (by scan), balanced per split (``data.balanced_split``);
  ``holdout_family`` removes one family from training and validation (for the
  generalisation test, which then evaluates on that family alone).
* Loss: mean squared error on the five Dice values (the paper's). The fast model may instead
  fine-tune on the absolute error (``loss="l1"``: the figure it is judged by; the MSE optimum is
  the conditional mean, the L1 optimum the median) and validate an exponential moving average of
  its weights (``ema_decay``). Validation after every epoch; the epoch with the lowest mean
  validation MAE is the model kept (the paper's model selection).
* ``paper``: Adam, learning rate 1e-5 with Keras-style time decay lr / (1 + 0.005 · step),
  inputs prepared on the fly (batch as memory allows; 2 on a CPU). ``max_train`` / ``max_val`` /
  ``time_budget_s`` bound a run on a CPU, where this network cannot be trained to convergence;
  the model card records the budget.
* ``fast``: AdamW with a one-cycle schedule, in-plane flips and 90° rotations as augmentation
  (Dice is invariant to them when image and segmentation turn together), cached inputs.
* Afterwards the selected model predicts the validation split once more and the absolute
  residuals become its conformal calibration; the artifact (safetensors), the model card
  (JSON and Markdown) and the training curve (PNG) are written to ``out``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from cmrqc_qc_predictor.artifact import MAX_VIEWS, artifact_bytes
from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.conformal import ConformalCalibration
from cmrqc_qc_predictor.data import (
    FastArrays,
    QcDatasets,
    balanced_split,
    fast_arrays,
    prepare_sample,
    targets_of,
)
from cmrqc_qc_predictor.features import FEATURE_NAMES
from cmrqc_qc_predictor.models import (
    FAST_ARCHITECTURE,
    PAPER_ARCHITECTURE,
    FastConfig,
    FastQcNet,
    PaperResNet3d,
)
from cmrqc_qc_predictor.plots import training_curve_png
from cmrqc_qc_predictor.predictor import view_of
from cmrqc_qc_predictor.scoring import mae_per_class
from cmrqc_shared.qcdata.dataset import QcSample, bin_counts

logger = logging.getLogger(__name__)

ModelKind = Literal["fast", "paper"]
LossKind = Literal["mse", "l1"]
LOSSES: tuple[LossKind, ...] = ("mse", "l1")
ARCHITECTURES: dict[str, str] = {"fast": FAST_ARCHITECTURE, "paper": PAPER_ARCHITECTURE}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Learning rate None: the model's default (fast 2e-3, paper 1e-5)."""

    model: ModelKind
    datasets: tuple[Path, ...]
    out: Path
    epochs: int = 30
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int = 0
    holdout_family: str | None = None
    time_budget_s: float | None = None
    max_train: int | None = None
    max_val: int | None = None
    cache_dir: Path | None = None
    init: Path | None = None
    progress: bool = True
    version: str = ""
    name: str = "qc-predictor"
    fast: FastConfig = field(default_factory=FastConfig)
    labels: Path | None = None
    """JSON lines of ``cmrqc rca-labels``: train and validate only on those samples, with
    ``label_field`` as the targets instead of the true Dice (the paper's Experiment 2)."""
    label_field: str = "calibrated_dsc"
    loss: LossKind = "mse"
    """fast: the loss on the five Dice values (the paper model always uses MSE)."""
    ema_decay: float | None = None
    """fast: validate and keep an exponential moving average of the weights (e.g. 0.998)."""
    distill_from: Path | None = None
    """fast: a teacher artifact; the training targets become ``(1 − distill_weight) · true +
    distill_weight · teacher``, the teacher's prediction averaged over the 8 in-plane views
    (self-distillation of a test-time ensemble the real-time path cannot afford)."""
    distill_weight: float = 0.5


@dataclass
class TrainResult:
    """Where the run's files are and what it measured."""

    artifact: Path
    card: dict[str, Any]
    history: list[dict[str, Any]]


def _relabelled(
    dataset: QcDatasets, labels_file: Path, label_field: str, excluded: list[str]
) -> tuple[list[QcSample], list[QcSample]]:
    """Train and val samples of the label file, their targets replaced by ``label_field``
    (``calibrated_dsc`` falls back to ``rca_dsc`` where the labeller had no calibration).

    Raises:
        ValueError: the file labels no train or no val sample, or names an unknown sample.
    """
    labels: dict[str, dict[str, float]] = {}
    for line in labels_file.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        value = record.get(label_field) or (
            record.get("rca_dsc") if label_field == "calibrated_dsc" else None
        )
        if value is None:
            raise ValueError(f"{labels_file}: {record['sample_id']} has no {label_field}")
        labels[record["sample_id"]] = {k: float(v) for k, v in value.items()}
    known = {s.sample_id: s for s in dataset.samples}
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise ValueError(f"{labels_file}: {len(unknown)} samples not in the dataset: {unknown[:3]}")
    chosen = [
        replace(known[i], true_dsc=labels[i]) for i in labels if known[i].family not in excluded
    ]
    train_samples = [s for s in chosen if s.split == "train"]
    val_samples = [s for s in chosen if s.split == "val"]
    if not train_samples or not val_samples:
        raise ValueError(f"{labels_file} must label train and val samples")
    return train_samples, val_samples


def _subset(samples: list[QcSample], limit: int | None, seed: int) -> list[QcSample]:
    if limit is None or limit >= len(samples):
        return samples
    order = np.random.default_rng(seed).permutation(len(samples))[:limit]
    return [samples[i] for i in sorted(order)]


def _augment(tensors: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """One random in-plane rotation by k·90° and optional flip, the same for every tensor of
    the batch (image, segmentation and reference turn together: Dice does not change)."""
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    flip = bool(torch.randint(0, 2, (1,), generator=generator))
    out = []
    for tensor in tensors:
        tensor = torch.rot90(tensor, turns, dims=(-2, -1))
        out.append(torch.flip(tensor, dims=(-1,)) if flip else tensor)
    return out


AUX_WEIGHT = 0.05
"""Weight of the reference-estimate cross-entropy next to the Dice MSE."""


def predict_fast_arrays(
    model: FastQcNet, crops: NDArray[np.uint8], features: NDArray[np.float32], batch: int = 64
) -> NDArray[np.float32]:
    """Predictions (n, 5) of the fast model on cached uint8 crops."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch):
            crop = torch.from_numpy(crops[start : start + batch]).float().div_(255.0)
            feats = torch.from_numpy(features[start : start + batch])
            outputs.append(model({"crop": crop, "features": feats}).numpy())
    return np.concatenate(outputs).astype(np.float32)


def predict_fast_arrays_dihedral(
    model: FastQcNet,
    crops: NDArray[np.uint8],
    features: NDArray[np.float32],
    batch: int = 64,
    progress: bool = False,
    views: int = MAX_VIEWS,
) -> NDArray[np.float32]:
    """Predictions (n, 5) of the fast model averaged over the first ``views`` in-plane views of
    every crop (``predictor.view_of``: rotations by k·90°, with and without a flip; Dice does
    not change under them); all 8 by default."""
    from tqdm import tqdm

    model.eval()
    outputs = []
    starts = range(0, len(crops), batch)
    with torch.inference_mode():
        for start in tqdm(starts, desc=f"{views} views", unit="batch", disable=not progress):
            crop = torch.from_numpy(crops[start : start + batch]).float().div_(255.0)
            feats = torch.from_numpy(features[start : start + batch])
            total = torch.zeros(len(crop), len(OUTPUT_CLASSES))
            for view in range(views):
                total += model({"crop": view_of(crop, view), "features": feats})
            outputs.append((total / views).numpy())
    return np.concatenate(outputs).astype(np.float32)


def distillation_targets(
    teacher: FastQcNet, data: FastArrays, weight: float, progress: bool = False
) -> NDArray[np.float32]:
    """``(1 − weight) · true + weight · teacher``, the teacher averaged over the 8 views.

    Raises:
        ValueError: ``weight`` outside [0, 1].
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation weight must lie in [0, 1], not {weight}")
    taught = predict_fast_arrays_dihedral(teacher, data.crops, data.features, progress=progress)
    return ((1.0 - weight) * data.targets + weight * taught).astype(np.float32)


def fit_fast(
    model: FastQcNet,
    train_data: FastArrays,
    val_data: FastArrays,
    *,
    epochs: int,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    time_budget_s: float | None = None,
    progress: bool = True,
    started: float | None = None,
    reference_loss: bool = True,
    loss_kind: LossKind = "mse",
    ema_decay: float | None = None,
) -> tuple[FastQcNet, list[dict[str, Any]], NDArray[np.float32], str]:
    """Train ``model`` in place on ``train_data`` (MSE or L1 on the Dice values, AdamW,
    one-cycle schedule, rot90/flip augmentation; the auxiliary reference loss when the model has
    the head), select the epoch with the lowest mean validation MAE and return (model in eval
    mode with those weights, per-epoch history, its validation predictions, why it stopped).

    With ``ema_decay`` the weights validated, selected and returned are an exponential moving
    average of the trained ones (updated after every step, batch-norm statistics included).

    Used by ``cmrqc train qc`` and by the retrainer (fine-tuning the serving model on RCA and
    ground-truth labels; ``reference_loss=False`` there, since RCA labels come without a
    reference segmentation).
    """
    from tqdm import tqdm

    if loss_kind not in LOSSES:
        raise ValueError(f"unknown loss {loss_kind!r}: one of {LOSSES}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1), not {ema_decay}")
    started = time.monotonic() if started is None else started
    averaged = _ExponentialAverage(model, ema_decay) if ema_decay is not None else None
    steps_per_epoch = math.ceil(len(train_data.targets) / batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=learning_rate,
        total_steps=epochs * steps_per_epoch,
        pct_start=0.15,
    )
    generator = torch.Generator().manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_mae = math.inf
    stopped = "epochs"
    for epoch in range(1, epochs + 1):
        model.train()
        order = order_rng.permutation(len(train_data.targets))
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{epochs}",
            disable=not progress,
            unit="batch",
        )
        for step in bar:
            index = np.sort(order[step * batch_size : (step + 1) * batch_size])
            crop = torch.from_numpy(train_data.crops[index]).float().div_(255.0)
            reference = torch.from_numpy(train_data.references[index]).float().div_(255.0)
            crop, reference = _augment([crop, reference], generator)
            batch = {"crop": crop, "features": torch.from_numpy(train_data.features[index])}
            target = torch.from_numpy(train_data.targets[index])
            output, logits = model.forward_with_aux(batch)
            mse = torch.mean((output - target) ** 2)
            loss = mse if loss_kind == "mse" else torch.mean(torch.abs(output - target))
            if logits is not None and reference_loss:
                cross_entropy = -(reference * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
                loss = loss + AUX_WEIGHT * cross_entropy
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            if averaged is not None:
                averaged.update(model)
            losses.append(mse.item())
            bar.set_postfix(mse=f"{np.mean(losses[-50:]):.4f}")
        validated = model if averaged is None else averaged.model
        val_predicted = predict_fast_arrays(validated, val_data.crops, val_data.features)
        record = _epoch_record(
            epoch,
            float(np.mean(losses)),
            val_predicted,
            val_data.targets,
            time.monotonic() - started,
        )
        history.append(record)
        logger.info(
            "epoch %d: train MSE %.4f, val MAE %s (mean %.4f)",
            epoch,
            record["train_mse"],
            {k: round(v, 4) for k, v in record["val_mae"].items()},
            record["val_mae_mean"],
        )
        if record["val_mae_mean"] < best_mae:
            best_mae = record["val_mae_mean"]
            best_state = copy.deepcopy(validated.state_dict())
        if time_budget_s and time.monotonic() - started > time_budget_s:
            stopped = "time budget"
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    val_predicted = predict_fast_arrays(model, val_data.crops, val_data.features)
    return model, history, val_predicted, stopped


class _ExponentialAverage:
    """An exponential moving average of a network's parameters and buffers (batch-norm
    statistics), kept in a copy of the network: ``average = decay · average + (1 − decay) ·
    current`` after every optimiser step, with the usual warm-up ``min(decay, (1 + n) / (10 +
    n))`` so early steps do not leave the initial weights dominant for long."""

    def __init__(self, model: FastQcNet, decay: float) -> None:
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: FastQcNet) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name]
            if average.dtype.is_floating_point:
                average.mul_(decay).add_(value, alpha=1.0 - decay)
            else:
                average.copy_(value)


def _epoch_record(
    epoch: int,
    train_mse: float,
    predicted: NDArray[np.floating],
    true: NDArray[np.floating],
    elapsed_s: float,
) -> dict[str, Any]:
    mae = mae_per_class(predicted, true)
    return {
        "epoch": epoch,
        "train_mse": train_mse,
        "val_mse": float(np.mean((predicted - true) ** 2)),
        "val_mae": mae,
        "val_mae_mean": float(np.mean(list(mae.values()))),
        "elapsed_s": elapsed_s,
    }


def train(config: TrainConfig) -> TrainResult:
    """Train, select, calibrate and write the artifact, card and curve (see module docstring).

    Raises:
        ValueError: an unknown model kind or holdout family, or an empty split.
        FileNotFoundError: no dataset at one of ``config.datasets``.
    """
    if config.model not in ARCHITECTURES:
        raise ValueError(f"unknown model {config.model!r}: fast or paper")
    if config.model == "paper" and (
        config.loss != "mse" or config.ema_decay is not None or config.distill_from is not None
    ):
        raise ValueError("the paper model trains as published: MSE, no average, no teacher")
    torch.manual_seed(config.seed)
    if config.model == "fast" and config.init is not None:
        # Fine-tuning keeps the initial artifact's architecture options (widths, aux).
        config = replace(config, fast=_initial_fast_model(config.init).config)
    dataset = QcDatasets(config.datasets)
    excluded = [config.holdout_family] if config.holdout_family else []
    train_samples = balanced_split(dataset, "train", seed=config.seed, exclude_families=excluded)
    val_samples = balanced_split(dataset, "val", seed=config.seed, exclude_families=excluded)
    if config.labels is not None:
        train_samples, val_samples = _relabelled(
            dataset, config.labels, config.label_field, excluded
        )
    train_samples = _subset(train_samples, config.max_train, config.seed)
    val_samples = _subset(val_samples, config.max_val, config.seed + 1)
    logger.info(
        "training %s on %d samples, validating on %d (excluded families: %s)",
        config.model,
        len(train_samples),
        len(val_samples),
        excluded or "none",
    )
    config.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if config.model == "fast":
        network, history, val_predicted, details = _train_fast(
            config, dataset, train_samples, val_samples, started
        )
        options: dict[str, Any] = asdict(config.fast)
    else:
        network, history, val_predicted, details = _train_paper(
            config, dataset, train_samples, val_samples, started
        )
        options = {}
    val_true = targets_of(val_samples)
    calibration = ConformalCalibration.fit(val_predicted, val_true)
    best = min(history, key=lambda h: h["val_mae_mean"])
    version = config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    card = _model_card(
        config,
        dataset,
        train_samples,
        val_samples,
        history,
        best,
        calibration,
        details,
        version,
        time.monotonic() - started,
    )
    architecture = ARCHITECTURES[config.model]
    data = artifact_bytes(
        network,
        architecture=architecture,
        calibration=calibration,
        name=config.name,
        version=version,
        options=options,
        card=card,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    artifact = config.out / f"qc-{config.model}.safetensors"
    artifact.write_bytes(data)
    (config.out / "model-card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (config.out / "model-card.md").write_text(model_card_markdown(card))
    (config.out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    training_curve_png(
        history,
        config.out / f"training-curve-{config.model}.png",
        f"{config.model} QC model — {details['budget_label']}",
    )
    logger.info("wrote %s (%.1f MB)", artifact, len(data) / 1e6)
    return TrainResult(artifact=artifact, card=card, history=history)


def _train_fast(
    config: TrainConfig,
    dataset: QcDatasets,
    train_samples: list[QcSample],
    val_samples: list[QcSample],
    started: float,
) -> tuple[nn.Module, list[dict[str, Any]], NDArray[np.float32], dict[str, Any]]:

    cache = config.cache_dir
    train_data = fast_arrays(
        dataset, train_samples, cache, progress=config.progress, description="prepare train"
    )
    val_data = fast_arrays(
        dataset, val_samples, cache, progress=config.progress, description="prepare val"
    )
    targets_label = "true Dice"
    if config.distill_from is not None:
        teacher = _initial_fast_model(config.distill_from)
        logger.info("teacher %s: 8-view predictions of the training cases", config.distill_from)
        train_data = replace(
            train_data,
            targets=distillation_targets(
                teacher, train_data, config.distill_weight, progress=config.progress
            ),
        )
        targets_label = (
            f"{1.0 - config.distill_weight:g} x true Dice + {config.distill_weight:g} x the "
            f"8-view average of {config.distill_from.name} ({config.distill_from})"
        )
    if config.init is not None:
        # Fine-tuning: the network keeps the feature standardisation it learnt with.
        model = _initial_fast_model(config.init)
    else:
        model = FastQcNet(config.fast)
        features = torch.from_numpy(train_data.features)
        model.set_feature_statistics(features.mean(dim=0), features.std(dim=0))
    batch_size = config.batch_size or 32
    learning_rate = config.learning_rate or 2e-3
    model, history, val_predicted, stopped = fit_fast(
        model,
        train_data,
        val_data,
        epochs=config.epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=config.seed,
        time_budget_s=config.time_budget_s,
        progress=config.progress,
        started=started,
        loss_kind=config.loss,
        ema_decay=config.ema_decay,
    )
    details = {
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "optimiser": "AdamW(weight_decay=1e-4), one-cycle schedule (15% warm-up)",
        "augmentation": "in-plane rot90 x k and horizontal flip, per batch",
        "training_targets": targets_label,
        "weight_average": (
            f"exponential moving average, decay {config.ema_decay}"
            if config.ema_decay is not None
            else "none"
        ),
        "auxiliary": (
            f"reference estimate at 28 x 28, soft cross-entropy x {AUX_WEIGHT}"
            if config.fast.aux
            else "none"
        ),
        "stopped_by": stopped,
        "budget_label": f"{len(history)} epochs, {len(train_samples)} training cases",
        "cache_dir": str(cache or "default"),
        "initialised_from": str(config.init) if config.init else "random (seeded)",
    }
    return model, history, val_predicted, details


def _initial_fast_model(path: Path) -> FastQcNet:
    """The fast network of an artifact, to fine-tune.

    Raises:
        ValueError: the artifact is not a fast model.
    """
    from cmrqc_qc_predictor.artifact import load_artifact_file

    loaded = load_artifact_file(path)
    network = loaded.network
    if not isinstance(network, FastQcNet):
        raise ValueError(f"{path} is not a fast model")
    return network


def _paper_batch(
    dataset: QcDatasets, samples: list[QcSample], scan_cache: dict[str, object]
) -> torch.Tensor:
    return torch.stack([prepare_sample(dataset, s, scan_cache).tensor for s in samples])


def predict_paper_samples(
    model: PaperResNet3d, dataset: QcDatasets, samples: list[QcSample], batch_size: int = 2
) -> NDArray[np.float32]:
    """Predictions (n, 5) of the paper model, inputs prepared on the fly."""
    model.eval()
    outputs = []
    scan_cache: dict[str, object] = {}
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            grid = _paper_batch(dataset, samples[start : start + batch_size], scan_cache)
            outputs.append(model({"grid": grid}).numpy())
    return np.concatenate(outputs).astype(np.float32)


def _train_paper(
    config: TrainConfig,
    dataset: QcDatasets,
    train_samples: list[QcSample],
    val_samples: list[QcSample],
    started: float,
) -> tuple[nn.Module, list[dict[str, Any]], NDArray[np.float32], dict[str, Any]]:
    from tqdm import tqdm

    model = PaperResNet3d()
    batch_size = config.batch_size or 2
    learning_rate = config.learning_rate or 1e-5
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    # Keras' "decay" (the paper: 0.005): lr_t = lr / (1 + decay * t), t = updates so far.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 / (1 + 0.005 * step))
    val_true = targets_of(val_samples)
    targets = targets_of(train_samples)
    order_rng = np.random.default_rng(config.seed)
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_mae = math.inf
    stopped = "epochs"
    scan_cache: dict[str, object] = {}
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = order_rng.permutation(len(train_samples))
        losses = []
        steps = math.ceil(len(order) / batch_size)
        bar = tqdm(
            range(steps),
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            unit="batch",
        )
        for step in bar:
            index = order[step * batch_size : (step + 1) * batch_size]
            grid = _paper_batch(dataset, [train_samples[i] for i in index], scan_cache)
            loss = torch.mean((model({"grid": grid}) - torch.from_numpy(targets[index])) ** 2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(mse=f"{np.mean(losses[-20:]):.4f}")
            if config.time_budget_s and time.monotonic() - started > config.time_budget_s:
                stopped = "time budget"
                break
        predicted = predict_paper_samples(model, dataset, val_samples, batch_size)
        record = _epoch_record(
            epoch, float(np.mean(losses)), predicted, val_true, time.monotonic() - started
        )
        record["train_batches"] = len(losses)
        history.append(record)
        logger.info(
            "epoch %d: train MSE %.4f, val MAE mean %.4f",
            epoch,
            record["train_mse"],
            record["val_mae_mean"],
        )
        if record["val_mae_mean"] < best_mae:
            best_mae = record["val_mae_mean"]
            best_state = copy.deepcopy(model.state_dict())
        if stopped == "time budget":
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    val_predicted = predict_paper_samples(model, dataset, val_samples, batch_size)
    seen = sum(h["train_batches"] for h in history) * batch_size
    details = {
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "optimiser": "Adam, Keras time decay 0.005 per update",
        "augmentation": "none (as the paper)",
        "stopped_by": stopped,
        "budget_label": (
            f"CPU budget run: {len(history)} epoch(s), {seen} training cases seen — "
            "NOT trained to convergence"
        ),
    }
    return model, history, val_predicted, details


def _model_card(
    config: TrainConfig,
    dataset: QcDatasets,
    train_samples: list[QcSample],
    val_samples: list[QcSample],
    history: list[dict[str, Any]],
    best: dict[str, Any],
    calibration: ConformalCalibration,
    details: dict[str, Any],
    version: str,
    wall_s: float,
) -> dict[str, Any]:
    families = sorted({s.family for s in dataset.samples})
    return {
        "model": config.model,
        "architecture": ARCHITECTURES[config.model],
        "name": config.name,
        "version": version,
        "data": {
            "dataset": ", ".join(str(path) for path in config.datasets),
            "dataset_samples": len(dataset.samples),
            "families_in_dataset": families,
            "holdout_family": config.holdout_family,
            "train_cases": len(train_samples),
            "val_cases": len(val_samples),
            "train_scans": len({s.scan_id for s in train_samples}),
            "val_scans": len({s.scan_id for s in val_samples}),
            "train_wh_bins": bin_counts(train_samples),
            "train_target_mean": dict(
                zip(OUTPUT_CLASSES, map(float, targets_of(train_samples).mean(axis=0)), strict=True)
            ),
            "val_wh_bins": bin_counts(val_samples),
            "balancing": "per split, each WH DSC bin capped at the split's median bin count",
            "labels": (
                f"{config.label_field} from {config.labels} (not the true Dice)"
                if config.labels
                else "true Dice"
            ),
            "split": "by scan via QC_TRAIN / QC_VAL / QC_TEST seed ranges",
        },
        "training": {
            "seed": config.seed,
            "epochs_requested": config.epochs,
            "epochs_run": len(history),
            "selected_epoch": best["epoch"],
            "loss": (
                "MSE on the 5 Dice values"
                if config.loss == "mse"
                else "L1 (absolute error) on the 5 Dice values"
            ),
            "wall_s": round(wall_s, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "max_train": config.max_train,
            "max_val": config.max_val,
            "time_budget_s": config.time_budget_s,
            **details,
        },
        "inputs": {
            "features": list(FEATURE_NAMES) if config.model == "fast" else [],
        },
        "validation": {
            "mae": best["val_mae"],
            "mae_mean": best["val_mae_mean"],
        },
        "conformal": {
            "calibration_cases": calibration.size,
            "half_width_90": dict(
                zip(OUTPUT_CLASSES, map(float, calibration.half_widths(0.9)), strict=True)
            ),
        },
    }


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (a human-readable view of ``model-card.json``)."""
    data, training = card["data"], card["training"]
    lines = [
        f"# Model card: QC predictor `{card['model']}` ({card['architecture']})",
        "",
        f"Version `{card['version']}`. Predicts the Dice of a cardiac MR segmentation per class "
        "(BG, LV, LVM, RVC, WH) from the image and the segmentation, without ground truth "
        "(Robinson et al. 2018), with split-conformal intervals.",
        "",
        "## Data",
        "",
        f"* Labels: {data.get('labels', 'true Dice')}.\n"
        f"* Dataset: `{data['dataset']}` ({data['dataset_samples']} samples; families "
        f"{', '.join(data['families_in_dataset'])}; held out: {data['holdout_family'] or 'none'}).",
        f"* Split {data['split']}; {data['balancing']}.",
        f"* Training: {data['train_cases']} cases from {data['train_scans']} scans, WH bins "
        f"{data['train_wh_bins']}.",
        f"* Validation / calibration: {data['val_cases']} cases from {data['val_scans']} scans, "
        f"WH bins {data['val_wh_bins']}.",
        "",
        "## Training",
        "",
        f"* Seed {training['seed']}; {training['epochs_run']} of {training['epochs_requested']} "
        f"epochs run ({training['stopped_by']}); epoch {training['selected_epoch']} selected "
        "by mean validation MAE.",
        f"* {training['loss']}; {training['optimiser']}; batch {training['batch_size']}; "
        f"learning rate {training['learning_rate']}; augmentation: {training['augmentation']}"
        + (
            f"; weights: {training['weight_average']}."
            if training.get("weight_average", "none") != "none"
            else "."
        )
        + (
            f"\n* Training targets: {training['training_targets']}."
            if training.get("training_targets", "true Dice") != "true Dice"
            else ""
        ),
        f"* {training['budget_label']}; wall time {training['wall_s']} s on "
        f"{training['threads']} CPU thread(s), torch {training['torch']}.",
        "",
        "## Validation (selected epoch)",
        "",
        "| class | MAE | 90% interval half-width |",
        "|---|---|---|",
    ]
    for name in OUTPUT_CLASSES:
        lines.append(
            f"| {name} | {card['validation']['mae'][name]:.4f} | "
            f"{card['conformal']['half_width_90'][name]:.4f} |"
        )
    lines += [
        "",
        f"Conformal calibration: {card['conformal']['calibration_cases']} validation cases.",
        *_view_calibration_lines(card.get("view_calibrations", {})),
        "Test-split figures (Table 1, coverage) come from `cmrqc evaluate qc` and are kept in "
        "the service's docs.",
        "",
    ]
    return "\n".join(lines)


def _view_calibration_lines(view_calibrations: dict[str, Any]) -> list[str]:
    """The card's section on predictions averaged over in-plane views (``cmrqc calibrate qc``)."""
    if not view_calibrations:
        return []
    lines = [
        "",
        "## Averaged over in-plane views (`CMRQC_QC_PREDICTOR_VIEWS`)",
        "",
        "Interval calibrations for the prediction averaged over N in-plane views of the crop "
        "(`cmrqc calibrate qc`, on the validation split):",
        "",
        "| views | cases | " + " | ".join(f"{c} MAE" for c in OUTPUT_CLASSES) + " | "
        "WH 90% half-width |",
        "|---|---|" + "---|" * len(OUTPUT_CLASSES) + "---|",
    ]
    for views, row in sorted(view_calibrations.items(), key=lambda item: int(item[0])):
        mae = row.get("mae", {})
        cells = " | ".join(f"{mae[c]:.4f}" if c in mae else "—" for c in OUTPUT_CLASSES)
        lines.append(f"| {views} | {row['cases']} | {cells} | {row['half_width_90']['WH']:.4f} |")
    return [*lines, ""]
