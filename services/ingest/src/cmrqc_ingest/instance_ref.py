"""Where one instance's Part 10 bytes lie: a whole file, or a record of a spool log."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class InstanceRef:
    """``size`` bytes at ``offset`` of the file ``path``; ``size`` None: the whole file.

    The spool writes the instances of a session to one log file (``spool`` module), so an
    instance is a byte range, not a file; a file on disk (backfill, tests) is the range
    from 0 to its end. Offsets read from the instance's own bytes (its pixel data, say)
    are relative to ``offset``.
    """

    path: Path
    offset: int = 0
    size: int | None = None

    @classmethod
    def of(cls, where: Path | InstanceRef) -> InstanceRef:
        """``where`` itself, or the whole file at that path."""
        return where if isinstance(where, InstanceRef) else cls(Path(where))

    @property
    def whole_file(self) -> bool:
        return self.offset == 0 and self.size is None

    @property
    def name(self) -> str:
        """For messages: the file name, with ``@offset`` for a log record."""
        return self.path.name if self.whole_file else f"{self.path.name}@{self.offset}"

    def read_bytes(self) -> bytes:
        """The instance's bytes.

        Raises:
            OSError: the file is gone or unreadable.
            EOFError: the file ends before the record does.
        """
        if self.whole_file:
            return self.path.read_bytes()
        with open(self.path, "rb") as handle:
            return self.read_range(handle, 0, self.size or 0)

    def read_range(self, handle: BinaryIO, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` within the instance, read from ``handle``."""
        handle.seek(self.offset + start)
        data = handle.read(length)
        if len(data) != length:
            raise EOFError(f"{self.name}: {len(data)} of {length} bytes at {start}")
        return data

    def open(self) -> BinaryIO:
        """A binary stream of the instance alone (for pydicom)."""
        return io.BytesIO(self.read_bytes())
