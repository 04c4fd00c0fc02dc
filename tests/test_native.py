"""The optional native helper (``fastclip.native``): it reads exactly the gradients the Python path
reads, recognises an unchanged list, leaves anything unusual to the Python path, and fastclip
works the same when it is missing.

Tests that need the helper skip when it isn't built (``python -m fastclip.native``), and fail
instead under FASTCLIP_REQUIRE_NATIVE=1 (CI builds it, then sets that).  The fallback tests run
everywhere.
"""
import os
import subprocess
import sys
import types

import pytest
import torch

import fastclip
import fastclip._inputs
import fastclip.native
from oracles import make_params


@pytest.fixture
def helper():
    mod = fastclip.native.module()
    if mod is None:
        if os.environ.get("FASTCLIP_REQUIRE_NATIVE") == "1":
            pytest.fail("FASTCLIP_REQUIRE_NATIVE=1 but the native helper is not built (python -m fastclip.native)")
        pytest.skip("native helper not built (python -m fastclip.native)")
    return mod


def mixed_params():
    """Parameters with grads of every dtype and layout the Triton plan handles, and a None grad."""
    params = make_params([(5,)]) + make_params([(3, 4)], dtype=torch.bfloat16) + make_params([(7,), (2, 3, 4)])
    params[2].grad = None
    params[3].grad = torch.randn(4, 3, 2).permute(2, 1, 0)  # dense, not contiguous
    return params


def test_reads_the_same_gradients_as_python_in_order_skipping_none(helper):
    params = mixed_params()

    grads, key = helper.collect(params, True, ())

    expected = fastclip._inputs.grads_of(params)
    assert len(grads) == len(expected) == 3
    assert all(g is e for g, e in zip(grads, expected))
    assert isinstance(key, bytes) and len(key) == 24 * 3


def test_tensors_are_their_own_gradients(helper):
    tensors = [torch.randn(3), torch.randn(2, 2)]

    grads, key = helper.collect(tensors, False, ())

    assert grads is tensors and len(key) == 24 * 2


def test_an_unchanged_list_returns_the_candidate_key_itself(helper):
    params = mixed_params()
    _, key = helper.collect(params, True, ())
    other = helper.collect(make_params([(9,)]), True, ())[1]

    assert helper.collect(params, True, (other, key))[1] is key


@pytest.mark.parametrize("change", ["new memory", "fewer elements", "gaps", "set to None"])
def test_any_change_of_one_gradient_gives_a_new_key(helper, change):
    params = mixed_params()
    _, key = helper.collect(params, True, ())
    g = params[0].grad
    if change == "new memory":
        params[0].grad = g.clone()
    elif change == "fewer elements":
        g.resize_(4)
    elif change == "gaps":
        g.data = torch.randn(10)[::2]
    else:
        params[0].grad = None

    assert helper.collect(params, True, (key,))[1] != key


def test_a_dtype_change_at_the_same_address_gives_a_new_key(helper):
    p = torch.nn.Parameter(torch.zeros(6, dtype=torch.bfloat16))
    p.grad = torch.randn(6).to(torch.bfloat16)
    _, key = helper.collect([p], True, ())

    p.grad.data = p.grad.view(torch.float16)  # same memory, same count, new dtype

    assert helper.collect([p], True, (key,))[1] != key


class _Subclass(torch.Tensor):
    pass


@pytest.mark.parametrize("case", ["non-tensor item", "parameter subclass", "gradient subclass", "sparse gradient",
                                  "non-leaf without grad", "tuple of parameters"])
def test_leaves_anything_unusual_to_the_python_path(helper, case):
    params = make_params([(3,), (4,)])
    items = params
    if case == "non-tensor item":
        items = [params[0], 3.0]
    elif case == "parameter subclass":
        items = [params[0], torch.randn(4, requires_grad=True).as_subclass(_Subclass)]
    elif case == "gradient subclass":
        params[1].grad = torch.randn(4).as_subclass(_Subclass)
    elif case == "sparse gradient":
        params[1].grad = torch.randn(4).to_sparse()
    elif case == "non-leaf without grad":
        items = [params[0], params[1] * 2]
    else:
        items = tuple(params)

    if case == "tuple of parameters":
        with pytest.raises(TypeError):
            helper.collect(items, True, ())
    else:
        assert helper.collect(items, True, ()) == (None, None)


