"""Reading files that a recipe, an output folder or a model folder names, without hanging and
without reading without end: only regular files are opened, and never more than a bound.

A FIFO, a socket or a device (``/dev/zero``) at a recipe's, manifest's, journal's or image's name
would block the run for good or be read until memory runs out; ``/proc`` files (``/proc/self/pagemap``)
say they are empty regular files and then read on. So every reader of such files goes through
:func:`open_regular`: ``os.open`` with ``O_NONBLOCK`` (opening a FIFO returns at once), an
``fstat`` check of the opened file (``S_ISREG``: the file actually opened, not the name looked at
before), a size bound; then reads stop at the size ``fstat`` gave (a file appended to meanwhile is
read as it was when opened), and a file that says it is empty and reads on anyway is refused
(:class:`NotRegularFile`).

Errors are ``OSError`` subclasses, so the callers' existing ``except OSError`` (an unreadable
manifest is "no manifest", an unreadable journal is "no journal") covers them.
Light module: the standard library only.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1 << 20
# What the run's own bookkeeping files may weigh: manifest.json of 100,000 jobs is ~60 MB.
MAX_RECORD_BYTES = 512 << 20
# An input image or an image given to --compare / --reproduce: a 8192 x 8192 16-bit RGBA PNG
# stored without compression is 512 MiB; anything bigger is not an image this tool makes or takes.
MAX_IMAGE_BYTES = 512 << 20
# A model's JSON config (model_index.json, config.json, a tokenizer's files are not read here).
MAX_CONFIG_BYTES = 16 << 20
# Pixels decoded at most per image (width x height): 16384 x 16384, the largest contact sheet.
MAX_IMAGE_PIXELS = 16384 * 16384


class NotRegularFile(OSError):
    """The path is not a regular file (a FIFO, device, socket, folder, or a file that reads on
    past its size): it is never read. ``kind`` says what it is ("a FIFO (named pipe)")."""

    def __init__(self, message: str, kind: str = "not a regular file"):
        super().__init__(message)
        self.kind = kind


class FileTooLarge(OSError):
    """A regular file larger than the bound its reader allows (``size`` bytes)."""

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


def _describe(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def size_text(size: int) -> str:
    """``3,221,225,472 bytes (3.0 GiB)``."""
    return f"{size:,} bytes" + (f" ({size / (1 << 30):.1f} GiB)" if size >= 1 << 30 else
                                 f" ({size / (1 << 20):.1f} MiB)" if size >= 1 << 20 else "")


class _Bounded(io.RawIOBase):
    """A regular file opened by :func:`open_regular`: reads end at the size ``fstat`` gave (a file
    appended to meanwhile is read as it was when opened). A file that says it is empty and yet
    returns data (``/proc/self/pagemap``, ``/proc/kmsg``) raises :class:`NotRegularFile`."""

    def __init__(self, fd: int, path: Path, size: int):
        self._fd = fd
        self._path = path
        self._left = size
        self._checked = size > 0  # only a file that says it is empty is probed past its size

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._left <= 0:
            if not self._checked:
                self._checked = True
                try:
                    extra = os.read(self._fd, 1)
                except OSError:  # EAGAIN, EINVAL: a special file (/proc/kmsg) that only says it is empty
                    extra = b"?"
                if extra:
                    raise NotRegularFile(f"{self._path}: reads past its size (a special file): refused",
                                         "a special file that reads past its size")
            return 0
        data = os.read(self._fd, min(len(view), self._left))
        n = len(data)
        view[:n] = data
        self._left -= n
        if n == 0:
            self._left = 0  # shrank while read: the caller sees a short file
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


@contextmanager
def open_regular(path: str | Path, limit: int | None = None, *, follow: bool = True,
                 what: str = "file") -> Iterator[BinaryIO]:
    """A binary reader of ``path`` if it is a regular file of at most ``limit`` bytes.

    ``follow=False`` refuses a symbolic link at ``path`` itself (O_NOFOLLOW). Raises
    :class:`NotRegularFile`, :class:`FileTooLarge`, or the OSError of ``os.open``."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow and os.path.islink(path):
            raise NotRegularFile(f"{path}: a symbolic link, refused ({what})", "a symbolic link") from None
        raise exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path}: {_describe(st.st_mode)}, not a regular file: refused", _describe(st.st_mode))
        if limit is not None and st.st_size > limit:
            raise FileTooLarge(f"{path}: {size_text(st.st_size)}, more than the {what} limit of {size_text(limit)}",
                               st.st_size)
        raw = _Bounded(fd, path, st.st_size)
    except BaseException:
        os.close(fd)
        raise
    with io.BufferedReader(raw, CHUNK) as reader:
        yield reader


def read_regular(path: str | Path, limit: int | None = None, *, follow: bool = True, what: str = "file") -> bytes:
    """The bytes of ``path`` (see :func:`open_regular`)."""
    with open_regular(path, limit, follow=follow, what=what) as fh:
        return fh.read()


def read_text(path: str | Path, limit: int | None = MAX_RECORD_BYTES, *, follow: bool = True,
              what: str = "file") -> str:
    """UTF-8 text of a regular file (UnicodeDecodeError, a ValueError, when it is not)."""
    return read_regular(path, limit, follow=follow, what=what).decode("utf-8")


def sha256_regular(path: str | Path, limit: int | None = None) -> str:
    """SHA-256 of a regular file's bytes, read in chunks up to its size."""
    digest = hashlib.sha256()
    with open_regular(path, limit) as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_regular(path: str | Path) -> bool:
    """Whether ``path`` is a regular file, not a link (lstat: nothing is opened)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than its reader allows (nothing decoded)."""


def open_image(path: str | Path, limit: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS,
               formats: tuple[str, ...] | None = None, what: str = "image") -> Any:
    """A lazily opened PIL image of a regular file of at most ``limit`` bytes, whose header says at
    most ``max_pixels`` pixels (checked before any pixel is decoded; the caller decodes, and closes
    it: use it in a ``with``). NotRegularFile / FileTooLarge (OSError) or ImageTooLarge."""
    from PIL import Image

    data = read_regular(path, limit, what=what)
    image = Image.open(io.BytesIO(data), formats=formats)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"{path}: {width} x {height} pixels, more than the {what} limit of {max_pixels:,}")
    return image
