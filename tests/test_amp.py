"""fastclip.amp.unscale_clip_ == GradScaler.unscale_ + clip_grad_norm_, in one pass.

Oracle: the same model, data and scaler taken through torch's two calls.
"""
import pytest
import torch

import fastclip
import fastclip.amp


def _step(fused: bool, device, dtype=torch.float32, inject_inf=False, max_norm=0.5):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(device, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10)
    scaler.scale(model(torch.randn(5, 8, device=device, dtype=dtype)).pow(2).sum()).backward()
    if inject_inf:
        model[0].weight.grad[0, 0] = float("inf")
    if fused:
        norm = fastclip.amp.unscale_clip_(scaler, opt, max_norm)
    else:
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    grads = [p.grad.clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    return norm, grads, [p.detach().clone() for p in model.parameters()], scaler.get_scale()


@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clip", "noclip"])
def test_fused_step_matches_unscale_then_clip(backend, device, max_norm):
    norm, grads, params, scale = _step(True, device, max_norm=max_norm)
    norm_t, grads_t, params_t, scale_t = _step(False, device, max_norm=max_norm)
    torch.testing.assert_close(norm, norm_t, rtol=1e-6, atol=0)
    for g, gt in zip(grads, grads_t):
        torch.testing.assert_close(g, gt, rtol=1e-6, atol=1e-8)
    for w, wt in zip(params, params_t):
        torch.testing.assert_close(w, wt, rtol=1e-6, atol=1e-8)
    assert scale == scale_t


def test_inf_gradient_skips_the_step_and_backs_off_the_scale(backend, device):
    norm, _, params, scale = _step(True, device, inject_inf=True)
    _, _, params_t, scale_t = _step(False, device, inject_inf=True)
    assert not torch.isfinite(norm)
    assert scale == scale_t == 2.0**9
    for w, wt in zip(params, params_t):  # both skipped: weights are the initial ones
        assert torch.equal(w, wt)


def test_bf16_gradients_match(backend, device):
    norm, grads, _, _ = _step(True, device, dtype=torch.bfloat16)
    norm_t, grads_t, _, _ = _step(False, device, dtype=torch.bfloat16)
    # torch's bf16 norm is rounded to bf16; ours is fp32 from fp32 accumulation
    assert abs(norm.float().item() - norm_t.float().item()) <= 8e-3 * norm_t.float().item()
    for g, gt in zip(grads, grads_t):
        torch.testing.assert_close(g.float(), gt.float(), rtol=2e-2, atol=1e-3)


def test_calling_twice_raises_like_gradscaler(backend, device):
    model = torch.nn.Linear(3, 1).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device.type)
    scaler.scale(model(torch.ones(2, 3, device=device)).sum()).backward()
    fastclip.amp.unscale_clip_(scaler, opt, 1.0)
    with pytest.raises(RuntimeError, match="already been called"):
        fastclip.amp.unscale_clip_(scaler, opt, 1.0)


def test_fp16_gradients_are_refused_like_gradscaler(backend, device):
    model = torch.nn.Linear(3, 1).to(device, torch.float16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device.type)
    scaler.scale(torch.ones((), device=device))  # initialises the scale, as a real step would
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="FP16"):
        fastclip.amp.unscale_clip_(scaler, opt, 1.0)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))


def test_fused_step_is_two_launches(monkeypatch):
    from oracles import require_triton_on_cpu, spy_calls

    require_triton_on_cpu()  # before importing the Triton backend: without triton this skips
    import fastclip._triton_backend as tb
    calls = spy_calls(monkeypatch, tb, ("launch_norm_partials", "launch_scale"))
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    _step(True, torch.device("cpu"))
    assert calls == ["launch_norm_partials", "launch_scale"]
