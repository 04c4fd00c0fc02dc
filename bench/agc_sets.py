"""AGC benchmark inputs: real model shapes with weights *and* gradients, and timm's formula.

AGC reads the weights too, so unlike ``grad_sets.make_grads`` (whose parameters are one expanded
element) every parameter here owns its data.  Sets:

* ``resnet50``  torchvision/timm ResNet-50: 161 tensors, 25.6 M elements (``grad_sets``' shapes);
* ``nfnet_f0``  timm's ``dm_nfnet_f0``: 233 tensors, 71.5 M elements, with 0-d skip gains,
  ``(C, 1, 1, 1)`` gains (units of one element) and 1x1 / 3x3 convs (shapes checked against
  ``timm.create_model('dm_nfnet_f0')``, timm 1.0.31);
* ``tiny`` variants of both (quick correctness runs).

Gradients are sized so that about half of the units clip at ``clip_factor = 0.01`` (each unit's
gradient norm is 0.5x to 1.5x the limit), the regime where AGC does work; the weights are
``randn * 0.05``.
"""
from __future__ import annotations

import zlib

import torch

from grad_sets import resnet50_shapes

SETS = ("resnet50", "nfnet_f0")
CLIP_FACTOR = 0.01


def nfnet_f0_shapes(classes=1000, widths=(256, 512, 1536, 1536), depths=(1, 2, 6, 3), group=128,
                    stem=(16, 32, 64, 128)) -> list[tuple]:
    """timm dm_nfnet_f0 parameter order: stem convs, stages of NormFree blocks, final conv, head."""
    def conv(out, inp, k):  # ScaledStdConv2d: weight, bias, gain
        return [(out, inp, k, k), (out,), (out, 1, 1, 1)]

    shapes, in_ch = [], 3
    for ch in stem:
        shapes += conv(ch, in_ch, 3)
        in_ch = ch
    for width, depth in zip(widths, depths):
        mid = width // 2
        for b in range(depth):
            shapes.append(())  # skipinit_gain
            if b == 0:
                shapes += conv(width, in_ch, 1)  # downsample
            shapes += conv(mid, in_ch, 1) + conv(mid, group, 3) + conv(mid, group, 3) + conv(width, mid, 1)
            shapes += [(mid, width, 1, 1), (mid,), (width, mid, 1, 1), (width,)]  # squeeze-excite
            in_ch = width
    shapes += conv(2 * in_ch, in_ch, 1)
    return shapes + [(classes, 2 * in_ch), (classes,)]


def shapes(name: str, tiny: bool = False) -> list[tuple]:
    if name == "resnet50":
        return resnet50_shapes(width=4, classes=10) if tiny else resnet50_shapes()
    if name == "nfnet_f0":
        return nfnet_f0_shapes(classes=10, widths=(16, 32, 48, 48), group=8, stem=(4, 8, 8, 8)) if tiny \
            else nfnet_f0_shapes()
    raise ValueError(f"unknown AGC set {name!r}; choose one of {SETS}")


def make_params(name: str, dtype=torch.float32, device="cpu", tiny: bool = False) -> list:
    """Parameters of set ``name`` with random weights and gradients (~half the units clip)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"agc/{name}".encode()))
    params = []
    for shape in shapes(name, tiny):
        w = torch.randn(shape, generator=gen) * 0.05
        g = torch.randn(shape, generator=gen)
        units = g.reshape(shape[0], -1) if len(shape) >= 2 else g.reshape(1, -1)
        w_units = w.reshape(units.shape)
        limit = CLIP_FACTOR * torch.linalg.vector_norm(w_units, dim=1).clamp(min=1e-3)
        ratio = 0.5 + torch.rand(units.shape[0], generator=gen)  # ||g|| / limit in [0.5, 1.5)
        units.mul_((limit * ratio / torch.linalg.vector_norm(units, dim=1).clamp(min=1e-12)).unsqueeze(1))
        p = torch.nn.Parameter(w.to(dtype=dtype, device=device))
        p.grad = g.to(dtype=dtype, device=device)
        params.append(p)
    return params


def timm_adaptive_clip_grad(parameters, clip_factor=0.01, eps=1e-3, norm_type=2.0):
    """timm's AGC, the torch peer: the loop of ``timm/utils/agc.py`` at
    https://github.com/huggingface/pytorch-image-models/blob/aa4b5850c1543fa488abf260f18390eda46cf85d/timm/utils/agc.py
    (Copyright 2021 Ross Wightman, Apache License 2.0), restated with its exact ops."""
    for p in parameters:
        if p.grad is None:
            continue
        p_data, g_data = p.detach(), p.grad.detach()
        dims = tuple(range(1, p_data.ndim))
        w_norm = p_data.norm(norm_type) if p_data.ndim <= 1 else p_data.norm(norm_type, dim=dims, keepdim=True)
        g_norm = g_data.norm(norm_type) if g_data.ndim <= 1 else g_data.norm(norm_type, dim=dims, keepdim=True)
        max_norm = w_norm.clamp_(min=eps).mul_(clip_factor)
        clipped_grad = g_data * (max_norm / g_norm.clamp(min=1e-6))
        new_grads = torch.where(g_norm < max_norm, g_data, clipped_grad)
        p.grad.detach().copy_(new_grads)
