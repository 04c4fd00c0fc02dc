"""The shortest statement of the contract: clip like torch, on every backend."""
import torch

import fastclip
from oracles import clone_params, grads, make_params, ref_coef, ref_norm


def test_clip_matches_float64_oracle_and_torch(backend, device):
    params = make_params([(13, 7), (1000,), (3,)], device=device, scale=2.0)
    expected_norm = ref_norm(grads(params), 2)
    originals = [g.clone() for g in grads(params)]
    theirs = clone_params(params)

    norm = fastclip.clip_(params, 1.0)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0)

    assert abs(norm.item() - expected_norm) <= 2e-5 * expected_norm
    torch.testing.assert_close(norm, torch_norm, rtol=1e-5, atol=0)
    coef = ref_coef(1.0, expected_norm)
    for g, g0, t in zip(grads(params), originals, grads(theirs)):
        torch.testing.assert_close(g.double(), g0.double() * coef, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(g, t, rtol=1e-5, atol=1e-7)
