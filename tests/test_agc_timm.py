"""fastclip.patch_timm: timm's adaptive_clip_grad and dispatch_clip_grad(mode='agc') run fastclip.

timm's package imports torchvision, whose PyPI wheel does not load beside the CPU torch of the
test machines, so these tests run timm's real ``timm/utils/agc.py`` and ``clip_grad.py`` when
``import timm.utils`` works and otherwise a faithful copy of those two files (tests/timm_agc_copy.py,
commit-pinned) registered as ``timm.utils.agc`` / ``timm.utils.clip_grad``.  Either way the oracle
is timm's own unpatched function on cloned parameters.
"""
import importlib

import pytest
import torch

import fastclip
import fastclip.patch_timm as patch_timm
import timm_agc_copy
from oracles import spy_calls
from test_agc import params_of


@pytest.fixture
def timm_utils(monkeypatch):
    """timm.utils with its agc and clip_grad modules: real timm if it imports, else the copy."""
    try:
        utils = importlib.import_module("timm.utils")
    except Exception:  # ImportError, or torchvision's RuntimeError ('operator torchvision::nms ...')
        timm_agc_copy.install(monkeypatch)
        utils = importlib.import_module("timm.utils")
    yield utils
    patch_timm.unpatch_timm()


@pytest.fixture
def agc_calls(monkeypatch):
    import fastclip.agc

    return spy_calls(monkeypatch, fastclip.agc, ("agc_",))


def clones(params):
    out = []
    for q in params:
        c = torch.nn.Parameter(q.detach().clone())
        c.grad = q.grad.clone()
        out.append(c)
    return out


def test_patched_dispatch_clip_grad_agc_runs_fastclip_and_matches_timm(backend, timm_utils, agc_calls):
    params = params_of([(16, 3, 3, 3), (16,), (10, 64), (10,), (4, 1, 1, 1)], grad_scale=0.02)
    theirs = clones(params)
    timm_utils.dispatch_clip_grad(theirs, 0.01, mode="agc")  # timm's own loop: the oracle

    patch_timm.patch_timm()
    timm_utils.dispatch_clip_grad(params, 0.01, mode="agc")

    assert len(agc_calls) == 1
    for q, t in zip(params, theirs):
        torch.testing.assert_close(q.grad, t.grad, rtol=2e-6, atol=0)


def test_every_binding_is_patched_and_unpatch_restores_the_same_objects(timm_utils):
    agc_mod = importlib.import_module("timm.utils.agc")
    clip_mod = importlib.import_module("timm.utils.clip_grad")
    before = (agc_mod.adaptive_clip_grad, clip_mod.adaptive_clip_grad, timm_utils.adaptive_clip_grad)

    done = patch_timm.patch_timm()
    assert patch_timm.patch_timm() == done  # idempotent

    assert done == ["timm.utils.agc.adaptive_clip_grad", "timm.utils.clip_grad.adaptive_clip_grad",
                    "timm.utils.adaptive_clip_grad"]
    assert agc_mod.adaptive_clip_grad is clip_mod.adaptive_clip_grad is patch_timm.adaptive_clip_grad
    assert patch_timm.is_timm_patched()
    patch_timm.unpatch_timm()
    patch_timm.unpatch_timm()  # idempotent
    assert (agc_mod.adaptive_clip_grad, clip_mod.adaptive_clip_grad, timm_utils.adaptive_clip_grad) == before
    assert all(a is b for a, b in zip((agc_mod.adaptive_clip_grad, clip_mod.adaptive_clip_grad,
                                        timm_utils.adaptive_clip_grad), before))
    assert not patch_timm.is_timm_patched()


def test_patched_timm_context_manager_nests(timm_utils):
    clip_mod = importlib.import_module("timm.utils.clip_grad")
    original = clip_mod.adaptive_clip_grad
    with patch_timm.patched_timm():
        with patch_timm.patched_timm():
            assert clip_mod.adaptive_clip_grad is patch_timm.adaptive_clip_grad
        assert clip_mod.adaptive_clip_grad is patch_timm.adaptive_clip_grad
    assert clip_mod.adaptive_clip_grad is original


def test_inputs_fastclip_refuses_go_to_timms_function(timm_utils, agc_calls):
    # norm_type 0 is a count of nonzeros in torch: timm accepts it, fastclip does not
    params = params_of([(6, 5)], grad_scale=0.02)
    theirs = clones(params)
    timm_utils.adaptive_clip_grad(theirs, 0.01, norm_type=0.0)

    patch_timm.patch_timm()
    timm_utils.dispatch_clip_grad(params, 0.01, mode="agc", norm_type=0.0)

    assert len(agc_calls) == 1  # tried, refused before touching anything, then timm's function ran
    assert torch.equal(params[0].grad, theirs[0].grad)


def test_patch_timm_without_timm_says_what_is_missing(monkeypatch):
    import sys

    for name in ("timm", "timm.utils", "timm.utils.agc", "timm.utils.clip_grad"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import timm...` raise ImportError
    with pytest.raises(ImportError, match="fastclip.patch_timm needs an importable timm"):
        patch_timm.patch_timm()


def test_importing_fastclip_does_not_import_timm():
    import subprocess
    import sys

    code = "import sys, fastclip, fastclip.patch_timm; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert fastclip.agc_ is not None
