"""Which path each chunk takes, and that the vectorised small-tensor path computes what the others do.

The plan marks every chunk ``full`` (exactly CHUNK elements, 16-byte aligned: unmasked 128-bit
loads), ``vec`` (16-byte aligned, a whole number of 16-byte vectors: masked 128-bit loads; small
tensors and most tails) or neither (masked scalar loads: misaligned views, odd lengths).  Under the
interpreter (chunk 256, block 64) each path is counted by wrapping its function, and the results
are checked against float64 (norm) and bitwise against one multiply per element (rescale).
"""
import pytest
import torch

from oracles import require_triton_module

require_triton_module()  # the kernels' own paths: skip the module without triton

import fastclip  # noqa: E402
from fastclip._plan import build_plan  # noqa: E402
from fastclip.kernels import chunk_ops
from fastclip.kernels.launch_settings import INTERPRETER_SETTINGS
from oracles import grads, make_params, ref_norm, require_triton_on_cpu, spy_calls
from test_chunk_walk import EXACT_DTYPES, kernel_coef, scaled_once
from test_clip import ALL_DTYPES

FULL, VEC = 1 << 36, 1 << 37
PATHS = {"full": ("_power_sum_full", "_rewrite_full"), "vec": ("_power_sum_vec", "_rewrite_vec"),
         "masked": ("_power_sum_masked", "_rewrite_masked")}


@pytest.fixture
def triton_backend(monkeypatch):
    require_triton_on_cpu()
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")


def flags(tensors):
    """'full', 'vec' or 'masked' for every chunk of the plan, in table order."""
    table = build_plan(tensors, torch.device("cpu"), INTERPRETER_SETTINGS).table
    meta = table[1].tolist() if table.shape[1] else []
    return ["full" if m & FULL else "vec" if m & VEC else "masked" for m in meta][:len(meta)]


def test_the_plan_marks_whole_aligned_vectors_vec_and_the_rest_masked():
    base = torch.randn(1024)  # CPU allocations are 64-byte aligned
    tensors = [
        base[:40],  # 160 bytes: vec
        base[1:41],  # 4 bytes past an aligned address: masked
        base[:41],  # 164 bytes: masked
        torch.randn(300),  # 256 elements (full) + 44 (176 bytes: vec)
        torch.randn(24, dtype=torch.bfloat16),  # 48 bytes: vec
        torch.randn(20, dtype=torch.bfloat16),  # 40 bytes: masked
        torch.randn(6, dtype=torch.float64),  # 48 bytes: vec
        torch.randn(1),  # 4 bytes: masked
    ]
    assert flags(tensors) == ["vec", "masked", "masked", "full", "vec", "vec", "masked", "vec", "masked"]


def count_paths(monkeypatch):
    """Calls of each path function (full / vec / masked), both kernels together."""
    names = [name for pair in PATHS.values() for name in pair]
    calls = spy_calls(monkeypatch, chunk_ops, names)
    return lambda: {path: sum(calls.count(name) for name in pair) for path, pair in PATHS.items()}


def small_set(dtypes, n_tensors=48):
    """Tensors of 8 to 120 elements (the 2 000 x 512 set, shrunk to the interpreter's chunk)."""
    return sum((make_params([(8 * (1 + i % 15),)], dtype=dtypes[i % len(dtypes)], scale=1 + i % 7)
                for i in range(n_tensors)), [])


def test_small_aligned_tensors_take_the_vectorised_path_in_both_launches(triton_backend, monkeypatch):
    params = small_set(ALL_DTYPES)
    assert set(flags(grads(params))) == {"vec"}
    counts = count_paths(monkeypatch)

    fastclip.clip_(params, 0.5 * ref_norm(grads(params), 2))

    assert counts() == {"full": 0, "vec": 2 * len(params), "masked": 0}  # norm launch + rescale


def test_each_chunk_takes_the_path_its_plan_flag_names(triton_backend, monkeypatch):
    params = small_set(ALL_DTYPES, 8) + make_params([(41,)])  # 164 bytes: masked
    params += make_params([(300,), (3, 7)], dtype=torch.float16)  # full + vec tail, masked
    marked = flags(grads(params))
    counts = count_paths(monkeypatch)

    fastclip.clip_(params, 0.5 * ref_norm(grads(params), 2))

    assert counts() == {path: 2 * marked.count(path) for path in PATHS}
    assert all(counts().values())


@pytest.mark.parametrize("norm_type", [1, 2, 3, float("inf")], ids=str)
def test_vectorised_norm_matches_float64(triton_backend, norm_type):
    params = small_set(ALL_DTYPES)

    norm = fastclip.total_norm(grads(params), norm_type)

    expected = ref_norm(grads(params), norm_type)
    assert abs(norm.item() - expected) <= 2e-5 * expected


def test_vectorised_rescale_is_one_multiply_per_element(triton_backend):
    params = small_set(EXACT_DTYPES)
    originals = [g.clone() for g in grads(params)]
    max_norm = 0.3 * ref_norm(originals, 2)

    norm = fastclip.clip_(params, max_norm)

    coef = kernel_coef(max_norm, norm)
    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, scaled_once(g0, coef))


def test_vectorised_clamp_matches_torch(triton_backend):
    params = small_set(ALL_DTYPES)
    originals = [g.clone() for g in grads(params)]

    fastclip.clip_value_(params, 0.7)

    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, g0.clamp(-0.7, 0.7))
