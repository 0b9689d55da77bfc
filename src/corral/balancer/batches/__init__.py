"""OpenAI's Batch API, run on the fleet's idle capacity (docs/batch.md).

- :mod:`.wire`: the formats (input lines, output lines, multipart), pure;
- :mod:`.store`: files and batches in SQLite and on disk under ``--data-dir``;
- :mod:`.runner`: runs lines through the inference listener's own handler at
  ``X-Corral-Priority: batch``, at bounded concurrency;
- :mod:`.api`: the ``/v1/files`` and ``/v1/batches`` routes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.balancer.batches.api import BatchApi
from corral.balancer.batches.runner import BatchRunner, Collected, Handler
from corral.balancer.batches.store import BatchStore, StoreError

__all__ = ["BatchApi", "BatchRunner", "BatchService", "BatchStore", "Collected", "StoreError"]


class BatchService:
    """The store, the runner and the routes of one balancer.

    Raises :class:`OSError` or :class:`sqlite3.Error` when ``data_dir`` cannot be used."""

    def __init__(self, data_dir: Path, *, concurrency: int) -> None:
        self.store = BatchStore(data_dir)
        self.runner = BatchRunner(self.store, concurrency=concurrency)
        self.api = BatchApi(self.store, self.runner)

    def start(self, handle: Handler) -> None:
        """Run lines through ``handle`` (the inference listener's handler)."""
        self.runner.handle = handle
        self.runner.start()

    async def stop(self, grace: float) -> None:
        await self.runner.stop(grace)
        self.store.close()

    def listing(self, limit: int = 50) -> dict[str, Any]:
        """Recent batches for the management API and the dashboard."""
        data, more = self.store.batches(limit)
        return {"batches": data, "has_more": more, "lines_in_flight": self.runner.in_flight}
