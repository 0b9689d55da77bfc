"""The desired state of the fleet, stored so it survives a balancer restart, and the
rollout that brings supervised agents to it (the deciding is in
:mod:`corral.core.rollout`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from corral.core.clock import Clock
from corral.core.fleet import Fleet
from corral.core.rollout import done, halted, plan, ready_to_apply
from corral.protocol import messages as m
from corral.writable import cannot_write_file

log = logging.getLogger("corral.rollout")


class StoreError(Exception):
    pass


class DesiredStore:
    """One JSON file: ``{"generation": N, "state": {...}}``, replaced atomically.

    A crash mid-write leaves the previous file whole: the new one is written to a
    temporary file in the same directory, flushed to disk, renamed over the old one
    (an atomic step on POSIX), and the directory is flushed so the rename survives a
    power cut. A temporary file a crash left behind is never read.
    """

    def __init__(self, path: Path | None, *, required: bool = False) -> None:
        """Read ``path`` if it exists, and check that a new state could be saved there:
        when it cannot, a ``required`` path (the operator named it) stops the start;
        the default one is only warned about (a balancer without a writable home runs,
        and a ``PUT /api/v1/desired-state`` answers why it cannot save).

        Raises:
            StoreError: the file cannot be read or is not a desired state, or
                (``required``) no file can be written where it goes.
        """
        self.path = path
        self.generation = 0
        self.state: m.DesiredState | None = None
        if path is None:
            return
        try:  # a folder above it that cannot be looked into: nothing to read (and see below)
            exists = path.exists()
        except OSError:
            exists = False
        if exists:
            try:
                data = json.loads(path.read_bytes())
                if not isinstance(data, dict) or not {"state", "generation"} <= set(data):
                    raise ValueError("not a desired-state file (no 'state' and 'generation')")
                self.state = msgspec.convert(data["state"], m.DesiredState)
                self.generation = int(data["generation"])
            except (OSError, ValueError, TypeError, msgspec.ValidationError) as exc:
                raise StoreError(f"cannot read the desired state from {path}: {exc}") from None
        why = cannot_write_file(path)
        if why is None:
            return
        if required:
            raise StoreError(f"--state-file {path}: {why}")
        log.warning("the desired state cannot be saved (%s); set --state-file", why)

    def put(self, state: m.DesiredState) -> int:
        """Save ``state`` as the next generation; return that generation.

        Raises:
            StoreError: it could not be saved (the previous file is left whole)."""
        generation = self.generation + 1
        if self.path is not None:
            payload = {"generation": generation, "state": msgspec.to_builtins(state)}
            tmp: str | None = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".desired-")
                with os.fdopen(fd, "w") as file:
                    json.dump(payload, file, indent=2)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, self.path)
                _fsync_dir(self.path.parent)
            except OSError as exc:
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)
                raise StoreError(
                    f"cannot save the desired state to {self.path}: {exc.strerror or exc}"
                ) from exc
        self.state, self.generation = state, generation
        return generation


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename in it) to disk, where the OS allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync directories
    finally:
        os.close(fd)


class Rollout:
    """Drives supervised agents to the desired state, a few at a time."""

    def __init__(
        self,
        fleet: Fleet,
        store: DesiredStore,
        clock: Clock,
        send: Any,  # (agent_id, message) -> None
        *,
        share: float = 0.0,
        drain_timeout: float = 60.0,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.clock = clock
        self.send = send
        self.share = share
        self.drain_timeout = drain_timeout
        self._seen: tuple[int, int] | None = None  # (generation, fleet.membership)
        self._waiting = False  # an agent drains and has not been told to apply yet

    def tick(self, force: bool = False) -> bool:
        """Run after every change of the fleet: finish changes, start new ones, send
        Apply to drained agents. ``True`` if an agent came back into service.

        Cheap on the request path: unless agents joined, left, reported or drain,
        or a drained agent waits for its requests to finish, there is nothing to do.
        ``force`` (the periodic call) also checks drain timeouts.
        """
        generation, state = self.store.generation, self.store.state
        if state is None:
            return False
        seen = (generation, self.fleet.membership)
        if not force and seen == self._seen and not self._waiting:
            return False
        now = self.clock.now()
        returned = False
        for backend in list(self.fleet):
            if backend.cordoned and backend.apply_sent == generation and done(backend, generation):
                self.fleet.uncordon(backend.id)
                returned = True
                if backend.failed_generation == generation:
                    log.warning(
                        "%s could not apply generation %d: rollout halted", backend.name, generation
                    )
                else:
                    log.info("%s runs generation %d", backend.name, generation)
        for backend_id in plan(self.fleet, generation, self.share):
            backend = self.fleet.cordon(backend_id, now)
            log.info("draining %s for generation %d", backend.name, generation)
        waiting = False
        for backend in list(self.fleet):
            if backend.apply_sent != generation and ready_to_apply(
                backend, now, self.drain_timeout
            ):
                backend.apply_sent = generation
                log.info("%s drained: applying generation %d", backend.name, generation)
                self.send(backend.id, m.Apply(generation, state, self.drain_timeout))
            elif backend.cordoned and backend.apply_sent != generation:
                waiting = True
        self._seen = (generation, self.fleet.membership)
        self._waiting = waiting
        return returned

    def status(self) -> dict[str, Any]:
        generation = self.store.generation
        backends = [
            {
                "name": a.name,
                "id": a.id,
                "applied_generation": a.applied_generation,
                "matches": a.applied_generation == generation,
                "changing": a.cordoned or a.applying,
                "failed_generation": a.failed_generation,
            }
            for a in self.fleet
            if a.supervised
        ]
        return {
            "generation": generation,
            "desired": msgspec.to_builtins(self.store.state) if self.store.state else None,
            "halted": halted(self.fleet, generation),
            "agents": backends,
        }
