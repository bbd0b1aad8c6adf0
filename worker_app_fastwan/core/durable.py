"""Durable file writes: after a crash or a power cut a file holds either its old content or all of the new.

The recipe (stated once here, used by the outbox, the worker id, local video storage and the stub's
uploads): write a temp file beside the target, fsync it, rename it over the target, fsync the folder so
the rename itself survives. Blocking (fsync waits for the disk): call these in a thread from async code.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(
    dest: Path,
    fill: Callable[[BinaryIO], object],
    *,
    tmp_prefix: str = ".",
    tmp_suffix: str = ".part",
    exact_mtime: bool = False,
) -> None:
    """Let `fill` write the new content into a temp file beside `dest`, then put it in place durably.

    `exact_mtime` stamps the file with a full-precision clock: the file system's own mtime ticks every few ms,
    too coarse for an order kept by mtime (the outbox delivers oldest first).
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=tmp_prefix, suffix=tmp_suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            if exact_mtime:
                now = time.time_ns()
                os.utime(fh.fileno(), ns=(now, now))
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def write_durably(
    dest: Path, data: bytes, *, tmp_prefix: str = ".", tmp_suffix: str = ".part", exact_mtime: bool = False
) -> None:
    """`data` as the whole of `dest`, durably; the folder must exist."""
    replace_durably(
        dest, lambda fh: fh.write(data), tmp_prefix=tmp_prefix, tmp_suffix=tmp_suffix, exact_mtime=exact_mtime
    )
