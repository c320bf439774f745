"""Overlap reading, arithmetic and writing: a reader thread runs ahead, a writer thread follows behind.

torch kernels, ``os.preadv``, file writes and sha256 all release the GIL, so three threads keep the disk and
the cores busy at once. Buffers come from fixed pools and are reused: a merge touches the same few hundred
megabytes over and over instead of asking the kernel for fresh (page-faulting) memory for every chunk.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from cocktail_bot.memory import PREFETCH


class BufferPool:
    """``count`` byte buffers of ``nbytes`` each; ``take`` blocks until one is returned with ``give``."""

    def __init__(self, count: int, nbytes: int) -> None:
        self._free: queue.SimpleQueue[torch.Tensor | None] = queue.SimpleQueue()
        buffers = [torch.empty(nbytes, dtype=torch.uint8) for _ in range(count)]
        self._owned = frozenset(buffer.untyped_storage().data_ptr() for buffer in buffers)
        for buffer in buffers:
            self._free.put(buffer)

    def take(self, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
        """A reused buffer viewed as ``nbytes // itemsize`` elements of ``dtype``."""
        buffer = self._free.get()
        if buffer is None:  # closed: wake the next waiter too
            self._free.put(None)
            raise RuntimeError("the merge stopped")
        return buffer[:nbytes].view(dtype)

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a view of one of this pool's buffers."""
        return tensor.untyped_storage().data_ptr() in self._owned

    def give(self, tensor: torch.Tensor) -> None:
        """Return the buffer behind ``tensor`` (a view from ``take``)."""
        self._free.put(torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()))

    def close(self) -> None:
        """Make every waiting and future ``take`` fail, so threads blocked on the pool can finish."""
        self._free.put(None)


@dataclass(frozen=True)
class Task:
    """One piece of output: ``load`` runs on the reader thread, ``compute`` on the caller's, then ``write``.

    ``compute`` returns the bytes to write and a callback to run once they are written (returning a pooled
    buffer).
    """

    nbytes: int
    load: Callable[[], Any]
    compute: Callable[[Any], tuple[torch.Tensor, Callable[[], None] | None]]
    write: Callable[[torch.Tensor], None]


def _write_then_release(task: Task, values: torch.Tensor, release: Callable[[], None] | None) -> None:
    try:
        task.write(values)
    finally:
        if release is not None:
            release()


def run_tasks(
    tasks: Iterator[Task], on_progress: Callable[[int], None], pools: Sequence[BufferPool] = ()
) -> None:
    """Run every task in order; the first exception stops the run (closing ``pools``) and is raised here."""
    with ThreadPoolExecutor(1, "cocktail-read") as reader, ThreadPoolExecutor(1, "cocktail-write") as writer:
        reads: deque[tuple[Task, Future]] = deque()
        writes: deque[Future] = deque()
        try:
            for _ in range(PREFETCH):
                if (task := next(tasks, None)) is not None:
                    reads.append((task, reader.submit(task.load)))
            while reads:
                task, loaded = reads.popleft()
                if (following := next(tasks, None)) is not None:
                    reads.append((following, reader.submit(following.load)))
                values, release = task.compute(loaded.result())
                writes.append(writer.submit(_write_then_release, task, values, release))
                while len(writes) > PREFETCH:
                    writes.popleft().result()
                on_progress(task.nbytes)
            while writes:
                writes.popleft().result()
        except BaseException:
            for pool in pools:
                pool.close()
            raise
        finally:
            for _, future in reads:
                future.cancel()
            for future in writes:
                future.cancel()
