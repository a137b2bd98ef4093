"""Dynamic batching: concurrent requests to one model become one compiled call.

A compiled model call costs nearly the same for one row as for eight (the weights are read
once, the Python and dispatch overhead is paid once), so a server answering requests one by
one wastes most of its time. ``Batcher.submit`` queues a request and awaits its answer; a
collector task takes the first waiting request, gathers more for at most ``window_ms`` or until
``max_batch``, and runs the model's ``stages`` on their worker threads. While a batch runs, the
next one gathers, so under load batches fill by themselves and an idle server answers a lone
request after one window at most.

``stages`` is ``[(function, executor), ...]``: the first takes the batch's payloads, each next
one the previous one's output, the last returns one result per payload (an exception standing
for that request's error). Each executor has one thread, so a stage never overlaps itself and a
catalogue update run on the first stage's thread never overlaps a search. With two stages the
next batch's first stage runs while this batch's second does: search puts its encoder and
graph (compiled and native code, which release the GIL) in the first and its Python feature
code in the second, so both cores work. At most ``len(stages)`` batches are in flight.
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


Stage = tuple[Callable[[Any], Any], ThreadPoolExecutor]


class Batcher:
    def __init__(self, name: str, stages: Sequence[Stage], *, max_batch: int, window_ms: float,
                 observe: Callable[[str, int, float, list[float]], None] | None = None):
        if max_batch < 1 or window_ms < 0 or not stages:
            raise ValueError(f"{name}: max_batch must be >= 1, window_ms >= 0 and stages non-empty, got "
                             f"{max_batch}, {window_ms} and {len(stages)} stages")
        self.name, self.stages, self.max_batch, self.window = name, list(stages), max_batch, window_ms / 1e3
        self.observe = observe
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._flying: asyncio.Semaphore | None = None
        self._batches: set[asyncio.Task] = set()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._flying = asyncio.Semaphore(len(self.stages))
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Answer what is queued, then stop (graceful shutdown)."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        await asyncio.gather(*self._batches)
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
            await self._flying.acquire()  # at most one batch per stage in flight
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
            started = time.perf_counter()
            try:  # the first stage before the next batch gathers: it owns the first stage's thread
                value = await loop.run_in_executor(self.stages[0][1], self.stages[0][0], [p for p, _, _ in batch])
            except Exception as error:  # the whole call failed: every request in it hears why
                value = error
            task = loop.create_task(self._finish(loop, batch, value, started))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _finish(self, loop: asyncio.AbstractEventLoop, batch: list, value: Any, started: float) -> None:
        try:
            for function, executor in self.stages[1:]:
                if isinstance(value, Exception):
                    break
                try:
                    value = await loop.run_in_executor(executor, function, value)
                except Exception as error:
                    value = error
        finally:
            self._flying.release()
        results = [value] * len(batch) if isinstance(value, Exception) else value
        if len(results) != len(batch):
            results = [RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")] * len(batch)
        if self.observe is not None:
            self.observe(self.name, len(batch), time.perf_counter() - started, [started - q for _, _, q in batch])
        for (_, future, _), result in zip(batch, results, strict=True):
            if future.done():  # the request timed out or its client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
