"""How the two launches walk the chunk table, and that the walk never changes a result.

Programs take chunks round-robin (the k-th to program k mod G).  The norm launch deals the table
from its start; the rescale deals it from its end, so its first round is the norm launch's last
one, which L2 still holds.  Order is observed under the interpreter by wrapping the function each kernel
loads a chunk's table row with.  Results are checked bitwise against each element multiplied once
by torch's coefficient (in fp32 for 16- and 32-bit grads, fp64 for fp64).
"""
import pytest
import torch

from oracles import require_triton_module

require_triton_module()  # the kernels' own paths: skip the module without triton

import fastclip  # noqa: E402
from fastclip.kernels import norm_kernel, scale_kernel  # noqa: E402
from fastclip.kernels.launch_settings import settings_for
from oracles import grads, make_params, ref_norm, require_triton_on_cpu
from test_clip import ALL_DTYPES

#: The interpreter's chunk is 256 elements and its grid 4 programs: these give 25 chunks, most of
#: them full, in 7 rounds, with tails and tiny tensors in between, in every dtype.
SHAPES = [(1500,), (3, 5), (40, 33), (256,), (2, 700), (1,), (999,)]

ROW_LOADER = "load_row"


@pytest.fixture
def triton_backend(monkeypatch):
    require_triton_on_cpu()
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")


#: Bitwise checks leave bf16 out: the interpreter rounds fp32 -> bf16 toward zero (GPUs round to
#: nearest even), so its bf16 results are 1 ulp from torch's by construction.
EXACT_DTYPES = [d for d in ALL_DTYPES if d != torch.bfloat16]


def mixed(shapes=SHAPES, dtypes=ALL_DTYPES):
    return sum((make_params([s], dtype=dtypes[i % len(dtypes)], scale=1 + i) for i, s in enumerate(shapes)), [])


def value(x) -> int:
    """A scalar of the interpreter (a 0-d tensor) as a Python int."""
    return int(x.handle.data.item()) if hasattr(x, "handle") else int(x)


def record_walks(monkeypatch, module):
    """Chunk indices in the order ``module``'s kernel loads their table rows (all programs)."""
    order = []
    real = getattr(module, ROW_LOADER)

    def spy(table_ptr, n_chunks, chunk):
        order.append(value(chunk))
        return real(table_ptr, n_chunks, chunk)

    monkeypatch.setattr(module, ROW_LOADER, spy)
    return order


def runs(order, step):
    """Split a walk into per-program runs (consecutive chunks ``step`` apart)."""
    out = [[order[0]]]
    for c in order[1:]:
        if c - out[-1][-1] == step:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def n_chunks_of(params) -> int:
    chunk = settings_for(torch.device("cpu")).chunk
    return sum(-(-g.numel() // chunk) for g in grads(params))


def test_the_rescale_walks_the_table_from_its_last_round(triton_backend, monkeypatch):
    params = mixed()
    forward = record_walks(monkeypatch, norm_kernel)
    backward = record_walks(monkeypatch, scale_kernel)

    fastclip.clip_(params, 0.1 * ref_norm(grads(params), 2))

    n_chunks, grid = n_chunks_of(params), 4
    assert n_chunks >= 6 * grid  # several rounds
    assert runs(forward, grid) == [list(range(pid, n_chunks, grid)) for pid in range(grid)]
    assert runs(backward, -grid) == [[n_chunks - 1 - k for k in range(pid, n_chunks, grid)] for pid in range(grid)]
    assert sorted(backward) == list(range(n_chunks))  # each chunk once


def test_clip_value_walks_forward(triton_backend, monkeypatch):
    params = mixed()
    order = record_walks(monkeypatch, scale_kernel)

    fastclip.clip_value_(params, 0.5)

    n_chunks, grid = n_chunks_of(params), 4
    assert runs(order, grid) == [list(range(pid, n_chunks, grid)) for pid in range(grid)]


def kernel_coef(max_norm: float, norm: torch.Tensor) -> torch.Tensor:
    """min(max_norm / (norm + 1e-6), 1), one IEEE division in the norm's dtype (scale_kernel.py)."""
    return torch.clamp(torch.div(torch.tensor(max_norm, dtype=norm.dtype), norm + 1e-6), max=1.0)


def scaled_once(g, coef):
    """g times coef, once: in fp32 for 16- and 32-bit grads (torch's opmath), in fp64 for fp64."""
    wide = torch.float64 if g.dtype == torch.float64 else torch.float32
    return (g.to(wide) * coef.to(wide)).to(g.dtype)


@pytest.mark.parametrize("norm_dtype", [torch.float32, torch.float64], ids=str)
def test_every_element_is_rescaled_once_by_the_coefficient(triton_backend, norm_dtype):
    params = mixed(dtypes=EXACT_DTYPES)
    originals = [g.clone() for g in grads(params)]
    norm = torch.tensor(ref_norm(originals, 2), dtype=norm_dtype)
    max_norm = 0.3 * norm.item()
    coef = kernel_coef(max_norm, norm)

    fastclip.clip_with_norm_(params, max_norm, norm)

    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, scaled_once(g0, coef))


def test_clip_rescales_every_element_once_by_the_coefficient_of_its_norm(triton_backend):
    params = mixed(dtypes=EXACT_DTYPES)
    originals = [g.clone() for g in grads(params)]
    max_norm = 0.3 * ref_norm(originals, 2)

    norm = fastclip.clip_(params, max_norm)  # float64: one grad is fp64
    coef = kernel_coef(max_norm, norm)

    assert abs(norm.item() - ref_norm(originals, 2)) <= 2e-5 * ref_norm(originals, 2)
    assert coef.item() < 1
    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, scaled_once(g0, coef))


def test_each_program_prefetches_the_next_row_before_its_chunk_streams(triton_backend, monkeypatch):
    """R: a chunk's row loaded, P: the next chunk's row prefetched into L2, S: the chunk streamed."""
    params = mixed()
    log = []
    for name, mark in (("load_row", "R"), ("prefetch_row", "P"), ("chunk_power_sum", "S")):
        real = getattr(norm_kernel, name)

        def spy(*args, _real=real, _mark=mark):
            if _mark != "P" or value(args[-1]):  # a program's last chunk prefetches nothing
                log.append(_mark)
            return _real(*args)

        monkeypatch.setattr(norm_kernel, name, spy)

    fastclip.total_norm(grads(params))

    n_chunks, grid = n_chunks_of(params), 4
    expected = ""
    for pid in range(grid):
        k = len(range(pid, n_chunks, grid))
        expected += "".join("R" + "P" * (i + 1 < k) + "S" for i in range(k))
    assert "".join(log) == expected
