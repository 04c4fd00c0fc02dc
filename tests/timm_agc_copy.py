"""A faithful copy of timm's two AGC functions, for testing fastclip.patch_timm where timm can't
be imported (timm's package __init__ imports torchvision, whose PyPI wheel does not load beside
the CPU torch of the test machines).  Only the package layout is recreated: ``install(monkeypatch)``
registers ``timm``, ``timm.utils``, ``timm.utils.agc`` and ``timm.utils.clip_grad`` modules whose
function bodies are copied verbatim from

  https://github.com/huggingface/pytorch-image-models/blob/aa4b5850c1543fa488abf260f18390eda46cf85d/timm/utils/agc.py
  https://github.com/huggingface/pytorch-image-models/blob/aa4b5850c1543fa488abf260f18390eda46cf85d/timm/utils/clip_grad.py

(timm 1.0.31 ships the same two files).  timm is Copyright 2021 Ross Wightman, Apache License 2.0.
"""
import sys
import types

AGC_SOURCE = '''
import torch


def unitwise_norm(x, norm_type=2.0):
    if x.ndim <= 1:
        return x.norm(norm_type)
    else:
        # works for nn.ConvNd and nn,Linear where output dim is first in the kernel/weight tensor
        # might need special cases for other weights (possibly MHA) where this may not be true
        return x.norm(norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip_grad(parameters, clip_factor=0.01, eps=1e-3, norm_type=2.0):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    for p in parameters:
        if p.grad is None:
            continue
        p_data = p.detach()
        g_data = p.grad.detach()
        max_norm = unitwise_norm(p_data, norm_type=norm_type).clamp_(min=eps).mul_(clip_factor)
        grad_norm = unitwise_norm(g_data, norm_type=norm_type)
        clipped_grad = g_data * (max_norm / grad_norm.clamp(min=1e-6))
        new_grads = torch.where(grad_norm < max_norm, g_data, clipped_grad)
        p.grad.detach().copy_(new_grads)
'''

CLIP_GRAD_SOURCE = '''
import torch

from timm.utils.agc import adaptive_clip_grad


def dispatch_clip_grad(parameters, value: float, mode: str = 'norm', norm_type: float = 2.0):
    """ Dispatch to gradient clipping method

    Args:
        parameters (Iterable): model parameters to clip
        value (float): clipping value/factor/norm, mode dependant
        mode (str): clipping mode, one of 'norm', 'value', 'agc'
        norm_type (float): p-norm, default 2.0
    """
    if mode == 'norm':
        torch.nn.utils.clip_grad_norm_(parameters, value, norm_type=norm_type)
    elif mode == 'value':
        torch.nn.utils.clip_grad_value_(parameters, value)
    elif mode == 'agc':
        adaptive_clip_grad(parameters, value, norm_type=norm_type)
    else:
        assert False, f"Unknown clip mode ({mode})."
'''


def install(monkeypatch) -> None:
    """Register the copy as timm.utils.{agc,clip_grad} in sys.modules, undone by ``monkeypatch``."""

    def register(module):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    timm = types.ModuleType("timm")
    timm.__path__ = []
    utils = types.ModuleType("timm.utils")
    utils.__path__ = []
    timm.utils = utils
    register(timm)
    register(utils)
    for name, source in (("agc", AGC_SOURCE), ("clip_grad", CLIP_GRAD_SOURCE)):
        module = types.ModuleType(f"timm.utils.{name}")
        register(module)
        exec(compile(source, f"timm/utils/{name}.py", "exec"), module.__dict__)
        setattr(utils, name, module)
    # timm/utils/__init__.py re-exports both functions
    utils.adaptive_clip_grad = utils.agc.adaptive_clip_grad
    utils.dispatch_clip_grad = utils.clip_grad.dispatch_clip_grad

