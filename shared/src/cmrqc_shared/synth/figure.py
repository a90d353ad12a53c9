"""Example page of synthetic slices with ground-truth overlays (matplotlib, PNG)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.synth.config import ARTEFACT_NAMES, SynthConfig
from cmrqc_shared.synth.render import SyntheticStudy, render_study

logger = logging.getLogger(__name__)

_LABEL_COLOURS = {1: "#ff3030", 2: "#30ff30", 3: "#3090ff"}

ARTEFACT_EXAMPLE_SEEDS: dict[str, int] = {
    "ghosting": 1001,
    "misalignment": 1002,
    "wraparound": 1003,
    "banding": 7,
    "missing_slices": 1005,
}
"""Seeds whose forced artefact is clearly visible on the mid slice (for the example page)."""


def _window(img: NDArray[np.uint16]) -> tuple[float, float]:
    lo, hi = np.percentile(img, [1.0, 99.5])
    return float(lo), float(max(hi, lo + 1.0))


def _mid_slice(study: SyntheticStudy) -> int:
    lv = (study.phase("ED").labels == 1).sum(axis=(1, 2))
    nz = np.flatnonzero(lv)
    return int(nz[len(nz) // 2]) if nz.size else study.geometry.n_slices // 2


def _heart_crop(labels: NDArray[np.uint8], margin: int = 40) -> tuple[slice, slice]:
    any_lab: NDArray[np.bool_] = np.any(labels, axis=0)
    rows, cols = np.flatnonzero(any_lab.any(axis=1)), np.flatnonzero(any_lab.any(axis=0))
    if rows.size == 0:
        h, w = any_lab.shape
        return slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4)
    r0, r1 = max(0, rows[0] - margin), min(any_lab.shape[0], rows[-1] + margin)
    c0, c1 = max(0, cols[0] - margin), min(any_lab.shape[1], cols[-1] + margin)
    return slice(int(r0), int(r1)), slice(int(c0), int(c1))


def _show(ax, img, labels, title, window, contours=True):  # type: ignore[no-untyped-def]
    """Grey image with translucent label fill and label contours."""
    from matplotlib.colors import to_rgba

    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    if contours and labels is not None:
        overlay = np.zeros((*labels.shape, 4))
        for lab, colour in _LABEL_COLOURS.items():
            mask = labels == lab
            if mask.any():
                overlay[mask] = to_rgba(colour, 0.22)
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.7)
        ax.imshow(overlay, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def write_example_page(
    seeds: Sequence[int], path: str | Path, config: SynthConfig | None = None
) -> Path:
    """Render ``seeds`` and write a PNG page of example slices with label contours.

    One row per seed: full FOV (ED, mid-ventricle, no overlay), zoomed ED and ES mid slices,
    a basal and an apical ED slice, with translucent fills and contours (red LV cavity,
    green LV myocardium, blue RV cavity).
    A last row shows one example of each artefact (forced on seed ``seeds[0]``).

    Args:
        seeds: subject seeds to show.
        path: output PNG path (parent directories are created).
        config: generator settings for the subject rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_cols = 5
    n_rows = len(seeds) + 2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.35 * n_rows), dpi=110)
    axes = np.atleast_2d(axes)
    for r, seed in enumerate(seeds):
        study = render_study(seed, config)
        ed, es = study.phase("ED"), study.phase("ES")
        k = _mid_slice(study)
        lv_k = np.flatnonzero((ed.labels > 0).any(axis=(1, 2)))
        k_base = int(lv_k[-1]) if lv_k.size else k
        k_apex = int(lv_k[0]) if lv_k.size else k
        win = _window(ed.image)
        crop = _heart_crop(ed.labels[k : k + 1])
        names = ",".join(a.name for a in study.artefacts) or "none"
        geo = study.geometry
        _show(
            axes[r, 0],
            ed.image[k],
            None,
            f"seed {seed} ED k={k}  {geo.rows}x{geo.cols} {geo.pixel_spacing_mm[0]:.2f}mm\n"
            f"artefacts: {names}",
            win,
            contours=False,
        )
        _show(axes[r, 1], ed.image[k][crop], ed.labels[k][crop], f"ED mid (k={k})", win)
        _show(
            axes[r, 2],
            es.image[k][crop],
            es.labels[k][crop],
            f"ES mid, TT={es.trigger_time_ms:.0f} ms",
            win,
        )
        _show(
            axes[r, 3],
            ed.image[k_base][crop],
            ed.labels[k_base][crop],
            f"ED basal (k={k_base})",
            win,
        )
        _show(
            axes[r, 4],
            ed.image[k_apex][crop],
            ed.labels[k_apex][crop],
            f"ED apical (k={k_apex})",
            win,
        )

    examples: list[tuple[str, SyntheticStudy]] = [
        (
            name,
            render_study(
                ARTEFACT_EXAMPLE_SEEDS.get(name, seeds[0]),
                SynthConfig(clean=True, forced_artefacts=(name,)),
                ("ED",),
            ),
        )
        for name in ARTEFACT_NAMES
    ]
    for c, (name, study) in enumerate(examples):
        ed = study.phase("ED")
        k = _mid_slice(study)
        win = _window(ed.image)
        ax = axes[len(seeds), c]
        if name in ("misalignment", "missing_slices"):
            # through-plane reformat along the image row through the heart
            lab = ed.labels
            rows = np.flatnonzero((lab == 1).any(axis=(0, 2)))
            j = int(rows[len(rows) // 2]) if rows.size else lab.shape[1] // 2
            reps = max(
                1, round(study.geometry.slice_spacing_mm / study.geometry.pixel_spacing_mm[0])
            )
            img = np.repeat(ed.image[::-1, j, :], reps, axis=0)
            labs = np.repeat(lab[::-1, j, :], reps, axis=0)
            _show(ax, img, labs, f"{name}: reformat (base top)", win)
        else:
            _show(ax, ed.image[k], ed.labels[k], f"{name} (seed {study.seed})", win, contours=False)
        ax2 = axes[len(seeds) + 1, c]
        crop = _heart_crop(ed.labels[k : k + 1])
        _show(ax2, ed.image[k][crop], ed.labels[k][crop], f"{name}: zoom + labels", win)
    fig.tight_layout(pad=0.3)
    fig.savefig(out)
    plt.close(fig)
    logger.info("wrote %s", out)
    return out
