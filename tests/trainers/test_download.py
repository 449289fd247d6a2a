"""The download helper on file:// URLs: the real urllib path, checksums and atomic writes, no network."""

from __future__ import annotations

import hashlib

import pytest

from dlhw.trainers.download import DownloadError, download


def _source(tmp_path, data=b"pedestrians" * 1000):
    src = tmp_path / "src.zip"
    src.write_bytes(data)
    return src, hashlib.sha256(data).hexdigest()


def test_download_verifies_and_writes_the_file(tmp_path):
    src, sha = _source(tmp_path)
    dest = tmp_path / "cache" / "data.zip"
    assert download(src.as_uri(), dest, sha256_prefix=sha) == dest
    assert dest.read_bytes() == src.read_bytes()
    src.unlink()  # a verified file in the cache is used as it is
    assert download(src.as_uri(), dest, sha256_prefix=sha) == dest


def test_checksum_mismatch_leaves_nothing_behind(tmp_path):
    src, _ = _source(tmp_path)
    dest = tmp_path / "cache" / "data.zip"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(src.as_uri(), dest, sha256_prefix="0" * 64)
    assert list(dest.parent.iterdir()) == []


def test_unreachable_source_is_a_download_error(tmp_path):
    dest = tmp_path / "data.zip"
    with pytest.raises(DownloadError, match="cannot download"):
        download((tmp_path / "missing.zip").as_uri(), dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_a_download_must_match_its_sha256_prefix(tmp_path):
    src, sha = _source(tmp_path)
    dest = tmp_path / "cache" / "w.pth"
    assert download(src.as_uri(), dest, sha256_prefix=sha[:8].upper()) == dest
    dest.unlink()
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(src.as_uri(), dest, sha256_prefix="0" * 8 if not sha.startswith("0" * 8) else "f" * 8)
    assert list(dest.parent.iterdir()) == []
