"""The metadata of a safetensors file, read from its header without loading any tensor.

The layout is an 8-byte little-endian header length, a JSON header (tensor name → dtype,
shape, data_offsets; plus ``__metadata__``), then the tensor bytes. Used wherever an artifact
must be identified before (or without) loading it: the model registry CLI, the QC predictor.
"""

from __future__ import annotations

import json
import struct


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file.

    Raises:
        ValueError: the bytes are not a well-formed safetensors file (short, truncated,
            header not JSON, bad tensor offsets, trailing bytes).
    """

    def refuse(why: str) -> ValueError:
        return ValueError(f"not a safetensors file: {why}")

    if len(data) < 8:
        raise refuse(f"{len(data)} bytes, shorter than the header length field")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8:
        raise refuse(f"header of {header_size} bytes in a {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise refuse(f"header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise refuse("header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise refuse("__metadata__ is not an object")
    body = len(data) - 8 - header_size
    end = 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise refuse(f"tensor {tensor!r} has bad data_offsets {offsets!r}")
        end = max(end, offsets[1])
    if end > body:
        raise refuse(f"truncated: the tensors need {end} data bytes, the file has {body}")
    if end < body:
        raise refuse(f"{body - end} data bytes after the last tensor")
    return {str(key): str(value) for key, value in metadata.items()}
