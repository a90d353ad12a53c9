"""CMR-QC Stream segmenter: LV cavity, LV myocardium and RV cavity on every short-axis volume.

Public API (the service is a thin layer over it)::

    from cmrqc_segmenter import load_builtin, load_checkpoint, list_checkpoints

    segmenter = load_builtin()                        # the committed U-Net
    result = segmenter.segment(volume, (1.5, 1.5))    # (k, j, i) array, (row, col) spacing mm
    result.labels                                     # uint8 (k, j, i): 0 BG 1 LV 2 LVM 3 RVC
"""

import os
from importlib.metadata import PackageNotFoundError, version

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a
# shared or CPU-limited machine (2 cores, a Kubernetes CPU limit) spinning threads wait on
# descheduled peers and a 2-thread op can run 10-30x slower than on one thread (measured
# here: a 10x4x160x160 argmax, 130 ms spinning vs 8 ms passive). Set the variable to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("cmrqc-segmenter")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0.0.0"

from cmrqc_segmenter.checkpoints import (
    CHECKPOINT_FRACTIONS,
    CheckpointError,
    builtin_weights_path,
    checkpoint_steps,
    list_checkpoints,
    load_builtin,
    load_checkpoint,
    load_model,
)
from cmrqc_segmenter.contract import LABEL_NAMES, InputContract
from cmrqc_segmenter.inference import ModelIdentity, Segmentation, Segmenter
from cmrqc_segmenter.metrics import dice_per_class
from cmrqc_segmenter.postprocess import largest_connected_component
from cmrqc_segmenter.preprocess import VolumeRejected, pixel_spacing_from_affine

__all__ = [
    "CHECKPOINT_FRACTIONS",
    "LABEL_NAMES",
    "CheckpointError",
    "InputContract",
    "ModelIdentity",
    "Segmentation",
    "Segmenter",
    "VolumeRejected",
    "__version__",
    "builtin_weights_path",
    "checkpoint_steps",
    "dice_per_class",
    "largest_connected_component",
    "list_checkpoints",
    "load_builtin",
    "load_checkpoint",
    "load_model",
    "pixel_spacing_from_affine",
]
