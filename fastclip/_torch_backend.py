"""The plain-PyTorch path (CPU, and any device Triton can't serve), accurate and low-overhead.

Same semantics as the Triton path.  Two things torch's own clip_grad_norm_ gets wrong on CPU are
fixed here (numbers measured on a 2-core CPU, see DESIGN.md):

* accuracy: ``vector_norm`` of one long fp32 tensor has no pairwise summation (1.3 % off at 124 M
  elements) and half-type norms come back rounded to bf16/fp16.  Large tensors are reduced in
  chunks of ``CPU_CHUNK`` elements (BLAS ``dot`` for p = 2, row norms of ``CPU_ROW`` elements
  otherwise), half types through a reused fp32 buffer, and the chunk results are combined in
  float64: relative error ~1e-7.
* overhead: small tensors go through one ``torch._foreach_norm`` (fp32 accumulation) instead of a
  Python loop, and on the CPU the scaling pass is skipped when coef >= 1 (reading a CPU scalar is
  not a device sync).  On other devices the clamped coefficient is always applied, as torch does.
"""
from __future__ import annotations

import torch

from ._layout import flat_view
from .kernels.launch_settings import NORM_INF, NORM_P2

CPU_CHUNK = 1 << 20  # elements per chunk of a large tensor: fits in L2/L3 as fp32
CPU_ROW = 4096  # row length for non-p=2 chunk norms: short enough for an accurate fp32 sum
SMALL = 1 << 15  # tensors up to this many elements go through one _foreach_norm call


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_norms(flat: torch.Tensor, p: float, kind: int, buffer: list) -> torch.Tensor:
    """Norms of consecutive chunks of one large 1-D tensor (their p-norm is the tensor's norm)."""
    acc = _acc_dtype(flat.dtype)
    results = []
    for chunk in flat.split(CPU_CHUNK):
        if chunk.dtype != acc:
            # one reused fp32 buffer: upcast in cache instead of materialising the whole tensor
            if buffer[0] is None:
                buffer[0] = torch.empty(CPU_CHUNK, dtype=torch.float32, device=flat.device)
            chunk = buffer[0][: chunk.numel()].copy_(chunk)
        if kind == NORM_P2:
            results.append(torch.dot(chunk, chunk))
        elif kind == NORM_INF:
            results.append(chunk.abs().max().reshape(1))
        else:
            rows = chunk.numel() // CPU_ROW * CPU_ROW
            results.append(torch.linalg.vector_norm(chunk[:rows].view(-1, CPU_ROW), p, dim=1))
            if rows < chunk.numel():
                results.append(torch.linalg.vector_norm(chunk[rows:], p).reshape(1))
    if kind == NORM_P2:
        return torch.stack(results).double().sqrt()
    return torch.cat(results)


def _by_device_and_dtype(grads: list) -> dict:
    groups: dict[tuple, list] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    return groups


def total_norm(grads: list, p: float, kind: int, out_dtype: torch.dtype) -> torch.Tensor:
    """p-norm of all ``grads`` seen as one vector, as a 0-d ``out_dtype`` tensor on their first device."""
    device = grads[0].device
    pieces = []
    small: dict[torch.dtype, list] = {}
    buffer = [None]
    for g in grads:
        if g.numel() == 0:
            continue  # contributes nothing (and _foreach_norm has no identity for the inf norm)
        if g.numel() <= SMALL:
            small.setdefault(g.dtype, []).append(g)
            continue
        flat = flat_view(g)
        if flat is None:
            flat = g.reshape(-1)  # truly strided: a contiguous copy, for the norm only
        pieces.append(_chunk_norms(flat, p, kind, buffer).to(device, torch.float64))
    for dtype, tensors in small.items():
        norms = torch._foreach_norm(tensors, p, dtype=_acc_dtype(dtype))
        pieces.append(torch.stack(norms).to(device, torch.float64))
    if not pieces:
        return torch.zeros((), dtype=out_dtype, device=device)
    return torch.linalg.vector_norm(torch.cat(pieces), p).to(out_dtype)


def clip_coef(max_norm, norm: torch.Tensor) -> torch.Tensor:
    """torch's clamp(max_norm / (norm + 1e-6), max=1), in the norm's dtype."""
    if isinstance(max_norm, torch.Tensor):
        max_norm = max_norm.to(norm.device, norm.dtype)
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def scale_(grads: list, coef: torch.Tensor) -> None:
    """grads *= coef in place, grouped by (device, dtype); skipped on the CPU when coef >= 1."""
    if coef.device.type == "cpu":
        c = coef.item()
        if c >= 1.0:  # NaN compares False, so a NaN norm still scales (as torch)
            return
    for (device, _), tensors in _by_device_and_dtype(grads).items():
        torch._foreach_mul_(tensors, coef.to(device))


def clamp_(grads: list, clip_value: float) -> None:
    """Clamp every gradient to [-clip_value, clip_value] in place, grouped by (device, dtype)."""
    for tensors in _by_device_and_dtype(grads).values():
        torch._foreach_clamp_min_(tensors, -clip_value)
        torch._foreach_clamp_max_(tensors, clip_value)
