"""The desired-state API: validation, access, and storage across restarts."""

import pytest
from support.harness import Harness, mgmt

from corral.balancer import Balancer, BalancerConfig
from corral.balancer.desired import DesiredStore, StoreError


async def test_put_get_and_survive_a_restart(harness: Harness, tmp_path):
    state_file = tmp_path / "state.json"
    balancer = await harness.balancer(state_file=state_file, management_token="t")
    url = mgmt(balancer, "/api/v1/desired-state")
    auth = {"Authorization": "Bearer t"}
    async with harness.http.put(url, json={"model": "bundled"}) as r:
        assert r.status == 401
    async with harness.http.put(url, json={"model": "bundled", "slots": 0}, headers=auth) as r:
        assert r.status == 400
        assert "$.slots" in (await r.json())["error"]["message"]
    async with harness.http.put(url, json={"model": "bundled", "colour": 1}, headers=auth) as r:
        assert r.status == 400 and "colour" in (await r.json())["error"]["message"]
    async with harness.http.put(url, json={"model": "bundled", "slots": 3}, headers=auth) as r:
        assert r.status == 200
        assert (await r.json())["generation"] == 1
    async with harness.http.get(url, headers=auth) as r:
        body = await r.json()
        assert body["desired"] == {"model": "bundled", "slots": 3}
        assert body["agents"] == [] and body["halted"] is False
    # a new balancer on the same file knows it
    again = Balancer(BalancerConfig(state_file=state_file))
    assert again.rollout.store.generation == 1
    assert again.rollout.store.state.slots == 3


def test_a_corrupt_state_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "state.json"
    bad.write_text("{not json")
    with pytest.raises(StoreError, match="cannot read the desired state"):
        DesiredStore(bad)


def test_the_state_file_survives_a_crash_mid_write(tmp_path, monkeypatch):
    from corral.balancer import desired
    from corral.protocol import messages as m

    path = tmp_path / "state.json"
    store = DesiredStore(path)
    store.put(m.DesiredState(model="bundled", slots=2))
    before = path.read_bytes()

    def crash(payload, file, **kw):  # half the JSON reaches the disk, then the crash
        file.write('{"generation": 2, "sta')
        file.flush()
        raise OSError("No space left on device")

    monkeypatch.setattr(desired.json, "dump", crash)
    with pytest.raises(StoreError, match="cannot save"):
        store.put(m.DesiredState(model="bundled", slots=5))
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old state, whole
    assert store.generation == 1 and store.state is not None and store.state.slots == 2
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    # a process killed mid-write leaves its temporary file: it is never read
    (tmp_path / ".desired-crashed").write_text('{"generation": 9, "sta')
    again = DesiredStore(path)
    assert again.generation == 1 and again.state is not None and again.state.slots == 2


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"version": 1}', "not a desired-state file"),
        ("[1, 2]", "not a desired-state file"),
        ('{"generation": 1, "state": {"model": 5}}', "Expected `str"),
    ],
)
def test_a_file_of_another_shape_says_what_it_is_not(tmp_path, text, error):
    bad = tmp_path / "state.json"
    bad.write_text(text)
    with pytest.raises(StoreError, match=error):
        DesiredStore(bad)


def test_a_named_state_file_that_cannot_be_saved_stops_the_start(tmp_path, caplog):
    """Found at the start, not at the first PUT (which answered 500 with a traceback);
    the default file, which the operator did not name, is only warned about: a
    balancer whose home cannot be written still starts."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "state.json"  # its folder would be a file
    with pytest.raises(StoreError, match=f"--state-file {path}: cannot write into {blocker}"):
        DesiredStore(path, required=True)
    with pytest.raises(StoreError, match="--state-file"):
        Balancer(BalancerConfig(state_file=blocker / "sub" / "s.json", state_file_required=True))
    with caplog.at_level("WARNING", logger="corral.rollout"):
        store = DesiredStore(path)
    assert store.generation == 0
    assert "the desired state cannot be saved" in caplog.text and "set --state-file" in caplog.text
    assert not (tmp_path / "a-file").is_dir() and sorted(tmp_path.iterdir()) == [blocker]


def test_the_cli_stops_only_for_a_state_file_it_was_given(tmp_path, monkeypatch):
    from corral.cli import _balancer_config, parse_args

    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert _balancer_config(parse_args(["balancer"])).state_file_required is False
    named = parse_args(["balancer", "--state-file", str(tmp_path / "s.json")])
    assert _balancer_config(named).state_file_required is True


async def test_a_put_that_cannot_save_answers_a_json_error(harness: Harness, tmp_path):
    folder = tmp_path / "state"
    balancer = await harness.balancer(state_file=folder / "state.json")
    folder.write_text("")  # its folder is now a file: the save fails
    url = mgmt(balancer, "/api/v1/desired-state")
    async with harness.http.put(url, json={"model": "bundled"}) as r:
        assert r.status == 500
        body = await r.json()
    assert "cannot save the desired state" in body["error"]["message"]
    assert balancer.rollout.store.generation == 0


def test_a_folder_that_cannot_be_looked_into_is_a_reason_not_a_traceback(
    tmp_path, monkeypatch, caplog
):
    """A folder above the state file that its user may not search (EACCES: stat
    raises, where a missing file answers False) raised PermissionError from the
    balancer's start, even for the default file, which is only warned about. Root
    may search any folder, so the refusal is the kernel's answer, played here."""
    import errno
    from pathlib import Path

    locked = tmp_path / "locked"
    locked.mkdir()
    path = locked / "deeper" / "state.json"
    real_stat = Path.stat

    def stat(self: Path, *args: object, **kwargs: object) -> object:
        if self != locked and self.is_relative_to(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", stat)
    with caplog.at_level("WARNING", logger="corral.rollout"):
        store = DesiredStore(path)
    assert store.generation == 0 and "Permission denied" in caplog.text
    with pytest.raises(StoreError, match=f"--state-file {path}: cannot write .*Permission denied"):
        DesiredStore(path, required=True)
