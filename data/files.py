"""Writing a file so that readers see the old bytes or the new ones, never half of them; hashing one.

`write_atomic(path, data)` and `open_atomic(path)` write to a temporary file in the same directory
(same file system, so the rename is atomic) and `os.replace` it onto `path` when the write
completed; on an exception the temporary file is removed and `path` is untouched. With
`durable=True` the file is fsync'ed before the rename and the directory after it, so the new
bytes also survive a power loss (a checkpoint needs that; a cache that can be rebuilt does not).
The temporary file is created like any other file (the umask decides its mode), so the result
has the permissions a plain `open(path, "w")` would give it.

`sha256_file(path)` hashes a file in 1 MiB blocks (memory stays flat for files of GBs).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """A new file object ("w": UTF-8 text, "wb": bytes) that replaces `path` when the block ends.

    For writers that stream or want a file object: `with open_atomic(p) as f: np.save(f, a)`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    text = {"encoding": "utf-8"} if mode == "w" else {}
    try:
        with open(tmp, mode.replace("w", "x"), **text) as f:  # "x": never reuse a stray file
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:  # the rename itself is a change to the directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str, durable: bool = False) -> None:
    """Write `data` (str: as UTF-8) to `path` atomically; fsync file and directory if durable."""
    with open_atomic(path, "wb", durable) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
