"""Queries that arrive together are encoded together.

The text tower costs about the same for one query as for a dozen, so a request does not
call it alone: it joins a queue, and one worker thread takes everything queued (up to
``max_batch``), encodes it in one batch and searches the index with all of it at once. Under light load a query waits for nothing;
under heavy load each encoder call serves many requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from queue import Empty, Queue
from typing import Any


class Batcher:
    """Run ``fn(items) -> one result per item`` over batches of items submitted
    concurrently, in a worker thread (the event loop stays free to accept requests)."""

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 64) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.batches = 0  # encoder calls made
        self.items = 0  # items encoded
        self._queue: Queue[tuple[Any, Future]] = Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="clipforge-batcher")
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except Empty:
                    break
            try:
                out = self.fn([item for item, _ in batch])
                self.batches += 1
                self.items += len(batch)
                for (_, fut), row in zip(batch, out, strict=True):
                    fut.set_result(row)
            except BaseException as e:  # every waiting request gets the error, none hangs
                for _, fut in batch:
                    fut.set_exception(e)

    async def __call__(self, item: Any) -> Any:
        fut: Future = Future()
        self._queue.put((item, fut))
        return await asyncio.wrap_future(fut)


__all__ = ["Batcher"]
