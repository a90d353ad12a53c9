"""DICOM status codes this node answers C-STORE (and STOW-RS FailureReason) with.

PS3.4 Table B.2-1 allows three failure ranges for C-STORE: A7xx refused, out of resources;
A9xx data set does not match SOP class; Cxxx cannot understand. PS3.7 Annex C adds the
general 0x0122 (SOP class not supported) and PS3.18 uses 0xC122 for a transfer syntax the
origin server cannot store. The low byte of our A7xx / Cxxx codes says which check failed,
so a sender's log (and our metrics) tell the causes apart.
"""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses, named by cause."""

    SUCCESS = 0x0000
    """Stored (or acknowledged and skipped: not a series we assemble)."""
    OUT_OF_RESOURCES = 0xA700
    """Refused, out of resources: spool above its watermark, disk full or write failed."""
    OUT_OF_RESOURCES_LIMIT = 0xA701
    """Refused, out of resources: the instance exceeds a configured size limit."""
    DATASET_MISMATCH = 0xA900
    """Error, data set does not match SOP class: wrong SOP class/instance UID or a
    required (Type 1) attribute missing."""
    CANNOT_UNDERSTAND = 0xC000
    """Error, cannot understand: the data set cannot be parsed."""
    CANNOT_UNDERSTAND_PIXELS = 0xC001
    """Error, cannot understand: pixel data absent, unsupported layout or wrong length."""
    PROCESSING_FAILURE = 0x0110
    """Processing failure (PS3.7 C.4): an unexpected error of ours; the sender may retry."""
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    """Refused, SOP class not supported (only MR / Enhanced MR when accept_all_storage=false)."""
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    """STOW-RS: the instance's transfer syntax cannot be decoded here (PS3.18)."""

    @property
    def label(self) -> str:
        """The status as ``0xA700``, the form used in metrics labels and logs."""
        return f"0x{int(self):04X}"
