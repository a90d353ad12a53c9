"""The spool's session logs: durable appends, crash recovery, release, quarantine."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cmrqc_ingest import spool as spool_module
from cmrqc_ingest.instance_ref import InstanceRef
from cmrqc_ingest.spool import Spool, SpooledFile, uid_key

SESSION = "assoc-1"


def _instance(n: int, size: int = 5000) -> bytes:
    return bytes((n * 7 + i) % 251 for i in range(size))


def _write(spool: Spool, n: int, session: str = SESSION) -> SpooledFile:
    return spool.write(session, "c-store", _instance(n))


def _recovered(root: Path) -> tuple[Spool, list[SpooledFile]]:
    spool = Spool(root)
    spool.open()
    return spool, [f for _, files in spool.iter_incoming() for f in files]


def test_a_session_appends_to_one_log_and_reads_back_exactly(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        written = [_write(spool, n) for n in range(5)]
        other = _write(spool, 9, session="assoc-2")
        assert len({f.path for f in written}) == 1 and other.path != written[0].path
        assert [f.ref.read_bytes() for f in written] == [_instance(n) for n in range(5)]
        assert all(spool.contains(f.ref) for f in [*written, other])
        assert spool.used_bytes > 6 * 5000


def test_a_crash_mid_append_loses_only_the_unacknowledged_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    written = [_write(spool, n) for n in range(3)]
    log = written[0].path
    spool.close()  # the process dies: nothing is removed
    with open(log, "ab") as handle:  # a record cut short by the crash
        handle.write(b"CQSP\x02\x07" + b"0" * 20)
    spool, files = _recovered(tmp_path)
    assert [f.ref.read_bytes() for f in files] == [_instance(n) for n in range(3)]
    assert [f.offset for f in files] == [f.offset for f in written]
    assert [f.source for f in files] == ["c-store"] * 3
    assert [f.received_at for f in files] == [f.received_at for f in written]
    # new instances go to a new log; the recovered one is never appended to
    assert _write(spool, 3).path != log
    spool.close()


def test_a_record_failing_its_crc_is_skipped_and_the_rest_recovered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    written = [_write(spool, n) for n in range(3)]
    spool.close()
    with open(written[1].path, "r+b") as handle:  # one bit flips in the middle record
        handle.seek(written[1].offset + 100)
        byte = handle.read(1)
        handle.seek(written[1].offset + 100)
        handle.write(bytes([byte[0] ^ 1]))
    spool, files = _recovered(tmp_path)
    assert [f.ref.read_bytes() for f in files] == [_instance(0), _instance(2)]
    spool.close()


def test_a_log_is_released_only_when_every_instance_in_it_is_and_is_then_reused(
    tmp_path: Path,
) -> None:
    with Spool(tmp_path) as spool:
        first = [_write(spool, n) for n in range(3)]
        spool.remove_files(f.ref for f in first[:2])
        assert spool.contains(first[2].ref) and not spool.contains(first[0].ref)
        late = _write(spool, 3)  # arrived while the first three were being assembled
        assert late.path == first[0].path
        spool.remove_file(first[2].ref)
        spool.remove_file(first[2].ref)  # idempotent
        assert late.ref.read_bytes() == _instance(3)
        spool.end(SESSION)  # the association ends; its log stays while it holds instances
        assert late.ref.read_bytes() == _instance(3)
        spool.remove_file(late.ref)
        assert not spool.contains(late.ref) and spool.used_bytes == 0  # (pooled for reuse)
        size = first[0].path.stat().st_size
        reused = _write(spool, 7, session="assoc-2")  # the next session reuses the file
        assert not first[0].path.exists() and reused.path.stat().st_size == size
        assert [p.name for p in (tmp_path / "incoming").iterdir()] == [reused.path.name]
        assert reused.ref.read_bytes() == _instance(7)
        assert not spool.contains(InstanceRef(first[0].path, reused.offset, reused.size))


def test_a_reused_log_recovers_only_its_new_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    old = [_write(spool, n, session="a") for n in range(4)]
    spool.remove_files(f.ref for f in old)
    new = _write(spool, 9, session="b")  # over the first old record; three stale ones follow
    spool.close()
    spool, files = _recovered(tmp_path)
    assert [f.ref.read_bytes() for f in files] == [_instance(9)]
    assert files[0].path == new.path and files[0].offset == new.offset
    spool.close()


def test_a_long_session_rolls_over_so_that_handled_logs_are_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "MAX_LOG_BYTES", 10_000)  # two 5 KB records per log
    with Spool(tmp_path) as spool:
        written = [_write(spool, n) for n in range(5)]
        logs = sorted({f.path for f in written})
        assert len(logs) == 3 and [f.path for f in written].count(logs[0]) == 2
        used = spool.used_bytes
        spool.remove_files(f.ref for f in written[:2])  # the first study was published
        assert spool.used_bytes < used  # its log was released; the others hold on
        assert not spool.contains(written[0].ref) and spool.contains(written[2].ref)
        assert [f.ref.read_bytes() for f in written[2:]] == [_instance(n) for n in range(2, 5)]


def test_a_quarantined_series_is_copied_out_as_replayable_files(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        written = [_write(spool, n) for n in range(2)]
        folder = spool.quarantine("1.2.3", [f.ref for f in written], {"reason": "test"})
        assert sorted(p.name for p in folder.iterdir()) == ["00000.dcm", "00001.dcm", "reason.json"]
        assert (folder / "00001.dcm").read_bytes() == _instance(1)
        assert not any(spool.contains(f.ref) for f in written)


def test_files_spooled_by_the_older_one_file_per_instance_layout_are_recovered(
    tmp_path: Path,
) -> None:
    with Spool(tmp_path):  # creates the layout
        pass
    folder = tmp_path / "incoming" / uid_key("1.2.3")
    folder.mkdir()
    (folder / f"stow-rs_{uid_key('x')}_0011aabb.dcm").write_bytes(_instance(5))
    spool, [old] = _recovered(tmp_path)
    assert old.source == "stow-rs" and old.ref.read_bytes() == _instance(5)
    spool.remove_file(old.ref)
    assert not folder.exists()
    spool.close()


def test_a_failed_write_ends_its_log_and_nothing_acknowledged_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    spool.open()
    kept = _write(spool, 0)
    real_pwritev = os.pwritev

    def disk_full_after_half(fd: int, buffers: list[memoryview], offset: int) -> int:
        real_pwritev(fd, [buffers[0][: len(buffers[0]) // 2]], offset)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwritev", disk_full_after_half)
    with pytest.raises(OSError):
        _write(spool, 1)
    monkeypatch.undo()
    after = _write(spool, 2)
    spool.close()
    spool, files = _recovered(tmp_path)
    assert [f.ref.read_bytes() for f in files] == [_instance(0), _instance(2)]
    assert files[0].offset == kept.offset and files[1].offset == after.offset
    spool.close()


def test_concurrent_writes_to_one_log_are_serialized_and_all_recovered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    with ThreadPoolExecutor(4) as pool:
        written = list(pool.map(lambda n: _write(spool, n), range(40)))
    assert len({f.path for f in written}) == 1
    assert all(f.ref.read_bytes() == _instance(n) for n, f in enumerate(written))
    spool.close()
    spool, files = _recovered(tmp_path)
    assert sorted(f.ref.read_bytes() for f in files) == sorted(_instance(n) for n in range(40))
    spool.close()
