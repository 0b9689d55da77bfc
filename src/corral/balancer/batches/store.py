"""Where the Batch API keeps its state: SQLite and plain files under ``--data-dir``.

Layout: ``<data-dir>/corral.sqlite3`` (tables ``files``, ``batches``, ``lines``) and
``<data-dir>/files/<file id>`` (uploaded and produced files, as bytes).

The rule that makes a restart lose nothing and do nothing twice: a line's result is
written in the same transaction that counts it (:meth:`BatchStore.record`), and only
if it has none yet. A batch's output and error files are written from the recorded
results, to a temporary name renamed into place, before the transaction that marks the
batch done; a crash between the two writes the same files again on restart.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives
the process dying (a power cut may lose the last ones, which are then run again).
All methods are synchronous and short; the caller runs them on the event loop.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.balancer.batches.wire import FINAL, Line, LineError, error_line
from corral.core.queueing.classes import DEFAULT_TENANT

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, seq INTEGER NOT NULL,
    tenant TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, status TEXT NOT NULL,
    output_file_id TEXT, error_file_id TEXT, errors TEXT, metadata TEXT,
    created_at INTEGER NOT NULL, in_progress_at INTEGER, expires_at INTEGER,
    finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER,
    total INTEGER NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL,
    tenant TEXT
);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL,
    body BLOB NOT NULL, ok INTEGER, result TEXT,
    PRIMARY KEY (batch_id, idx)
) WITHOUT ROWID;
"""

_OWNED = f"(? IS NULL OR COALESCE(tenant, '{DEFAULT_TENANT}') = ?)"
"""The row is the tenant's given twice as a parameter (None: anyone's). A row without a
tenant (no keys were asked, or a database older than tenants) is the default one's."""

