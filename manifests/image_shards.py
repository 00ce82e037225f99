"""WebDataset-style image shards: a tar of ``KEY.jpg`` + ``KEY.json`` pairs.

Plain ``tarfile`` and the ``webdataset`` library both read them. The writer commits the
whole tar atomically; :class:`ImageShardReader` indexes member offsets once so single
images can be read without scanning the archive.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manifests.atomic import commit, temporary_path
from manifests.errors import ManifestError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "JPEG", "JPG", "PNG")  # ImageNet: .JPEG


def tar_shard_path(root: str | os.PathLike, index: int) -> Path:
    return Path(root) / f"{index:05d}.tar"


class ImageShardWriter:
    """Write samples to ``path``; the tar appears under its final name only on :meth:`close`.

    Members are plain USTAR entries (``KEY.EXT``, mode 644, owner 0, mtime 0) written
    straight to the file: ``tarfile``'s generic header builder and ``addfile`` are a large
    part of a crawler's event-loop time.

    Every ``writeback_bytes`` written, the kernel is asked to start writing them to disk,
    so the fsync that commits the tar waits for the last few megabytes rather than the
    whole shard, at the end of every shard.
    """

    def __init__(self, path: str | os.PathLike, writeback_bytes: int = 4 << 20) -> None:
        self.path = Path(path)
        self._tmp = temporary_path(self.path)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed by close() or abort()
        self.count = 0
        self._writeback_bytes = writeback_bytes
        self._written_back = 0  # offset up to which writeback was started

    def add(self, key: str, image: bytes, meta: dict[str, Any], ext: str = "jpg") -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        self._add_member(f"{key}.{ext}", image)
        self._add_member(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self.count += 1
        if self._file.tell() - self._written_back >= self._writeback_bytes:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Start (not wait for) the disk writes of what was added since the last call: on
        Linux, POSIX_FADV_DONTNEED writes dirty pages back and keeps them cached meanwhile."""
        if not hasattr(os, "posix_fadvise"):  # macOS, Windows: the commit's fsync does it all
            return
        self._file.flush()
        end = self._file.tell()
        fd = self._file.fileno()
        os.posix_fadvise(fd, self._written_back, end - self._written_back, os.POSIX_FADV_DONTNEED)
        self._written_back = end

    def _add_member(self, name: str, data: bytes) -> None:
        self._file.write(ustar_header(name, len(data)))
        self._file.write(data)
        self._file.write(_padding(len(data), tarfile.BLOCKSIZE))

    def close(self) -> None:
        """Commit the tar under its final name (once; later calls do nothing)."""
        if not self._file.closed:
            end = 2 * tarfile.BLOCKSIZE  # two zero blocks end the archive
            self._file.write(b"\0" * end + _padding(self._file.tell() + end, tarfile.RECORDSIZE))
            self._file.close()
            commit(self._tmp, self.path)

    def abort(self) -> None:
        """Drop what was written, unless the tar was already committed."""
        if not self._file.closed:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ImageShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular file (POSIX.1-1988), as ``tarfile`` writes it."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"member name {name!r} is longer than 100 bytes")
    if size >= 8**11:
        raise ValueError(f"member {name!r}: {size} bytes, USTAR holds at most 8 GiB")
    fields = [
        encoded, b"0000644\0", b"0000000\0", b"0000000\0", b"%011o\0" % size,
        b"00000000000\0", b" " * 8, b"0", b"", b"ustar\0", b"00", b"", b"", b"", b"", b"",
    ]  # fmt: skip
    header = bytearray(_USTAR.pack(*fields))
    header[148:156] = b"%06o\0 " % sum(header)  # checksum over the header with blank chksum
    return bytes(header)


def _padding(size: int, block: int) -> bytes:
    return b"\0" * (-size % block)


def iter_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` in file order, grouping consecutive members by key."""
    key, sample = None, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, ext = member.name.partition(".")
                if k != key and sample:
                    yield key, sample
                    sample = {}
                key = k
                sample[ext] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise ManifestError(f"{path}: not a readable tar shard ({exc})") from exc
    if sample:
        yield key, sample


class ImageShardReader:
    """Random access to the members of one tar shard by key and extension."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._index: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(self.path, "r:") as tar:
                for m in tar:
                    if m.isfile():
                        self._index[m.name] = (m.offset_data, m.size)
        except (OSError, tarfile.TarError) as exc:
            raise ManifestError(f"{self.path}: not a readable tar shard ({exc})") from exc
        self._file: io.BufferedReader | None = None
        self._opening = threading.Lock()  # one file for every thread (the verifier's)

    def keys(self) -> list[str]:
        return sorted({name.partition(".")[0] for name in self._index})

    def read(self, key: str, ext: str = "jpg") -> bytes:
        name = f"{key}.{ext}"
        if name not in self._index:
            raise KeyError(f"{self.path}: no member {name}")
        offset, size = self._index[name]
        with self._opening:
            if self._file is None:
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for repeated reads
        return os.pread(self._file.fileno(), size, offset)  # positional: safe across threads

    def read_image(self, key: str) -> bytes:
        """The image of sample ``key``, whatever its extension (jpg, jpeg, png, webp)."""
        for ext in IMAGE_EXTENSIONS:
            if f"{key}.{ext}" in self._index:
                return self.read(key, ext)
        raise KeyError(f"{self.path}: no image member for key {key}")

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads(self.read(key, "json"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ImageShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
