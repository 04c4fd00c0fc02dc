"""Gradient sets from real model shapes: the one factory every benchmark draws from.

``make_grads(name, dtype, device, scale)`` returns parameters whose ``.grad`` holds random data
(``randn * scale``, seeded per set: never zeros) with the exact tensor shapes of a real model.
The parameters' own data is a single expanded element (no memory), so only the gradients cost
memory, as in a training step where the clipper only reads and writes ``.grad``.

Sets (``SETS``), with what they stress:

* ``gpt2``     GPT-2 small, 148 tensors, 124.4 M elements (one 38.6 M embedding dominates).
* ``llama``    a LLaMA-style decoder (RMSNorm, GQA attention, SwiGLU MLP). ``gpu`` preset: the
               LLaMA-3.2-1B shapes (146 tensors, 1.24 B elements, tied embedding); ``cpu``: the
               same architecture scaled down (4 layers, hidden 1024, 78 M elements).
* ``resnet50`` torchvision ResNet-50, 161 tensors, 25.6 M elements, many tiny (BatchNorm).
* ``vit_b16``  torchvision ViT-B/16, 152 tensors, 86.6 M elements.
* ``tiny2000`` 2 000 tensors of 512 elements: pure per-tensor overhead (pytorch#133586).
* ``huge``     one tensor (``gpu``: 2**30 + 12345 elements, a >= 1 B-element set; ``cpu``:
               2**25 + 12345), with an odd tail.

Presets (``PRESETS``): ``gpu`` full sizes; ``cpu`` finishes in a few minutes on 2 cores (the
real GPT-2 / ResNet-50 / ViT shapes, LLaMA and ``huge`` scaled down); ``tiny`` (quick
correctness mode) keeps every set's tensor count and layer structure with small widths.
``preset=None`` picks ``gpu`` for CUDA devices and ``cpu`` otherwise; the environment variable
``FASTCLIP_BENCH_PRESET`` overrides that.
"""
from __future__ import annotations

import os
import zlib

import torch

