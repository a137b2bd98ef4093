"""Dynamic batching: concurrent requests to one model become one compiled call.

A compiled model call costs nearly the same for one row as for eight (the weights are read
once, the Python and dispatch overhead is paid once), so a server answering requests one by
one wastes most of its time. ``Batcher.submit`` queues a request and awaits its answer; a
collector task takes the first waiting request, gathers more for at most ``window_ms`` or until
``max_batch``, and runs ``handle(payloads) -> results`` on the model's worker thread. While a
batch runs, the next one gathers, so under load batches fill by themselves and an idle server
answers a lone request after one window at most.

Each model has one worker thread: model calls and catalogue updates of one run never overlap
(an HNSW graph cannot be searched while it grows), and the event loop stays free for I/O.
``handle`` returns one result per payload, an exception standing for that request's error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def padded_rows(n: int) -> int:
    """The power of two a batch of ``n`` is padded to: a few shapes, each compiled once."""
    return 1 << max(n - 1, 0).bit_length()


class Batcher:
    def __init__(self, name: str, handle: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int,
                 window_ms: float, executor: ThreadPoolExecutor, observe: Callable[[str, int, float, list[float]], None] | None = None):
        if max_batch < 1 or window_ms < 0:
            raise ValueError(f"{name}: max_batch must be >= 1 and window_ms >= 0, got {max_batch} and {window_ms}")
        self.name, self.handle, self.max_batch, self.window = name, handle, max_batch, window_ms / 1e3
        self.executor, self.observe = executor, observe
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Answer what is queued, then stop (graceful shutdown)."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None

    async def submit(self, payload: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((payload, future, time.perf_counter()))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        payloads = [p for p, _, _ in batch]
        started = time.perf_counter()
        waits = [started - queued for _, _, queued in batch]
        try:
            results = await loop.run_in_executor(self.executor, self.handle, payloads)
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")
        except Exception as error:  # the whole call failed: every request in it hears why
            results = [error] * len(batch)
        if self.observe is not None:
            self.observe(self.name, len(batch), time.perf_counter() - started, waits)
        for (_, future, _), result in zip(batch, results, strict=True):
            if future.done():  # the request timed out or its client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
