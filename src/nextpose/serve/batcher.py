"""Requests' images through long-lived engine runs, so that the crops of concurrent requests
share the network's batches.

One :meth:`~nextpose.engine.Engine.run` per flip setting and decoding stays open for the life of
the service, fed by a queue of tasks (decoded images with validated boxes). It runs a batch as
soon as ``max_batch`` crops are waiting, or when the oldest waiting crop has waited ``max_wait``
seconds. Each request gets a :class:`~concurrent.futures.Future` of its
:class:`~nextpose.Poses`; a request whose image fails gets its own error and never affects the
others.
"""

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any

import numpy as np

from ..config import check_decode
from ..engine import Detector, Engine, Result, Task
from ..errors import InputError, ServiceBusyError
from ..predictor import PoseEstimator
from ..structures import Poses

log = logging.getLogger("nextpose")

_CLOSE = None  # what a feed gets when the service closes
_STALE = object()  # wakes the reader of a failed run, which waits on the feed
How = tuple[bool, str]  # (flip test, decoding) of an engine run


class Batcher:
    """Dynamic batching of pose requests over one :class:`~nextpose.engine.Engine`.

    Args:
        estimator: the model and its run options (device, backend, precision).
        detector: person boxes for requests that give none; None: the whole image.
        max_batch: crops per network batch, at most.
        max_wait: seconds the first crop of a partial batch waits for more before it runs.
        max_queue: requests accepted and not yet answered, at most; more raise
            :class:`~nextpose.errors.ServiceBusyError`.
    """

    def __init__(
        self,
        estimator: PoseEstimator,
        detector: Detector | None = None,
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_queue: int = 256,
    ):
        if max_batch < 1 or max_queue < 1 or not max_wait >= 0:
            raise InputError(
                f"max_batch and max_queue must be >= 1 and max_wait >= 0, not {max_batch}, "
                f"{max_queue}, {max_wait}"
            )
        self.engine = estimator.engine(detector, batch_size=max_batch)
        self._estimator, self._detector, self._max_batch = estimator, detector, max_batch
        # A request's other decoding runs where a model loaded for it would (DARK: eager).
        self._engines = {check_decode(estimator.config.inference.decode): self.engine}
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.answered = 0  # requests finished (poses or error)
        self.abandoned = 0  # requests their clients stopped waiting for
        self._lock = threading.Lock()
        self._waiting = 0  # accepted and not finished
        self._closed = False
        # One engine run per (flip test, decoding): its feed, thread, taken tasks, run count.
        self._feeds: dict[How, queue.SimpleQueue] = {}
        self._threads: dict[How, threading.Thread] = {}
        self._running: dict[How, set[Future]] = {}  # taken by the engine, not finished
        self._runs: dict[How, int] = {}

    def submit(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None,
        flip: bool,
        name: str = "the image",
        decode: str | None = None,
    ) -> "Future[Poses]":
        """Queue one image ((H, W, 3) uint8 RGB) with its (N, 5) xyxy + score boxes (None: the
        detector's, or the whole image), flip test on or off, decoded by ``decode`` (``msra``,
        ``dark``; None: the model's); the future gives its poses or its error."""
        how = (flip, check_decode(decode or self.engine.config.inference.decode))
        future: Future[Poses] = Future()
        with self._lock:
            if self._closed:
                raise ServiceBusyError("the service is shutting down")
            if self._waiting >= self.max_queue:
                raise ServiceBusyError(
                    f"{self._waiting} requests are waiting, as many as the service queues "
                    f"(--max-queue {self.max_queue}); try again shortly"
                )
            self._waiting += 1
            future.add_done_callback(self._cancelled)
            self._feed(how).put(Task(image, boxes, name=name, tag=future))
        return future

    def _cancelled(self, future: Future) -> None:
        """A request given up by its client (timeout) frees its place in the queue at once
        (if it still waits there, the engine skips it when it comes to it)."""
        if future.cancelled():
            with self._lock:
                self._waiting -= 1
                self.abandoned += 1

    @property
    def waiting(self) -> int:
        """Requests accepted and not yet answered."""
        return self._waiting

    def stats(self) -> dict[str, Any]:
        """Batches run so far: ``batches``, ``crops``, ``mean_batch`` (crops per batch),
        ``batch_sizes`` ({crops: batches}), ``answered`` and ``waiting`` requests, and those
        ``abandoned`` by their clients (timeouts: not computed if they had not started)."""
        sizes: dict[int, int] = {}
        for engine in list(self._engines.values()):
            # one C-level copy: safe beside the engine thread
            for k, v in dict(engine.batch_sizes).items():
                sizes[k] = sizes.get(k, 0) + v
        batches = sum(sizes.values())
        crops = sum(k * v for k, v in sizes.items())
        return {
            "answered": self.answered,
            "waiting": self._waiting,
            "abandoned": self.abandoned,
            "batches": batches,
            "crops": crops,
            "mean_batch": crops / batches if batches else 0.0,
            "batch_sizes": {str(k): sizes[k] for k in sorted(sizes)},
        }

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests, finish those accepted, and stop the engine runs."""
        with self._lock:
            self._closed = True
            for feed in self._feeds.values():
                feed.put(_CLOSE)
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    # -- the engine runs ----------------------------------------------------------------------

    def _feed(self, how: How) -> queue.SimpleQueue:
        """The queue of the run for ``how``, started on first use (under the lock)."""
        if how not in self._feeds:
            self._feeds[how] = queue.SimpleQueue()
            self._running[how] = set()
            self._runs[how] = 0
            name = f"nextpose-serve-{'flip' if how[0] else 'noflip'}-{how[1]}"
            thread = threading.Thread(target=self._serve, args=(how,), daemon=True, name=name)
            self._threads[how] = thread
            thread.start()
        return self._feeds[how]

    def _tasks(self, how: How, run: int, first: Task | None = None) -> Iterator[Task]:
        feed, running = self._feeds[how], self._running[how]
        while True:
            task, first = (feed.get() if first is None else first), None
            if task is _STALE:
                if run != self._runs[how]:
                    return
                continue  # the failed run's reader had ended already
            if run != self._runs[how]:  # the reader of a failed run: leave it to the new one
                feed.put(task)
                return
            if task is _CLOSE:
                return
            if task.tag.cancelled():  # its client stopped waiting (timeout): skip its crops
                continue
            running.add(task.tag)
            yield task

    def _serve(self, how: How) -> None:
        flip, decode = how
        first: Task | None = None  # taken from the feed for the next run, before it started
        while True:
            run = self._runs[how]
            engine = None
            try:
                engine = self._engine(decode)
                tasks = self._tasks(how, run, first)
                for result in engine.run(tasks, flip, max_wait=self.max_wait, decode=decode):
                    self._answer(how, result)
                return  # closed, everything answered
            except Exception as e:  # a bug: fail the requests in flight, keep serving
                log.exception("the pose service's engine run failed; starting a new one")
                self._runs[how] = run + 1
                self._feeds[how].put(_STALE)
                failed = list(self._running[how])
                if first is not None and first.tag not in failed and not first.tag.done():
                    failed.append(first.tag)  # the run failed before taking it
                first = None
                for future in failed:
                    self._settle(how, future, error=e)
                if engine is None or not failed:  # not again before the next request
                    first = self._after_failure(how, e)
                    if first is None:
                        return  # closed

    def _after_failure(self, how: How, error: Exception) -> Task | None:
        """Fail the requests waiting for a run that could not start (its engine could not be
        made) or failed before taking any, then wait for the next request, for the next run to
        try; None: closed."""
        feed = self._feeds[how]
        with contextlib.suppress(queue.Empty):
            while True:
                task = feed.get_nowait()
                if task is _CLOSE:
                    return None
                if task is not _STALE:
                    self._settle(how, task.tag, error=error)
        while True:
            task = feed.get()
            if task is _CLOSE:
                return None
            if task is not _STALE and not task.tag.cancelled():
                return task

    def _engine(self, decode: str) -> Engine:
        """The engine for ``decode`` (made on its first request, in that decoding's thread)."""
        engine = self._engines.get(decode)
        if engine is None:
            est = self._estimator.for_decode(decode)
            engine = est.engine(self._detector, batch_size=self._max_batch)
            with self._lock:
                engine = self._engines.setdefault(decode, engine)
        return engine

    def _answer(self, how: How, result: Result) -> None:
        if result.error is not None:
            self._settle(how, result.task.tag, error=result.error)
        else:
            self._settle(how, result.task.tag, poses=result.poses)

    def _settle(
        self,
        how: How,
        future: "Future[Poses]",
        poses: Poses | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            self._running[how].discard(future)
        try:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(poses)  # type: ignore[arg-type]
        except InvalidStateError:  # cancelled: its client stopped waiting (counted then)
            return
        with self._lock:
            self._waiting -= 1
            self.answered += 1