_BATCH_TIMES = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class StoreError(Exception):
    """A Batch API object that cannot be found or used: ``status`` is the HTTP status
    to answer (404, 400, 409)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Pending:
    """A line to run: its batch, index, custom_id, endpoint and body, and the tenant
    it runs as (its batch's creator's; None: the default one)."""

    batch_id: str
    index: int
    custom_id: str
    endpoint: str
    body: bytes
    tenant: str | None = None


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def line_id(batch_id: str, index: int) -> str:
    """The ``batch_req_`` id of a line: stable, so a line run twice has one id."""
    return f"batch_req_{batch_id.removeprefix('batch_')}_{index}"


class BatchStore:
    """The files and batches of one balancer, in ``data_dir``.

    Raises :class:`OSError` or :class:`sqlite3.Error` when the directory or the database
    cannot be opened."""

    def __init__(self, data_dir: Path, now: Callable[[], float] = time.time) -> None:
        self.dir = data_dir
        self.files_dir = data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.now = now
        self.db = sqlite3.connect(data_dir / "corral.sqlite3", isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        for table in ("batches", "files"):
            columns = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if "tenant" not in columns:  # a database made before they kept their tenant
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN tenant TEXT")

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    def _seq(self, table: str) -> int:
        row = self.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ files
    def save(self, data: bytes) -> str:
        """Write an uploaded file's bytes to disk (any thread; :meth:`add_file` then
        makes it a file); its new id."""
        file_id = _new_id("file-")
        self._write(file_id, data)
        return file_id

    def add_file(
        self, file_id: str, data: bytes, filename: str, purpose: str, tenant: str | None = None
    ) -> dict[str, Any]:
        """Make saved bytes a file of ``tenant`` (None: the default one); its OpenAI
        ``File`` object."""
        with self._tx():
            self.db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    file_id,
                    len(data),
                    int(self.now()),
                    filename,
                    purpose,
                    self._seq("files"),
                    tenant,
                ),
            )
        return self.file(file_id)

    def _write(self, file_id: str, data: bytes) -> None:
        path = self.files_dir / file_id
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def file(self, file_id: str, owner: str | None = None) -> dict[str, Any]:
        """A file's OpenAI ``File`` object. Raises :class:`StoreError` (404), also
        when ``owner`` (a tenant's name; None: anyone) is not the file's tenant: another
        tenant's files are not there for it, as with OpenAI's projects."""
        row = self.db.execute(
            f"SELECT * FROM files WHERE id = ? AND {_OWNED}", (file_id, owner, owner)
        ).fetchone()
        if row is None:
            raise StoreError(f"No such File object: {file_id}")
        return {
            "id": row["id"],
            "object": "file",
            "bytes": row["bytes"],
            "created_at": row["created_at"],
            "filename": row["filename"],
            "purpose": row["purpose"],
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }

    def files(self, purpose: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Every file (of ``owner``: see :meth:`file`), newest first."""
        rows = self.db.execute(
            f"SELECT id, purpose FROM files WHERE {_OWNED} ORDER BY seq DESC", (owner, owner)
        ).fetchall()
        return [self.file(r["id"]) for r in rows if purpose is None or r["purpose"] == purpose]

    def content(self, file_id: str, owner: str | None = None) -> bytes:
        """A file's bytes. Raises :class:`StoreError` (404; see :meth:`file`)."""
        self.file(file_id, owner)
        try:
            return (self.files_dir / file_id).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"the content of {file_id} is gone from the data directory") from None

    def delete_file(self, file_id: str, owner: str | None = None) -> dict[str, Any]:
        """Delete a file; OpenAI's deletion object. Raises :class:`StoreError` (404;
        see :meth:`file`)."""
        self.file(file_id, owner)
        with self._tx():
            self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        (self.files_dir / file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # ---------------------------------------------------------------- batches
    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        window: str,
        window_s: int,
        metadata: dict[str, str] | None,
        lines: list[Line],
        errors: list[LineError],
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """A new batch: ``in_progress`` with its lines, or ``failed`` with ``errors``;
        its lines run as ``tenant`` (None: the default one)."""
        batch_id = _new_id("batch_")
        now = int(self.now())
        failed = bool(errors)
        with self._tx():
            self.db.execute(
                "INSERT INTO batches (id, seq, endpoint, input_file_id, completion_window,"
                " status, errors, metadata, created_at, in_progress_at, expires_at, failed_at,"
                " total, completed, failed, tenant) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,0,0,?)",
                (
                    batch_id,
                    self._seq("batches"),
                    endpoint,
                    input_file_id,
                    window,
                    "failed" if failed else "in_progress",
                    json.dumps([e.json() for e in errors]) if failed else None,
                    json.dumps(metadata) if metadata is not None else None,
                    now,
                    None if failed else now,
                    now + window_s,
                    now if failed else None,
                    0 if failed else len(lines),
                    tenant,
                ),
            )
            if not failed:
                self.db.executemany(
                    "INSERT INTO lines (batch_id, idx, custom_id, body) VALUES (?, ?, ?, ?)",
                    ((batch_id, x.index, x.custom_id, x.body) for x in lines),
                )
        return self.batch(batch_id)

    def batch(self, batch_id: str, owner: str | None = None) -> dict[str, Any]:
        """A batch's OpenAI ``Batch`` object. Raises :class:`StoreError` (404), also
        when ``owner`` is not its tenant (see :meth:`file`)."""
        row = self.db.execute(
            f"SELECT * FROM batches WHERE id = ? AND {_OWNED}", (batch_id, owner, owner)
        ).fetchone()
        if row is None:
            raise StoreError(f"No such Batch object: {batch_id}")
        return _batch_json(row)

    def batches(
        self, limit: int = 20, after: str | None = None, owner: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Batches (of ``owner``: see :meth:`file`) newest first, ``limit`` of them after
        the batch ``after``, and whether there are more. Raises :class:`StoreError`
        (404) when ``after`` names no batch of ``owner``."""
        seq = None
        if after is not None:
            found = self.db.execute(
                f"SELECT seq FROM batches WHERE id = ? AND {_OWNED}", (after, owner, owner)
            ).fetchone()
            if found is None:
                raise StoreError(f"No such Batch object: {after}")
            seq = found["seq"]
        rows = self.db.execute(
            f"SELECT * FROM batches WHERE (? IS NULL OR seq < ?) AND {_OWNED}"
            " ORDER BY seq DESC LIMIT ?",
            (seq, seq, owner, owner, limit + 1),
        ).fetchall()
        return [_batch_json(r) for r in rows[:limit]], len(rows) > limit

    def status(self, batch_id: str, owner: str | None = None) -> str:
        row = self.db.execute(
            f"SELECT status FROM batches WHERE id = ? AND {_OWNED}", (batch_id, owner, owner)
        ).fetchone()
        if row is None:
            raise StoreError(f"No such Batch object: {batch_id}")
        return str(row["status"])

    def cancel(self, batch_id: str, owner: str | None = None) -> dict[str, Any]:
        """Mark a batch ``cancelling`` (the runner ends it). Raises :class:`StoreError`:
        404 (see :meth:`batch`), or 409 when the batch has already ended."""
        status = self.status(batch_id, owner)
        if status in ("in_progress", "validating"):
            with self._tx():
                self.db.execute(
                    "UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ?",
                    (int(self.now()), batch_id),
                )
        elif status != "cancelling":
            raise StoreError(f"Cannot cancel a batch with status '{status}'.", 409)
        return self.batch(batch_id)

    def expire_due(self) -> list[str]:
        """Batches whose completion window has passed, marked ``expired`` later by
        :meth:`finish`; their ids."""
        rows = self.db.execute(
            "SELECT id FROM batches WHERE status = 'in_progress' AND expires_at <= ?",
            (int(self.now()),),
        ).fetchall()
        return [r["id"] for r in rows]

    # ------------------------------------------------------------------ lines
    def pending(self, batch_id: str, start: int, limit: int) -> list[Pending]:
        """Lines of a running batch from index ``start`` with no result yet."""
        rows = self.db.execute(
            "SELECT l.idx, l.custom_id, l.body, b.endpoint, b.tenant FROM lines l JOIN batches b"
            " ON b.id = l.batch_id WHERE l.batch_id = ? AND l.idx >= ? AND l.result IS NULL"
            " ORDER BY l.idx LIMIT ?",
            (batch_id, start, limit),
        ).fetchall()
        return [
            Pending(batch_id, r["idx"], r["custom_id"], r["endpoint"], r["body"], r["tenant"])
            for r in rows
        ]

    def running(self) -> list[tuple[str, str | None]]:
        """Batches whose lines may run, oldest first, each with the tenant its lines
        run as (None: the default one)."""
        rows = self.db.execute(
            "SELECT id, tenant FROM batches WHERE status = 'in_progress' ORDER BY seq"
        ).fetchall()
        return [(r["id"], r["tenant"]) for r in rows]

    def unfinished(self) -> list[tuple[str, str]]:
        """Batches not yet in a final status, with their status, oldest first."""
        marks = ",".join("?" * len(FINAL))
        rows = self.db.execute(
            f"SELECT id, status FROM batches WHERE status NOT IN ({marks}) ORDER BY seq",
            tuple(FINAL),
        ).fetchall()
        return [(r["id"], r["status"]) for r in rows]

    def record(self, batch_id: str, index: int, ok: bool, result: str) -> bool:
        """Record a line's result and count it, in one transaction, unless it has one:
        whether it was recorded now."""
        with self._tx():
            cur = self.db.execute(
                "UPDATE lines SET ok = ?, result = ? WHERE batch_id = ? AND idx = ?"
                " AND result IS NULL",
                (int(ok), result, batch_id, index),
            )
            if cur.rowcount != 1:
                return False
            column = "completed" if ok else "failed"
            self.db.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (batch_id,))
        return True

    def left(self, batch_id: str) -> int:
        """Lines of a batch without a result."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM lines WHERE batch_id = ? AND result IS NULL", (batch_id,)
        ).fetchone()
        return int(row[0])

    def finish(self, batch_id: str, status: str) -> dict[str, Any]:
        """End a batch as ``completed``, ``cancelled`` or ``expired``: write its output
        and error files from the recorded results (lines without one go to the error
        file as ``batch_cancelled`` or ``batch_expired``), then mark it."""
        now = int(self.now())
        if self.status(batch_id) in FINAL:
            return self.batch(batch_id)
        with self._tx():
            self.db.execute(
                "UPDATE batches SET finalizing_at = COALESCE(finalizing_at, ?) WHERE id = ?",
                (now, batch_id),
            )
        code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(status)
        output, errors = bytearray(), bytearray()
        for row in self._lines(batch_id):
            if row["result"] is not None:
                (output if row["ok"] else errors).extend(row["result"].encode() + b"\n")
            elif code is not None:
                message = (
                    "This request was not run: the batch was cancelled."
                    if status == "cancelled"
                    else "This request could not be executed before the completion window expired."
                )
                line = error_line(line_id(batch_id, row["idx"]), row["custom_id"], code, message)
                errors.extend(line.encode() + b"\n")
        # Ids derived from the batch's: writing them again after a crash replaces them.
        out_id = f"file-{batch_id.removeprefix('batch_')}-output" if output else None
        err_id = f"file-{batch_id.removeprefix('batch_')}-errors" if errors else None
        for file_id, data in ((out_id, output), (err_id, errors)):
            if file_id is not None:
                self._write(file_id, bytes(data))
        tenant = self.db.execute("SELECT tenant FROM batches WHERE id = ?", (batch_id,)).fetchone()[
            "tenant"
        ]
        with self._tx():
            for file_id, data, name in (
                (out_id, output, "output"),
                (err_id, errors, "errors"),
            ):
                if file_id is not None:  # the batch's tenant's, as its results are
                    self.db.execute(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            file_id,
                            len(data),
                            now,
                            f"{batch_id}_{name}.jsonl",
                            "batch_output",
                            self._seq("files"),
                            tenant,
                        ),
                    )
            stamp = {
                "completed": "completed_at",
                "cancelled": "cancelled_at",
                "expired": "expired_at",
            }[status]
            self.db.execute(
                f"UPDATE batches SET status = ?, {stamp} = ?, output_file_id = ?,"
                " error_file_id = ? WHERE id = ?",
                (status, now, out_id, err_id, batch_id),
            )
            if code is not None:  # what never ran is counted as failed, as OpenAI does
                self.db.execute(
                    "UPDATE batches SET failed = total - completed WHERE id = ?", (batch_id,)
                )
        return self.batch(batch_id)

    def _lines(self, batch_id: str) -> Iterator[sqlite3.Row]:
        yield from self.db.execute(
            "SELECT idx, custom_id, ok, result FROM lines WHERE batch_id = ? ORDER BY idx",
            (batch_id,),
        )

    def __repr__(self) -> str:
        return f"<BatchStore {self.dir}>"


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _batch_json(row: sqlite3.Row) -> dict[str, Any]:
    errors = json.loads(row["errors"]) if row["errors"] else None
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        **{name: row[name] for name in _BATCH_TIMES},
        "request_counts": {
            "total": row["total"],
            "completed": row["completed"],
            "failed": row["failed"],
        },
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
    }
