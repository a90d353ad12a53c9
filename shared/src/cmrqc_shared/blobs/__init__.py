"""Claim-check blob store: content-addressed, verified, behind one interface."""

from cmrqc_shared.blobs.arrays import decode_array, encode_array
from cmrqc_shared.blobs.errors import (
    BlobCorruptedError,
    BlobError,
    BlobNotFoundError,
    BlobStoreConfigError,
)
from cmrqc_shared.blobs.ref import BlobRef, MediaType
from cmrqc_shared.blobs.store import (
    BlobStore,
    FileBlobStore,
    RedisBlobStore,
    open_blob_store,
    sha256_hex,
)

__all__ = [
    "BlobCorruptedError",
    "BlobError",
    "BlobNotFoundError",
    "BlobRef",
    "BlobStore",
    "BlobStoreConfigError",
    "FileBlobStore",
    "MediaType",
    "RedisBlobStore",
    "decode_array",
    "encode_array",
    "open_blob_store",
    "sha256_hex",
]
