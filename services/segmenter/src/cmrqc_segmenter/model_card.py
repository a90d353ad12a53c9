"""The model card of committed weights: what data, seeds, steps, time and test metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmrqc_segmenter.checkpoints import read_metadata
from cmrqc_segmenter.evaluation import TARGETS


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_model_card(
    weights: Path, training: dict[str, Any], evaluation: dict[str, Any], command: str
) -> str:
    """Markdown describing ``weights`` from its training summary and test-split report."""
    metadata = read_metadata(weights)
    config = training["config"]
    contract, augment = config["contract"], config["augment"]
    train_lo, train_hi = training["train_seeds"]
    val_lo, val_hi = training["val_seeds"]
    test_lo, test_hi = evaluation["seeds"]
    field_mm = contract["size"] * contract["spacing_mm"]
    clip_lo, clip_hi = contract["clip_percentiles"]
    zoom_lo, zoom_hi = augment["zoom_range"]
    patch = config["patch_size"]
    training_rows = [
        [
            "data",
            "synthetic subjects of `cmrqc_shared.synth`, default `SynthConfig` (artefacts "
            "on), ED and ES",
        ],
        [
            "training subjects",
            f"SEGMENTER_TRAIN seeds {train_lo}–{train_hi - 1} "
            f"({train_hi - train_lo} subjects, {training['train_slices']} slices)",
        ],
        ["validation subjects", f"SEGMENTER_VAL seeds {val_lo}–{val_hi - 1}"],
        ["seed", f"{config['seed']} (initialisation; every batch is drawn from `(seed, step)`)"],
        [
            "steps",
            f"{config['steps']} x batch {config['batch_size']} slices "
            f"({training['epochs']:.1f} epochs), {patch}x{patch} px training fields",
        ],
        [
            "optimiser",
            f"AdamW, one-cycle LR (max {config['max_lr']}, warm-up "
            f"{config['warmup_fraction']:.0%}), weight decay {config['weight_decay']}",
        ],
        [
            "loss",
            "soft cross-entropy + soft Dice (foreground) on bilinearly resampled one-hot labels",
        ],
        [
            "augmentation",
            f"rotation ±{augment['rotation_deg']}°, zoom {zoom_lo}–{zoom_hi}, "
            "field shifts, gamma, contrast, brightness, noise; no flips (the RV side is fixed)",
        ],
        [
            "precision",
            f"{training['precision']} autocast on {training['device']}, "
            f"{training.get('torch_threads', '?')} torch thread(s)",
        ],
        [
            "wall time",
            f"{training['wall_time_s'] / 60:.0f} min on a shared 2-core CPU "
            f"(torch {training['torch']})",
        ],
        [
            "checkpoints",
            "steps "
            + ", ".join(str(s) for s in training["checkpoint_steps"])
            + " (in the training output directory; only the last is committed)",
        ],
    ]
    dice_rows = [
        [name]
        + [f"{d[k]:.3f}" for k in ("mean", "std", "median", "p5", "p25", "p75", "min")]
        + [str(TARGETS.get(name, "—"))]
        for name, d in evaluation["dice"].items()
    ]
    by_phase = evaluation["dice_by_phase"]
    class_names = list(next(iter(by_phase.values())).keys())
    phase_rows = [
        [phase] + [f"{v:.3f}" for v in scores.values()] for phase, scores in by_phase.items()
    ]
    model = evaluation["model"]
    return f"""# Model card: {metadata["name"]} {metadata["version"]}

`unet2d.safetensors`: sha256 `{model["artifact_sha256"]}`, {weights.stat().st_size / 1e6:.1f} MB
(float32 safetensors: tensors and string metadata only, loaded without unpickling).

## What it does

Segments short-axis cine CMR slice by slice, 2.5D: each slice with
{contract["context_slices"]} neighbour(s) on each side as channels. Labels: 0 background,
1 LV cavity, 2 LV myocardium, 3 RV cavity. Input: {contract["size"]}x{contract["size"]} pixels
of {contract["spacing_mm"]} mm ({field_mm:.0f} mm field), intensities clipped at the volume's
{clip_lo}/{clip_hi} percentiles and scaled to [0, 1]; see `services/segmenter/README.md`.
Architecture: U-Net, {config["levels"]} down-sampling levels, {config["base_channels"]} base
channels, batch norm, {training["parameters"]:,} parameters.

## Training

{_table(["", ""], training_rows)}

Reproduce: `{command}` (renders and caches the subjects first).

![training curve](training_curve.png)

## Held-out test metrics

{evaluation["volumes"]} volumes: SEGMENTER_TEST seeds {test_lo}–{test_hi - 1}, ED and ES. 3D
Dice on the native grid after the largest-component clean-up; inference {model["precision"]}
on {model["device"]}. Reproduce:
`uv run cmrqc evaluate segmenter --subjects {test_hi - test_lo} --json`.

{_table(["class", "mean", "std", "median", "p5", "p25", "p75", "min", "target"], dice_rows)}

{_table(["phase", *class_names], phase_rows)}

Targets (mean Dice): Bai et al. 2018, UK Biobank. These figures are on synthetic data from
the generator the model was trained on; real CMR (ACDC, M&Ms, UK Biobank) will score lower
until the model is fine-tuned on real images.
"""
