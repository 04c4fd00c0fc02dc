"""CPU parallelism for the plain-PyTorch path that does not stall when another process takes a core.

Used where the native helper does not run the work in torch's OpenMP team itself (see
``fastclip/csrc/cpu_math.cpp``): without the helper, with a helper built without OpenMP, and for
tensors it can't read in place.

torch parallelises one op at a time: every op on more than 32 K elements is an OpenMP parallel
region with a static split, and it ends only when each intra-op thread has done its share.  When
another process keeps a core busy, the thread on that core gets a time slice only now and then,
and every region waits for it: on a 2-core VM with one core busy, a region costs milliseconds
whatever its size (e.g. 2 000 small bf16 tensors: 3 regions, 4.7 ms quiet, 19 ms busy).

Here the work of a call is cut into independent *items* (a slice of a tensor to reduce or to
scale) that a few Python worker threads take one at a time from a shared list; each worker runs
its ops single-threaded, so no op opens a parallel region, and torch releases the GIL inside
each op, so the workers run in parallel.  A worker whose core is taken simply takes fewer items:
the call waits for a slow worker once, at its end, instead of at every op.

* ``run(items)`` -> the items' results, in order (the order never depends on which worker ran
  what, so results are bitwise reproducible).
* Workers: as many as ``torch.get_num_threads()`` of the calling thread; with one thread, or when
  the pool can't be made single-threaded, the items run inline.  The pool is made lazily, again
  after a fork (a child process has no threads), and again when the thread count changes.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_lock = threading.Lock()
_pool: tuple | None = None  # (pid, workers, executor or None when the pool can't be used)

#: below this many elements a call runs inline: no torch op on fewer opens a parallel region
#: (ATen's grain size), and handing the work to a thread would cost more than the work
INLINE_NUMEL = 32768


def _forget_pool_after_fork() -> None:
    global _lock, _pool
    _lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _single_threaded() -> None:
    torch.set_num_threads(1)


def _make_pool(workers: int):
    """A pool of ``workers`` threads whose torch ops run single-threaded, or None."""
    executor = ThreadPoolExecutor(workers, thread_name_prefix="fastclip-cpu", initializer=_single_threaded)
    # start every worker now (each waits at the barrier, so each task lands on a new thread) ...
    barrier = threading.Barrier(workers)
    counts = list(executor.map(lambda _: (barrier.wait(), torch.get_num_threads())[1], range(workers)))
    # ... then put back the process-wide default that the workers' set_num_threads(1) changed
    # (threads started later read it); the calling thread's own count is unchanged by this
    torch.set_num_threads(workers)
    if counts != [1] * workers:  # a torch whose thread count is not per thread (not OpenMP)
        executor.shutdown(wait=False)
        return None
    return executor


def _executor() -> tuple:
    """(pool, workers) for the calling thread's thread count; pool None: run inline."""
    global _pool
    workers = torch.get_num_threads()
    if workers <= 1:
        return None, 1
    pool = _pool
    if pool is None or pool[0] != os.getpid() or pool[1] != workers:
        with _lock:
            pool = _pool
            if pool is None or pool[0] != os.getpid() or pool[1] != workers:
                if pool is not None and pool[0] == os.getpid() and pool[2] is not None:
                    pool[2].shutdown(wait=False)
                _pool = pool = (os.getpid(), workers, _make_pool(workers))
    return pool[2], workers


def run(items: list, inline: bool = False) -> list:
    """Call every item (a function of no arguments) and return their results in order.

    ``inline``: run them in the calling thread (for work too small to hand over, see INLINE_NUMEL).
    """
    executor, workers = (None, 1) if inline or not items else _executor()
    if executor is None:
        return [item() for item in items]
    results = [None] * len(items)
    order = iter(range(len(items)))
    take = threading.Lock()

    def drain():
        while True:
            with take:
                i = next(order, None)
            if i is None:
                return
            results[i] = items[i]()

    tasks = [executor.submit(drain) for _ in range(min(workers, len(items)))]
    for task in tasks:
        task.result()  # re-raises an item's exception
    return results
