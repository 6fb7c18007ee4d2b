"""data/files.py: atomic writes leave the old bytes or the new ones, never a temporary file."""
import hashlib
import os

import numpy as np
import pytest

from ie_engine.data.files import open_atomic, sha256_file, write_atomic


@pytest.mark.parametrize("durable", [False, True])
def test_write_atomic_replaces_the_file(tmp_path, durable):
    path = tmp_path / "a.json"
    write_atomic(path, "héllo\n", durable=durable)  # str is written as UTF-8
    assert path.read_bytes() == "héllo\n".encode()
    write_atomic(str(path), b"\x00\x01", durable=durable)
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["a.json"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert os.stat(path).st_mode == os.stat(plain).st_mode  # the umask decides, as for open()


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.npy"
    with open_atomic(path) as f:  # writers that want a file object, e.g. np.save
        np.save(f, np.arange(5))
    with pytest.raises(RuntimeError, match="disk full"):
        with open_atomic(path) as f:
            np.save(f, np.zeros(3))
            raise RuntimeError("disk full")
    np.testing.assert_array_equal(np.load(path), np.arange(5))
    assert os.listdir(tmp_path) == ["a.npy"]
    with open_atomic(tmp_path / "t.txt", "w") as f:
        f.write("text ✓")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "text ✓"
    with pytest.raises(ValueError, match="mode"):
        with open_atomic(tmp_path / "x", "a"):
            pass


def test_sha256_file(tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)  # several 1 MiB blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
