"""Group commit: many small writes from concurrent tasks share one transaction.

A bulk power operation on 1,000 machines records two facts per machine (started, finished).
As one transaction each, they queue on SQLite's single writer (and cost a PostgreSQL commit
each), which made the database, not the BMCs, the bottleneck of ``bench/power.py``.

A :class:`GroupCommit` is awaited like a write: ``await writer(arg)`` returns once ``arg`` is
committed, with its own result. While one transaction is in flight, new calls queue; the next
transaction takes everything queued and hands the whole list to ``write_many(session, args)``,
which can then use one statement per kind of change (``executemany``) instead of one per
call. A lone call costs one transaction, as before; under load the batch grows by itself (no
timer, no added latency). If a batch fails (a stale revision, a missing row), each of its
calls is written again alone, so one bad call cannot fail the others; its own exception is
raised to its own caller.

:func:`calls` is the general form: each argument is a function of the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.inventory.db import Database

log = logging.getLogger(__name__)
A = TypeVar("A")
R = TypeVar("R")


class GroupCommit(Generic[A, R]):
    """Queues ``arg``s from one event loop and writes them in shared transactions."""

    def __init__(
        self, db: Database, write_many: Callable[[Session, list[A]], list[R]], max_batch: int = 500
    ) -> None:
        self.db = db
        self.write_many = write_many
        self.max_batch = max_batch
        self._queue: list[tuple[A, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.transactions = 0
        """Committed transactions so far (tests and benchmarks read it)."""

    async def __call__(self, arg: A) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((arg, fut))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                outcomes = await run_in_threadpool(self._write, [arg for arg, _ in batch])
            except asyncio.CancelledError:  # shutting down: no caller may wait forever
                for _, fut in [*batch, *self._queue]:
                    fut.cancel()
                raise
            for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
                if fut.done():  # the caller was cancelled
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _write(self, args: list[A]) -> list[tuple[bool, Any]]:
        try:
            with self.db.write() as s:
                results = self.write_many(s, args)
            self.transactions += 1
            return [(True, r) for r in results]
        except Exception as exc:  # noqa: BLE001 - isolate the failing call below
            if len(args) == 1:
                return [(False, exc)]
            log.debug(
                "group commit of %d writes failed (%s); writing them one by one",
                len(args),
                type(exc).__name__,
            )
        outcomes: list[tuple[bool, Any]] = []
        for arg in args:
            try:
                with self.db.write() as s:
                    result = self.write_many(s, [arg])[0]
                self.transactions += 1
                outcomes.append((True, result))
            except Exception as exc:  # noqa: BLE001 - handed to that caller
                outcomes.append((False, exc))
        return outcomes


def _run_each(s: Session, fns: list[Callable[[Session], Any]]) -> list[Any]:
    return [fn(s) for fn in fns]


def calls(db: Database) -> GroupCommit[Callable[[Session], Any], Any]:
    """A group commit of arbitrary writes: ``await writer(lambda s: ...)``."""
    return GroupCommit(db, _run_each)
