"""Content-addressed blob stores (claim check): ``file://`` and ``redis://`` back ends.

Blobs are immutable and named by the SHA-256 of their content, so ``put`` is idempotent (the
same bytes give the same reference, stored once) and ``get`` can verify what it reads.

Expiry and clean-up policy:
* ``redis://``: every blob gets a TTL (``ttl_seconds``, default 7 days); putting the same
  content again refreshes it. Redis evicts expired blobs by itself. Size Redis memory for the
  volume of one TTL window (a 10×224×224 float32 volume is about 2 MB).
* ``file://``: blobs never expire on their own; ``garbage_collect(older_than_s)`` deletes
  blobs not written (or re-put) within that age, e.g. from a daily cron job
  (``cmrqc blobs gc --older-than-days 7``). Putting existing content refreshes its mtime.
A consumer that reads a reference after its blob expired gets ``BlobNotFoundError``; services
send such records to the dead-letter topic with that reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from cmrqc_shared.blobs.arrays import decode_array, encode_array
from cmrqc_shared.blobs.errors import (
    BlobCorruptedError,
    BlobNotFoundError,
    BlobStoreConfigError,
)
from cmrqc_shared.blobs.ref import SHA256_HEX, BlobRef, MediaType

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 7 * 24 * 3600


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class BlobStore(ABC):
    """A content-addressed store of immutable blobs."""

    @abstractmethod
    def _write(self, sha256: str, data: bytes) -> None:
        """Store ``data`` under ``sha256`` (idempotent; refreshes expiry if present)."""

    @abstractmethod
    def _retain(self, sha256: str) -> None:
        """Exempt the stored blob ``sha256`` from expiry and garbage collection."""

    @abstractmethod
    def _read(self, sha256: str) -> bytes | None:
        """The stored bytes, or None when absent."""

    @abstractmethod
    def uri_for(self, sha256: str) -> str:
        """The URI that names the blob ``sha256`` in this store."""

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether the blob is present."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the blob if present (retention tooling only; blobs are otherwise immutable)."""

    def put(
        self, data: bytes, media_type: str = MediaType.OCTET_STREAM, *, retain: bool = False
    ) -> BlobRef:
        """Store ``data`` and return its reference. Idempotent: same bytes, same reference.

        ``retain``: never expire or garbage-collect it (model artifacts in the registry: a
        predictor restarting months later must still find the promoted model).
        """
        digest = sha256_hex(data)
        self._write(digest, data)
        if retain:
            self._retain(digest)
        return BlobRef(
            uri=self.uri_for(digest), sha256=digest, size=len(data), media_type=media_type
        )

    def get(self, ref: BlobRef) -> bytes:
        """Read and verify the blob named by ``ref``.

        Raises:
            BlobNotFoundError: the blob is not in this store.
            BlobCorruptedError: the bytes read do not match the reference's size or hash.
        """
        data = self._read(ref.sha256)
        if data is None:
            raise BlobNotFoundError(f"blob {ref.sha256} ({ref.uri}) is not in the store")
        if len(data) != ref.size:
            raise BlobCorruptedError(
                f"blob {ref.sha256}: {len(data)} bytes stored, reference says {ref.size}"
            )
        actual = sha256_hex(data)
        if actual != ref.sha256:
            raise BlobCorruptedError(f"blob {ref.sha256}: stored content hashes to {actual}")
        return data

    def put_array(self, array: np.ndarray) -> BlobRef:
        """Store a numpy array as .npy (no pickled objects)."""
        return self.put(encode_array(array), MediaType.NUMPY)

    def get_array(self, ref: BlobRef) -> np.ndarray:
        """Read, verify and decode a .npy blob (``allow_pickle=False``).

        Raises:
            BlobNotFoundError, BlobCorruptedError: as ``get``.
            ValueError: the blob is not a plain .npy array.
        """
        if ref.media_type != MediaType.NUMPY:
            raise ValueError(f"blob {ref.sha256} is {ref.media_type!r}, not {MediaType.NUMPY!r}")
        return decode_array(self.get(ref))

    def close(self) -> None:  # noqa: B027 - optional hook, not every store holds resources
        """Release connections (no-op for stores that hold none)."""


RETAIN_SUFFIX = ".retain"
"""A file blob with a ``<sha256>.retain`` marker beside it is never garbage-collected."""


class FileBlobStore(BlobStore):
    """Blobs as files under ``root/sha256[:2]/sha256``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        if not SHA256_HEX.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def uri_for(self, sha256: str) -> str:
        return self._path(sha256).as_uri()

    def _write(self, sha256: str, data: bytes) -> None:
        path = self._path(sha256)
        if path.exists():
            os.utime(path)  # refresh the age used by garbage_collect
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a reader never sees a partial blob, and a crash leaves only a temp.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self, sha256: str) -> bytes | None:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).exists()

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def _retain(self, sha256: str) -> None:
        self._path(sha256).with_suffix(RETAIN_SUFFIX).touch()

    def garbage_collect(self, older_than_s: float) -> int:
        """Delete blobs (and stale temp files) not written within ``older_than_s`` seconds,
        except retained ones (``put(..., retain=True)``).

        Returns the number of files removed.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.root.glob("*/*"):
            if path.suffix == RETAIN_SUFFIX or path.with_suffix(RETAIN_SUFFIX).exists():
                continue
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


class RedisBlobStore(BlobStore):
    """Blobs as Redis strings under ``{prefix}{sha256}``, each with a TTL."""

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        key_prefix: str = "cmrqc:blob:",
    ) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self._ttl_seconds = ttl_seconds
        self._key_prefix = key_prefix
        parts = urlsplit(url)
        # Never put credentials into URIs that travel on the bus.
        netloc = parts.hostname or "localhost"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        self._public_url = urlunsplit((parts.scheme, netloc, parts.path or "/0", "", ""))

    def _key(self, sha256: str) -> str:
        if not SHA256_HEX.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return f"{self._key_prefix}{sha256}"

    def uri_for(self, sha256: str) -> str:
        return f"{self._public_url}#{self._key(sha256)}"

    def _write(self, sha256: str, data: bytes) -> None:
        key = self._key(sha256)
        pipe = self._client.pipeline(transaction=True)
        pipe.set(key, data, nx=True, ex=self._ttl_seconds)
        # GT: only ever lengthen; a retained (persistent) key counts as infinite and stays so.
        pipe.expire(key, self._ttl_seconds, gt=True)
        pipe.execute()

    def _retain(self, sha256: str) -> None:
        self._client.persist(self._key(sha256))

    def _read(self, sha256: str) -> bytes | None:
        value = self._client.get(self._key(sha256))
        return bytes(value) if value is not None else None  # type: ignore[arg-type]

    def exists(self, sha256: str) -> bool:
        return bool(self._client.exists(self._key(sha256)))

    def delete(self, sha256: str) -> None:
        self._client.delete(self._key(sha256))

    def close(self) -> None:
        self._client.close()


def open_blob_store(url: str, *, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> BlobStore:
    """Open the store named by ``url``: ``file:///abs/dir`` or ``redis://host:port/db``.

    Raises:
        BlobStoreConfigError: unsupported scheme or malformed URL.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if not parts.path:
            raise BlobStoreConfigError(f"file blob store URL needs a path: {url!r}")
        return FileBlobStore(Path(parts.path))
    if parts.scheme in ("redis", "rediss"):
        return RedisBlobStore(url, ttl_seconds=ttl_seconds)
    raise BlobStoreConfigError(
        f"unsupported blob store URL {url!r}: use file:///path or redis://host:port/db"
    )