SETS = ("gpt2", "llama", "resnet50", "vit_b16", "tiny2000", "huge")
PRESETS = ("tiny", "cpu", "gpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def default_preset(device) -> str:
    """``FASTCLIP_BENCH_PRESET`` if set, else ``gpu`` on CUDA and ``cpu`` elsewhere."""
    env = os.environ.get("FASTCLIP_BENCH_PRESET", "").strip().lower()
    if env:
        if env not in PRESETS:
            raise ValueError(f"FASTCLIP_BENCH_PRESET must be one of {PRESETS}, got {env!r}")
        return env
    return "gpu" if torch.device(device).type == "cuda" else "cpu"


# --------------------------------------------------------------------------- model shapes
def gpt2_shapes(vocab=50257, n_pos=1024, d=768, layers=12) -> list[tuple]:
    """HF GPT-2 parameter order: wte, wpe, per block ln_1/attn/ln_2/mlp (Conv1D weights), ln_f."""
    shapes = [(vocab, d), (n_pos, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),  # ln_1 weight, bias
                   (d, 3 * d), (3 * d,),  # attn.c_attn
                   (d, d), (d,),  # attn.c_proj
                   (d,), (d,),  # ln_2
                   (d, 4 * d), (4 * d,),  # mlp.c_fc
                   (4 * d, d), (d,)]  # mlp.c_proj
    return shapes + [(d,), (d,)]  # ln_f


def llama_shapes(vocab, hidden, inter, layers, heads, kv_heads, tied=True) -> list[tuple]:
    """HF LlamaForCausalLM order: embed, per layer norm/q/k/v/o/norm/gate/up/down, norm, (lm_head)."""
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    shapes = [(vocab, hidden)]
    for _ in range(layers):
        shapes += [(hidden,), (hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden),
                   (hidden,), (inter, hidden), (inter, hidden), (hidden, inter)]
    shapes.append((hidden,))
    if not tied:
        shapes.append((vocab, hidden))
    return shapes


def resnet50_shapes(width=64, classes=1000) -> list[tuple]:
    """torchvision resnet50 order: conv1/bn1, 16 bottlenecks (4 with downsample), fc."""
    shapes = [(width, 3, 7, 7), (width,), (width,)]
    in_ch = width
    for planes, blocks in ((width, 3), (2 * width, 4), (4 * width, 6), (8 * width, 3)):
        for b in range(blocks):
            out_ch = planes * 4
            shapes += [(planes, in_ch, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (out_ch, planes, 1, 1), (out_ch,), (out_ch,)]
            if b == 0:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]  # downsample conv + bn
            in_ch = out_ch
    return shapes + [(classes, in_ch), (classes,)]


def vit_shapes(d=768, layers=12, mlp=3072, patch=16, image=224, classes=1000) -> list[tuple]:
    """torchvision vit_b_16 order: class token, conv_proj, pos embedding, encoder layers, ln, head."""
    tokens = (image // patch) ** 2 + 1
    shapes = [(1, 1, d), (d, 3, patch, patch), (d,), (1, tokens, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),  # ln_1
                   (3 * d, d), (3 * d,), (d, d), (d,),  # self_attention in_proj, out_proj
                   (d,), (d,),  # ln_2
                   (mlp, d), (mlp,), (d, mlp), (d,)]  # mlp.0, mlp.3
    return shapes + [(d,), (d,), (classes, d), (classes,)]


_SHAPES = {
    "gpu": {
        "gpt2": lambda: gpt2_shapes(),
        "llama": lambda: llama_shapes(128256, 2048, 8192, 16, 32, 8),  # LLaMA-3.2-1B
        "resnet50": lambda: resnet50_shapes(),
        "vit_b16": lambda: vit_shapes(),
        "tiny2000": lambda: [(512,)] * 2000,
        "huge": lambda: [(2 ** 30 + 12345,)],
    },
    "cpu": {
        "gpt2": lambda: gpt2_shapes(),
        "llama": lambda: llama_shapes(32000, 1024, 2816, 4, 16, 4),
        "resnet50": lambda: resnet50_shapes(),
        "vit_b16": lambda: vit_shapes(),
        "tiny2000": lambda: [(512,)] * 2000,
        "huge": lambda: [(2 ** 25 + 12345,)],
    },
    "tiny": {  # same tensor counts and structure, small widths
        "gpt2": lambda: gpt2_shapes(vocab=1000, n_pos=64, d=32),
        "llama": lambda: llama_shapes(1000, 64, 172, 16, 4, 2),
        "resnet50": lambda: resnet50_shapes(width=4, classes=10),
        "vit_b16": lambda: vit_shapes(d=32, layers=12, mlp=64, patch=16, image=64, classes=10),
        "tiny2000": lambda: [(512,)] * 2000,
        "huge": lambda: [(2 ** 16 + 123,)],
    },
}


def shapes(name: str, preset: str) -> list[tuple]:
    """The tensor shapes of set ``name`` at size ``preset``."""
    if preset not in _SHAPES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    if name not in _SHAPES[preset]:
        raise ValueError(f"unknown gradient set {name!r}; choose one of {SETS}")
    return _SHAPES[preset][name]()


def numel_of(shape_list) -> int:
    total = 0
    for s in shape_list:
        n = 1
        for d in s:
            n *= d
        total += n
    return total


# --------------------------------------------------------------------------- the factory
def make_grads(name: str, dtype=torch.float32, device="cpu", scale: float = 1e-2, preset: str | None = None):
    """Parameters of set ``name`` whose ``.grad`` is ``randn * scale`` in ``dtype`` on ``device``.

    Args:
        name (str): one of ``SETS``.
        dtype (torch.dtype or str): gradient dtype (``'fp32'``, ``'bf16'`` or a torch dtype).
        device (str or torch.device): where the gradients live.
        scale (float): standard deviation of the gradient values. Default: 1e-2
        preset (str, optional): ``'tiny'``, ``'cpu'`` or ``'gpu'``; None picks from the device.

    Returns:
        list[torch.nn.Parameter]: one parameter per tensor of the model, in the model's order;
        each gradient is its own allocation (as autograd makes them), seeded by the set's name.
    """
    device = torch.device(device)
    preset = preset or default_preset(device)
    return params_with_grads(shapes(name, preset), dtype, device, seed=f"{name}/{preset}", scale=scale)


def params_with_grads(shape_list, dtype=torch.float32, device="cpu", seed: str = "", scale: float = 1e-2):
    """Parameters of the given shapes whose ``.grad`` is ``randn * scale`` (seeded by ``seed``).

    The factory behind :func:`make_grads`, for callers with their own shapes (``bench/tune.py
    --smoke``).  Same conventions: fp32 random data cast to ``dtype``, one allocation per
    gradient, parameter data a single expanded element.
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(zlib.crc32(seed.encode()))
    params = []
    for shape in shape_list:
        # generate in fp32 (randn has no bf16 kernel on every device), then cast
        grad = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(scale).to(dtype)
        p = torch.nn.Parameter(torch.zeros((), dtype=dtype, device=device).expand(shape), requires_grad=True)
        p.grad = grad
        params.append(p)
    return params
