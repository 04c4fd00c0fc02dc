"""fastclip/_workers.py: items run on single-threaded worker threads, results come back in order.

The pool must not change the thread count that the caller (or a thread started later) sees, must
survive a fork, and must pass an item's exception to the caller.
"""
import multiprocessing
import threading

import pytest
import torch

from fastclip import _workers


def test_results_come_back_in_item_order():
    items = [lambda i=i: (torch.full((1000,), float(i)).sum().item(), threading.current_thread().name)
             for i in range(50)]
    results = _workers.run(items)
    assert [r[0] for r in results] == [1000.0 * i for i in range(50)]
    if torch.get_num_threads() > 1:  # the work ran on the pool's threads, not the caller's
        assert {name for _, name in results} <= {t.name for t in threading.enumerate() if "fastclip-cpu" in t.name}


def test_workers_run_single_threaded_and_leave_the_callers_thread_count_alone():
    before = torch.get_num_threads()
    counts = _workers.run([torch.get_num_threads] * 8)
    if before > 1:
        assert counts == [1] * 8
    assert torch.get_num_threads() == before
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [before]


def test_inline_runs_in_the_calling_thread():
    assert _workers.run([threading.get_ident] * 3, inline=True) == [threading.get_ident()] * 3


def test_an_items_exception_reaches_the_caller():
    def boom():
        raise ValueError("item failed")

    with pytest.raises(ValueError, match="item failed"):
        _workers.run([lambda: 1, boom, lambda: 2])


def _child(queue):
    queue.put(_workers.run([lambda i=i: i * i for i in range(10)]))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_gets_its_own_pool():
    _workers.run([lambda: 0] * 4)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    result = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and result == [i * i for i in range(10)]
