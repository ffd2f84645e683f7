"""The micro-batcher of ``clip-zoo serve``: one worker thread owns the model and runs every forward.

Request handlers :meth:`Batcher.submit` their inputs (texts, or preprocessed ``(3, H, W)`` images)
and await the returned futures. The worker takes the oldest waiting input, then keeps collecting
inputs of the same kind until it holds ``max_batch`` of them or ``max_wait`` seconds have passed
since that oldest input arrived, and runs one forward for all of them. The queue is bounded
(``max_queue`` inputs): a request that does not fit as a whole is refused with :class:`QueueFull`
(the server answers ``503`` + ``Retry-After``), so memory stays bounded under overload.

:meth:`Batcher.close` stops accepting and lets the worker finish every input already queued.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["Batcher", "QueueFull", "NotReady", "Closed"]

#: Test hook (set by tests, never read from the environment): seconds the worker sleeps before each forward.
_test_batch_delay = 0.0


class QueueFull(Exception):
    """The bounded queue has no room for the request's inputs."""


class NotReady(Exception):
    """The model is still loading."""


class Closed(Exception):
    """The server is shutting down and accepts no more inputs."""


class _Item:
    __slots__ = ("kind", "value", "future", "t0")

    def __init__(self, kind: str, value: Any) -> None:
        self.kind, self.value, self.future, self.t0 = kind, value, Future(), time.monotonic()


class Batcher:
    """Merge concurrent inputs into batched forwards on a single worker thread.

    ``load()`` runs first on the worker and returns the model object; ``forward(model, kind,
    values)`` returns one result per value (an ``(N, ...)`` array or a list). ``on_batch(n, seconds)``
    is called after each forward (metrics)."""

    def __init__(self, load: Callable[[], Any], forward: Callable[[Any, str, list], Sequence],
                 max_batch: int = 64, max_wait: float = 0.005, max_queue: int = 256,
                 on_batch: Optional[Callable[[int, float], None]] = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self._load, self._forward, self._on_batch = load, forward, on_batch
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.model: Any = None
        self.load_error: Optional[BaseException] = None
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clip-zoo-model", daemon=False)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        """Inputs waiting for a forward."""
        return len(self._queue)

    def submit(self, kind: str, values: Sequence[Any]) -> list[Future]:
        """Queue ``values`` (all of ``kind``) as a whole, or raise QueueFull / NotReady / Closed."""
        with self._cond:
            if self._closing:
                raise Closed()
            if not self.ready.is_set():
                raise NotReady()
            if len(self._queue) + len(values) > self.max_queue:
                raise QueueFull()
            items = [_Item(kind, v) for v in values]
            self._queue.extend(items)
            self._cond.notify()
        return [it.future for it in items]

    def close(self, timeout: Optional[float] = None) -> None:
        """Accept nothing more, finish every queued input, and stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------- worker thread
    def _run(self) -> None:
        try:
            self.model = self._load()
        except BaseException as err:  # reported by /readyz and the server log
            self.load_error = err
            return
        self.ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _same_kind(self, kind: str) -> int:
        return sum(1 for it in self._queue if it.kind == kind)

    def _next_batch(self) -> Optional[list[_Item]]:
        """Wait for the oldest input, then for ``max_batch`` of its kind or its ``max_wait`` deadline."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            kind = self._queue[0].kind
            deadline = self._queue[0].t0 + self.max_wait
            while not self._closing and self._same_kind(kind) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, rest = [], deque()
            while self._queue:
                it = self._queue.popleft()
                (batch if it.kind == kind and len(batch) < self.max_batch else rest).append(it)
            self._queue = rest
            return batch

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [it for it in batch if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        if _test_batch_delay:
            time.sleep(_test_batch_delay)
        start = time.perf_counter()
        try:
            out = self._forward(self.model, live[0].kind, [it.value for it in live])
            if len(out) != len(live):
                raise RuntimeError(f"forward returned {len(out)} results for {len(live)} inputs")
        except BaseException as err:  # every waiting request gets the error (a 500 without details)
            for it in live:
                it.future.set_exception(err)
            return
        finally:
            if self._on_batch is not None:
                self._on_batch(len(live), time.perf_counter() - start)
        for it, row in zip(live, out):
            it.future.set_result(np.asarray(row) if isinstance(out, np.ndarray) else row)
