"""Train the U-Net on synthetic subjects: fixed seed, resumable, checkpoints early to late.

Output directory layout::

    checkpoints/step-000040.safetensors …   kept at CHECKPOINT_FRACTIONS of the steps
    final.safetensors                        the last step (what gets committed)
    resume.pt                                model/optimiser/scheduler state (weights only)
    history.json                             training loss and validation Dice by step
    training_curve.png                       the same, drawn
    summary.json                             configuration, data, wall time, final Dice

Every batch is drawn from a generator seeded with ``(seed, step)``, so an interrupted run
resumed from ``resume.pt`` continues with the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cmrqc_segmenter.augment import AugmentConfig, SliceSampler
from cmrqc_segmenter.checkpoints import (
    CHECKPOINT_FRACTIONS,
    checkpoint_path,
    checkpoint_steps,
    save_checkpoint,
)
from cmrqc_segmenter.contract import InputContract
from cmrqc_segmenter.data import LabelledVolume, cached_volumes
from cmrqc_segmenter.inference import (
    ModelIdentity,
    Segmenter,
    cpu_has_fast_bf16,
    resolve_device,
)
from cmrqc_segmenter.metrics import FOREGROUND_CLASSES, dice_per_class
from cmrqc_segmenter.model import UNet2D, UNetConfig, parameter_count
from cmrqc_shared.datasets.splits import SEGMENTER_TRAIN, SEGMENTER_VAL

logger = logging.getLogger(__name__)

TrainPrecision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the data cache, bit for bit on CPU)."""

    seed: int = 0
    train_subjects: int = 400
    """First subjects of SEGMENTER_TRAIN (each gives an ED and an ES volume)."""
    val_subjects: int = 16
    """First subjects of SEGMENTER_VAL, evaluated during training."""
    steps: int = 3000
    batch_size: int = 16
    patch_size: int = 128
    max_lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    dice_loss_weight: float = 1.0
    base_channels: int = 16
    levels: int = 4
    precision: TrainPrecision = "auto"
    """bf16 autocast when the device supports it fast (CPU with AVX512-BF16/AMX, or CUDA)."""
    val_every: int = 500
    resume_every: int = 100
    checkpoint_fractions: tuple[float, ...] = CHECKPOINT_FRACTIONS
    """Fractions of ``steps`` after which a checkpoint is kept (more: a finer quality ladder)."""
    contract: InputContract = field(default_factory=InputContract)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    final: Path
    checkpoints: list[Path]
    steps: int
    wall_time_s: float
    val_dice: dict[str, float]


def resolve_train_precision(precision: TrainPrecision, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for ``"auto"`` on this device."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0
) -> torch.Tensor:
    """Soft cross-entropy plus ``dice_weight`` x (1 - mean soft Dice of the foreground classes).

    ``target`` holds per-pixel class probabilities (soft labels) shaped like ``logits``.
    """
    logits = logits.float()
    log_probs = F.log_softmax(logits, dim=1)
    cross_entropy = -(target * log_probs).sum(dim=1).mean()
    probs = log_probs.exp()[:, 1:]
    truth = target[:, 1:]
    dims = (0, 2, 3)
    overlap = (probs * truth).sum(dims)
    dice = (2 * overlap + 1.0) / (probs.sum(dims) + truth.sum(dims) + 1.0)
    return cross_entropy + dice_weight * (1.0 - dice.mean())


