"""The plain-PyTorch path (CPU, and any device Triton can't serve), accurate and low-overhead.

Same semantics as the Triton path.  Two things torch's own clip_grad_norm_ gets wrong on CPU are
fixed here (numbers measured on a 2-core CPU, see DESIGN.md):

* accuracy: ``vector_norm`` of one long fp32 tensor has no pairwise summation (1.3 % off at 124 M
  elements) and half-type norms come back rounded to bf16/fp16.  Tensors are reduced in chunks
  of ``CPU_CHUNK`` elements (BLAS ``dot`` for p = 2, row norms of ``CPU_ROW`` elements otherwise),
  half types through a reused fp32 buffer, and the chunk results are combined in float64:
  relative error ~1e-7.
* overhead: small tensors are concatenated (one ``torch.cat`` per trailing shape, ~0.3 us per
  tensor) and reduced as one vector, instead of one norm call per tensor (``_foreach_norm``
  costs ~1.3 us per tensor on this CPU); on the CPU the scaling pass is skipped when coef >= 1
  (reading a CPU scalar is not a device sync).  On other devices the clamped coefficient is
  always applied, as torch does, so nothing synchronizes.
"""
from __future__ import annotations

import torch

from ._layout import flat_view
from .kernels.launch_settings import NORM_INF, NORM_P2

CPU_CHUNK = 1 << 18  # elements per chunk: 1 MiB as fp32, stays in cache
CPU_ROW = 4096  # row length for non-p=2 chunk norms: short enough for an accurate fp32 sum
SMALL = 1 << 16  # tensors up to this many elements are concatenated before reducing


def group_by_dtype(grads: list) -> dict:
    groups: dict[torch.dtype, list] = {}
    for g in grads:
        groups.setdefault(g.dtype, []).append(g)
    return groups


def _chunk_norms(flat: torch.Tensor, p: float, kind: int, buffer: list) -> torch.Tensor:
    """float64 norms of consecutive chunks of one 1-D tensor (their p-norm is the tensor's norm)."""
    acc = torch.float64 if flat.dtype == torch.float64 else torch.float32
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
    return torch.cat(results).double()


def _flat(t: torch.Tensor) -> torch.Tensor:
    # torch.cat keeps a common memory format (e.g. channels_last): dense, maybe not contiguous
    flat = flat_view(t)
    return flat if flat is not None else t.reshape(-1)


def _concatenated(small: list) -> list:
    """Small tensors as few flat tensors: one torch.cat if their trailing dims agree (all 1-D,
    or all the same shape), else one per trailing shape."""
    if not small:
        return []
    try:
        flats = [_flat(torch.cat(small))]
    except RuntimeError:
        groups: dict = {}
        for g in small:
            groups.setdefault(g.shape[1:] if g.dim() else "0-d", []).append(g)
        # 0-d tensors can't be concatenated, only stacked
        flats = [_flat(torch.stack(same) if key == "0-d" else torch.cat(same)) for key, same in groups.items()]
    return [f for f in flats if f.numel()]


def total_norm(by_dtype: dict, p: float, kind: int, out_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """p-norm of all tensors in ``by_dtype`` ({dtype: [tensors]}) seen as one vector, 0-d ``out_dtype``."""
    pieces = []
    buffer = [None]
    for tensors in by_dtype.values():
        numels = [g.numel() for g in tensors]
        small = [g for g, n in zip(tensors, numels) if n <= SMALL]
        for g, n in zip(tensors, numels):
            if n > SMALL:
                flat = flat_view(g)
                if flat is None:
                    flat = g.reshape(-1)  # truly strided: a contiguous copy, for the norm only
                pieces.append(_chunk_norms(flat, p, kind, buffer))
        for flat in _concatenated(small):
            pieces.append(_chunk_norms(flat, p, kind, buffer))
    if not pieces:
        return torch.zeros((), dtype=out_dtype, device=device)
    return torch.linalg.vector_norm(torch.cat(pieces), p).to(out_dtype)


def clip_coef(max_norm, norm: torch.Tensor) -> torch.Tensor:
    """torch's clamp(max_norm / (norm + 1e-6), max=1), in the norm's dtype."""
    if isinstance(max_norm, torch.Tensor):
        max_norm = max_norm.to(norm.device, norm.dtype)
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def scale_(by_dtype: dict, coef: torch.Tensor) -> None:
    """Every tensor *= coef in place; skipped on the CPU when coef >= 1."""
    if coef.device.type == "cpu" and coef.item() >= 1.0:  # NaN compares False: a NaN norm still scales
        return
    for tensors in by_dtype.values():
        torch._foreach_mul_(tensors, coef)


def clamp_(by_dtype: dict, clip_value: float) -> None:
    """Clamp every tensor to [-clip_value, clip_value] in place."""
    for tensors in by_dtype.values():
        torch._foreach_clamp_min_(tensors, -clip_value)
        torch._foreach_clamp_max_(tensors, clip_value)
