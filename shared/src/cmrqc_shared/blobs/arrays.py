"""numpy arrays to and from .npy bytes, never unpickling objects."""

from __future__ import annotations

import io

import numpy as np


def encode_array(array: np.ndarray) -> bytes:
    """Serialise ``array`` as .npy bytes.

    Raises:
        ValueError: object arrays (they would need pickling).
    """
    if array.dtype.hasobject:
        raise ValueError("object arrays cannot be stored: they would need pickling")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """Parse .npy bytes with ``allow_pickle=False``.

    Raises:
        ValueError: the bytes are not a plain .npy array.
    """
    return np.load(io.BytesIO(data), allow_pickle=False)
