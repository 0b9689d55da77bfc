"""The weight cache's init step: copy once, verify, rename; never leave half a file."""

from __future__ import annotations

import hashlib

import pytest

from corral.k8s.fetch import FetchError, fetch


def test_copies_once_then_uses_the_cache(tmp_path):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF" * 1000)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "models" / "m.gguf"
    lines: list[str] = []
    fetch(str(source), dest, sha, report=lines.append)
    assert dest.read_bytes() == source.read_bytes()
    assert (dest.parent / "m.gguf.sha256").read_text() == sha
    assert any(line.startswith("copied weights:") for line in lines)
    source.write_bytes(b"changed")  # a second pod: nothing is copied again
    lines.clear()
    fetch(str(source), dest, sha, report=lines.append)
    assert lines == [f"cached and verified: {dest}"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.gguf", "m.gguf.sha256"]


def test_a_checksum_mismatch_leaves_nothing_behind(tmp_path):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    dest = tmp_path / "cache" / "m.gguf"
    with pytest.raises(FetchError, match="sha256 is"):
        fetch(str(source), dest, "0" * 64)
    assert list(dest.parent.iterdir()) == []


def test_a_missing_source_is_an_error_not_a_traceback(tmp_path):
    with pytest.raises(FetchError, match="not found"):
        fetch(str(tmp_path / "nope.gguf"), tmp_path / "cache" / "m.gguf")


def test_a_destination_folder_that_cannot_be_made_is_named(tmp_path):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FetchError, match=f"cannot make {blocker / 'models'} for"):
        fetch(str(source), blocker / "models" / "m.gguf")
