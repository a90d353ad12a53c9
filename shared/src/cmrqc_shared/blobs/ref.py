"""BlobRef: the claim check that events carry instead of pixel data."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class MediaType:
    """Media types of the blobs the system stores (closed vocabulary, plain strings on the wire)."""

    NUMPY = "application/x-npy"
    """A single numpy array in .npy format, loaded with ``allow_pickle=False``."""
    SAFETENSORS = "application/vnd.safetensors"
    """Model weights in safetensors format."""
    TORCH_WEIGHTS = "application/vnd.pytorch.weights-only"
    """A torch state dict, loaded with ``torch.load(weights_only=True)``."""
    JSON = "application/json"
    DICOM = "application/dicom"
    OCTET_STREAM = "application/octet-stream"


class BlobRef(BaseModel):
    """A reference to an immutable, content-addressed blob.

    The blob exists in the store before any event naming it is produced. ``sha256`` is the
    identity; ``uri`` says where the producer put it (``file:///…`` or ``redis://…``) and lets
    a consumer with no configured store find it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    uri: str = Field(description="Where the blob lives, e.g. redis://host:6379/0#<sha256>.")
    sha256: str = Field(pattern=SHA256_HEX.pattern, description="Hex SHA-256 of the content.")
    size: int = Field(ge=0, description="Content size in bytes.")
    media_type: str = Field(description="IANA-style media type, see MediaType.")