def test_the_python_path_still_warns_for_a_non_leaf_without_grad():
    leaf = torch.nn.Parameter(torch.randn(3))
    leaf.grad = torch.randn(3)
    with pytest.warns(UserWarning, match="not a leaf"):
        fastclip.clip_([leaf, leaf * 2], 1.0)


def _run(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


CLIP_ONCE = ("import torch, fastclip, fastclip.native; w = torch.nn.Parameter(torch.zeros(2)); "
             "w.grad = torch.tensor([3.0, 4.0]); print(fastclip.native.available(), fastclip.clip_([w], 1.0).item())")


def test_fastclip_runs_without_the_helper_when_it_is_switched_off():
    assert _run(CLIP_ONCE, FASTCLIP_NATIVE="off") == "False 5.0"


def test_fastclip_runs_without_the_helper_when_none_is_built(tmp_path):
    assert _run(CLIP_ONCE, FASTCLIP_NATIVE_DIR=str(tmp_path)) == "False 5.0"


def _stderr_of_clip_once(native_dir) -> str:
    result = subprocess.run([sys.executable, "-c", CLIP_ONCE], env=dict(os.environ, FASTCLIP_NATIVE_DIR=str(native_dir)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False 5.0"
    return result.stderr


def test_a_helper_built_only_for_another_version_is_reported(tmp_path):
    """After an upgrade of fastclip or torch the old build is never loaded: the user is told to rebuild."""
    old = tmp_path / "0123456789abcdef"
    old.mkdir()
    (old / "fastclip_native_0123456789abcdef.so").write_text("an old build")

    stderr = _stderr_of_clip_once(tmp_path)

    assert "built for another version" in stderr and "python -m fastclip.native" in stderr


def test_no_helper_built_at_all_is_not_reported(tmp_path):
    assert "native helper" not in _stderr_of_clip_once(tmp_path)


def test_a_broken_build_is_ignored(tmp_path):
    """A file where the helper should be that isn't a loadable module: fastclip falls back."""
    code = ("import os, fastclip.native as n; folder, name = n.location(); os.makedirs(folder); "
            "open(os.path.join(folder, name + '.so'), 'w').write('not a library'); " + CLIP_ONCE)
    assert _run(code, FASTCLIP_NATIVE_DIR=str(tmp_path)) == "False 5.0"


def test_a_failed_openmp_build_falls_back_to_a_build_without(monkeypatch, capsys):
    """A compiler that can't do OpenMP must not cost the user the helper: build() says so and
    builds it without (the loader then finds that build, see the next test)."""
    import fastclip.native as native

    calls = []

    def compile_(openmp, verbose):
        calls.append(openmp)
        if openmp:
            raise RuntimeError("cc1plus: error: unrecognized command-line option '-fopenmp'")
        return types.SimpleNamespace(__file__="/built/without-openmp.so")

    monkeypatch.setattr(native, "_compile", compile_)
    monkeypatch.setattr(native, "_torch_libgomp", lambda: "/torch/lib/libgomp.so.1")
    monkeypatch.setattr(native, "_module", native._UNSET)

    assert native.build() == "/built/without-openmp.so"
    assert calls == [True, False]
    assert "building it without" in capsys.readouterr().err


def test_a_failed_build_without_openmp_to_fall_back_from_raises(monkeypatch):
    import fastclip.native as native

    def compile_(openmp, verbose):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(native, "_compile", compile_)
    monkeypatch.setattr(native, "_torch_libgomp", lambda: None)
    monkeypatch.setattr(native, "_module", native._UNSET)

    with pytest.raises(RuntimeError, match="no compiler"):
        native.build()


def test_the_loader_prefers_the_openmp_build_and_else_takes_the_other(monkeypatch, tmp_path):
    import fastclip.native as native

    monkeypatch.setenv("FASTCLIP_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_torch_libgomp", lambda: "/torch/lib/libgomp.so.1")
    with_openmp, without = native.location(True), native.location(False)
    assert with_openmp != without
    built = {}
    monkeypatch.setattr(native, "_load_file", lambda folder, name: built.get((folder, name)))

    built[without] = "module without OpenMP"
    assert native._load_built(native._places()) == "module without OpenMP"
    built[with_openmp] = "module with OpenMP"
    assert native._load_built(native._places()) == "module with OpenMP"
