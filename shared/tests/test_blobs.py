"""The claim-check blob store, against a real Redis and a real directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from cmrqc_shared.blobs import (
    BlobCorruptedError,
    BlobNotFoundError,
    BlobRef,
    BlobStore,
    BlobStoreConfigError,
    FileBlobStore,
    MediaType,
    RedisBlobStore,
    open_blob_store,
    sha256_hex,
)


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        return open_blob_store(tmp_path.as_uri())
    url = request.getfixturevalue("redis_url")
    return RedisBlobStore(url, ttl_seconds=3600, key_prefix=f"test:{tmp_path.name}:")


def test_put_names_the_blob_by_its_sha256(store: BlobStore) -> None:
    ref = store.put(b"hello", MediaType.OCTET_STREAM)
    assert ref.sha256 == sha256_hex(b"hello") and ref.size == 5
    assert store.get(ref) == b"hello"


def test_putting_the_same_bytes_twice_gives_the_same_reference(store: BlobStore) -> None:
    assert store.put(b"same") == store.put(b"same")


def test_a_missing_blob_raises_a_typed_error(store: BlobStore) -> None:
    ref = BlobRef(uri="x", sha256=sha256_hex(b"never stored"), size=12, media_type="x")
    with pytest.raises(BlobNotFoundError, match="not in the store"):
        store.get(ref)


def test_a_reference_whose_size_disagrees_is_reported_corrupted(store: BlobStore) -> None:
    ref = store.put(b"abc")
    with pytest.raises(BlobCorruptedError, match="3 bytes stored"):
        store.get(ref.model_copy(update={"size": 4}))


def test_arrays_round_trip_exactly(store: BlobStore) -> None:
    volume = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32)
    ref = store.put_array(volume)
    assert ref.media_type == MediaType.NUMPY
    restored = store.get_array(ref)
    assert restored.dtype == np.float32 and np.array_equal(restored, volume)


def test_object_arrays_are_refused_because_they_would_need_pickle(store: BlobStore) -> None:
    with pytest.raises(ValueError, match="pickling"):
        store.put_array(np.array([{"a": 1}], dtype=object))


def test_a_blob_that_is_not_an_array_is_not_decoded_as_one(store: BlobStore) -> None:
    with pytest.raises(ValueError, match="not 'application/x-npy'"):
        store.get_array(store.put(b"{}", MediaType.JSON))


def test_bytes_changed_on_disk_are_detected(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    ref = store.put(b"original")
    path = next(p for p in tmp_path.rglob(ref.sha256))
    path.write_bytes(b"tampered")
    with pytest.raises(BlobCorruptedError, match="hashes to"):
        store.get(ref)


def test_bytes_changed_in_redis_are_detected(redis_url: str) -> None:
    store = RedisBlobStore(redis_url, key_prefix="test:tamper:")
    ref = store.put(b"original")
    redis.Redis.from_url(redis_url).set(f"test:tamper:{ref.sha256}", b"tampered")
    with pytest.raises(BlobCorruptedError):
        store.get(ref)


def test_redis_blobs_expire_and_a_re_put_refreshes_the_ttl(redis_url: str) -> None:
    store = RedisBlobStore(redis_url, ttl_seconds=120, key_prefix="test:ttl:")
    client = redis.Redis.from_url(redis_url)
    ref = store.put(b"expiring")
    key = f"test:ttl:{ref.sha256}"
    client.expire(key, 5)
    store.put(b"expiring")
    assert 100 < client.ttl(key) <= 120


def test_redis_uris_never_carry_the_password() -> None:
    store = RedisBlobStore("redis://:s3cret@127.0.0.1:6379/2")
    uri = store.uri_for("a" * 64)
    assert "s3cret" not in uri and uri.startswith("redis://127.0.0.1:6379/2#")


def test_garbage_collection_removes_only_old_blobs(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    old, new = store.put(b"old"), store.put(b"new")
    old_path = next(tmp_path.rglob(old.sha256))
    past = time.time() - 10 * 86400
    os.utime(old_path, (past, past))
    assert store.garbage_collect(older_than_s=86400) == 1
    assert not store.exists(old.sha256) and store.exists(new.sha256)


def test_an_unknown_store_url_is_a_configuration_error() -> None:
    with pytest.raises(BlobStoreConfigError, match="unsupported"):
        open_blob_store("s3://bucket/blobs")


def test_a_retained_redis_blob_never_expires_even_when_put_again(redis_url: str) -> None:
    store = RedisBlobStore(redis_url, ttl_seconds=120, key_prefix="test:retain:")
    client = redis.Redis.from_url(redis_url)
    ref = store.put(b"model weights", MediaType.SAFETENSORS, retain=True)
    key = f"test:retain:{ref.sha256}"
    assert client.ttl(key) == -1  # no expiry
    store.put(b"model weights")  # the same bytes put by someone else, without retain
    assert client.ttl(key) == -1
    assert 0 < client.ttl(f"test:retain:{store.put(b'a volume').sha256}") <= 120
    client.delete(key)


def test_garbage_collection_keeps_retained_blobs(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    kept, dropped = store.put(b"model", retain=True), store.put(b"volume")
    past = time.time() - 10 * 86400
    for ref in (kept, dropped):
        path = next(p for p in tmp_path.rglob(ref.sha256 + "*") if p.name == ref.sha256)
        os.utime(path, (past, past))
    assert store.garbage_collect(older_than_s=86400) == 1
    assert store.exists(kept.sha256) and not store.exists(dropped.sha256)
