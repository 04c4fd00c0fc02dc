"""Plan builder for the Triton path.

A *plan* is what the two launches need about one list of gradients on one device: the chunk table
(int64 ``[2, n_chunks]``: chunk start address; ``n | dtype_code << 32 | full << 36 | vec << 37``) and the
float64 partials workspace (one value per program of the norm launch).  Building one costs a few vectorised torch ops; the
dispatcher (``fastclip._dispatch``) caches it under the gradients' signature, so the steady state
of a training loop, where the same gradient buffers come back every step, does no table building,
no host-to-device copy and no allocation proportional to the model.
"""
from __future__ import annotations

import dataclasses

import torch

from .kernels.launch_settings import DTYPE_CODES, VECTOR_ALIGN_BYTES, LaunchSettings, max_grid


@dataclasses.dataclass
class Plan:
    device: torch.device
    table: torch.Tensor  # int64 [2, n_chunks] on device
    n_chunks: int
    partials: torch.Tensor  # float64 [max grid] workspace: the norm launch writes its first G entries
    acc_fp64: bool  # some grad is float64: accumulate and return the norm in float64
    settings: LaunchSettings
    numel: int  # total elements (for reporting)
    chunk_counts: torch.Tensor  # int64 [n_tensors] on device: chunks of each tensor, in order
    chunk_partials: torch.Tensor | None = None  # float64 [n_chunks], allocated on first per-tensor request


def build_plan(grads: list, device: torch.device, settings: LaunchSettings) -> Plan:
    """Cut every tensor into chunks of ``settings.chunk`` elements and build the chunk table."""
    meta = torch.tensor(
        [(g.data_ptr(), g.numel(), g.element_size(), DTYPE_CODES[g.dtype]) for g in grads] or [(0, 0, 1, 0)],
        dtype=torch.int64,
    )
    if not grads:
        meta = meta[:0]
    addr, numel, elsize, code = meta.unbind(1)
    chunk = settings.chunk
    n_per_tensor = (numel + chunk - 1) // chunk  # zero-element tensors get no chunk
    owner = torch.repeat_interleave(torch.arange(len(grads)), n_per_tensor)
    first_chunk = torch.cumsum(n_per_tensor, 0) - n_per_tensor
    k = torch.arange(owner.numel()) - first_chunk[owner]  # chunk index within its tensor
    start = k * chunk
    n = torch.minimum(numel[owner] - start, torch.tensor(chunk))
    chunk_addr = addr[owner] + start * elsize[owner]
    aligned = chunk_addr % VECTOR_ALIGN_BYTES == 0
    full = (n == chunk) & aligned
    vec = aligned & (n * elsize[owner] % VECTOR_ALIGN_BYTES == 0)  # whole 16-byte vectors (chunk_ops.py)
    packed = n | (code[owner] << 32) | (full.to(torch.int64) << 36) | (vec.to(torch.int64) << 37)
    n_chunks = int(owner.numel())
    # a never-read dummy column keeps the table pointer valid when there is nothing to do
    table = torch.stack([chunk_addr, packed]) if n_chunks else torch.zeros(2, 1, dtype=torch.int64)
    table = table.to(device)
    return Plan(
        device=device,
        table=table,
        n_chunks=n_chunks,
        partials=torch.empty(max_grid(device, settings), dtype=torch.float64, device=device),
        acc_fp64=bool((code == DTYPE_CODES[torch.float64]).any()),
        settings=settings,
        numel=int(numel.sum()),
        chunk_counts=n_per_tensor.to(device),
    )
