"""Typed errors of the blob store."""


class BlobError(Exception):
    """Base class of blob store errors."""


class BlobNotFoundError(BlobError):
    """The blob named by a reference is not in the store (never written, expired or deleted)."""


class BlobCorruptedError(BlobError):
    """The stored bytes do not hash to the reference's sha256 (or their size differs)."""


class BlobStoreConfigError(BlobError):
    """The blob store URL is malformed or names an unsupported back end."""