def evaluate_volumes(
    segmenter: Segmenter, volumes: list[LabelledVolume], batch_volumes: int = 4
) -> list[dict[str, float]]:
    """Dice per class (LV, LVM, RVC, WH) of every volume, on its native grid."""
    scores = []
    for start in range(0, len(volumes), batch_volumes):
        chunk = volumes[start : start + batch_volumes]
        results = segmenter.segment_many([(v.image, v.pixel_spacing_mm) for v in chunk])
        for volume, result in zip(chunk, results, strict=True):
            scores.append(dice_per_class(result.labels, volume.labels))
    return scores


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each class over volumes."""
    return {name: float(np.mean([s[name] for s in scores])) for name in scores[0]}


def train(
    config: TrainConfig,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
    workers: int = 2,
    stop_after: int | None = None,
) -> TrainResult | None:
    """Train (or resume) a run into ``out_dir``; returns where the weights went.

    ``stop_after`` interrupts the run once that step is reached (saving the resume state),
    as a crash or a time limit would; the result is then ``None``.

    Raises:
        ValueError: the output directory holds a run with a different configuration.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(_jsonable(asdict(config)), sort_keys=True)
    config_file = out_dir / "config.json"
    resume_file = out_dir / "resume.pt"
    if config_file.exists() and resume and config_file.read_text() != config_json:
        raise ValueError(f"{out_dir} holds a run with another configuration; use a new directory")
    config_file.write_text(config_json)

    torch_device = resolve_device(device)
    precision = resolve_train_precision(config.precision, torch_device)
    torch.manual_seed(config.seed)
    train_volumes = cached_volumes(
        SEGMENTER_TRAIN.seeds(config.train_subjects),
        cache_dir,
        workers=workers,
        progress=progress,
        description="training subjects",
    )
    val_volumes = cached_volumes(
        SEGMENTER_VAL.seeds(config.val_subjects),
        cache_dir,
        workers=workers,
        progress=progress,
        description="validation subjects",
    )
    sampler = SliceSampler(
        train_volumes, config.contract, patch_size=config.patch_size, augment=config.augment
    )
    del train_volumes

    model = UNet2D(
        UNetConfig(
            in_channels=config.contract.in_channels,
            base_channels=config.base_channels,
            levels=config.levels,
        )
    ).to(torch_device)
    if torch_device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=config.max_lr,
        total_steps=config.steps,
        pct_start=config.warmup_fraction,
        anneal_strategy="cos",
    )
    history: dict[str, list[dict[str, float]]] = {"train": [], "val": []}
    step, elapsed_before = 0, 0.0
    if resume and resume_file.exists():
        state = torch.load(resume_file, map_location=torch_device, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        history = json.loads((out_dir / "history.json").read_text())
        logger.info("resuming", extra={"step": step, "out_dir": str(out_dir)})

    keep = set(checkpoint_steps(config.steps, config.checkpoint_fractions))
    logger.info(
        "training",
        extra={
            "parameters": parameter_count(model),
            "train_slices": sampler.slice_count,
            "precision": precision,
            "device": str(torch_device),
            "checkpoint_steps": sorted(keep),
        },
    )
    started = time.monotonic()
    running: list[float] = []
    bar = tqdm(total=config.steps, initial=step, desc="training", disable=not progress)
    model.train()
    while step < config.steps:
        rng = np.random.default_rng([config.seed, step])
        x, target = sampler.batch(rng, config.batch_size)
        x, target = x.to(torch_device), target.to(torch_device)
        if torch_device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch_device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = segmentation_loss(logits, target, config.dice_loss_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        step += 1
        running.append(float(loss.detach()))
        bar.update()
        if step % 25 == 0 or step == config.steps:
            history["train"].append(
                {
                    "step": step,
                    "loss": float(np.mean(running)),
                    "lr": float(scheduler.get_last_lr()[0]),
                }
            )
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
        if step % config.val_every == 0 or step in keep:
            scores = _validate(model, config.contract, val_volumes, step, str(torch_device))
            history["val"].append({"step": step, **scores})
            bar.write(
                f"step {step}: val Dice " + " ".join(f"{k} {v:.3f}" for k, v in scores.items())
            )
            model.train()
        if step in keep:
            save_checkpoint(
                checkpoint_path(out_dir, step),
                model,
                config.contract,
                version=f"seed{config.seed}-step{step}",
                step=step,
                total_steps=config.steps,
                extra={"val_dice": history["val"][-1]},
            )
        if step % config.resume_every == 0 or step == config.steps:
            elapsed = elapsed_before + time.monotonic() - started
            _save_resume(resume_file, model, optimiser, scheduler, step, elapsed)
            (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        if stop_after is not None and step >= stop_after and step < config.steps:
            elapsed = elapsed_before + time.monotonic() - started
            _save_resume(resume_file, model, optimiser, scheduler, step, elapsed)
            (out_dir / "history.json").write_text(json.dumps(history, indent=1))
            bar.close()
            return None
    bar.close()
    wall_time_s = elapsed_before + time.monotonic() - started
    final = out_dir / "final.safetensors"
    shutil.copyfile(checkpoint_path(out_dir, config.steps), final)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    plot_history(history, out_dir / "training_curve.png")
    val_dice = {k: v for k, v in history["val"][-1].items() if k != "step"}
    summary = {
        "config": _jsonable(asdict(config)),
        "precision": precision,
        "device": str(torch_device),
        "torch_threads": torch.get_num_threads(),
        "parameters": parameter_count(model),
        "train_seeds": [SEGMENTER_TRAIN.start, SEGMENTER_TRAIN.start + config.train_subjects],
        "val_seeds": [SEGMENTER_VAL.start, SEGMENTER_VAL.start + config.val_subjects],
        "train_slices": sampler.slice_count,
        "epochs": config.steps * config.batch_size / sampler.slice_count,
        "wall_time_s": wall_time_s,
        "checkpoint_steps": sorted(keep),
        "val_dice": val_dice,
        "torch": torch.__version__,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return TrainResult(
        out_dir=out_dir,
        final=final,
        checkpoints=[checkpoint_path(out_dir, s) for s in sorted(keep)],
        steps=config.steps,
        wall_time_s=wall_time_s,
        val_dice=val_dice,
    )


def _validate(
    model: UNet2D,
    contract: InputContract,
    volumes: list[LabelledVolume],
    step: int,
    device: str,
) -> dict[str, float]:
    identity = ModelIdentity("training", str(step))
    segmenter = Segmenter(model, contract, identity, device=device, precision="fp32")
    return mean_scores(evaluate_volumes(segmenter, volumes))


def _save_resume(
    path: Path,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    elapsed_s: float,
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "elapsed_s": elapsed_s,
        },
        tmp,
    )
    tmp.replace(path)


def plot_history(history: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Training loss and validation Dice against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    train = history["train"]
    ax_loss.plot([t["step"] for t in train], [t["loss"] for t in train], color="tab:blue")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (soft CE + soft Dice)")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    val = history["val"]
    for name in (*FOREGROUND_CLASSES, "WH"):
        ax_dice.plot([v["step"] for v in val], [v[name] for v in val], marker="o", label=name)
    ax_dice.set_xlabel("step")
    ax_dice.set_ylabel("Dice (validation, native grid)")
    ax_dice.set_ylim(max(0.0, min([v[n] for v in val for n in FOREGROUND_CLASSES] + [1]) - 0.05), 1)
    ax_dice.set_title("validation Dice")
    ax_dice.grid(alpha=0.3)
    ax_dice.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
