r"""Sharded gradients: a process group, or DTensor grads (FSDP2 ``fully_shard``, tensor parallel).

Each rank holds shards of one model's gradients. The global norm needs one number per rank, so
only a 0-d power sum crosses the network. The local shards go through the ordinary path (Triton
kernels on CUDA, plain PyTorch on the CPU):

.. math::
    s_r = \sum_{x \in \text{shards}_r} |x|^p \quad(\max|x| \text{ for } p = \infty),\qquad
    \|g\|_p = \Big(\sum_r s_r\Big)^{1/p}

    common case (one set of shards over one group, Triton path, finite p):
    norm launch -> all_reduce(SUM) of its partial sums -> scale launch (norm, coefficient, rewrite)
    otherwise: local norm (2 launches) -> s_r = norm**p -> all_reduce(SUM, or MAX for inf) -> root
    -> every rank scales its shards by the same coefficient (1 launch)

DTensors are grouped by (mesh, placements) and reduced only over the mesh dimensions they are
sharded on (``Shard``); replicated dimensions are never double-counted. A ``Partial`` dimension
holds summands of the tensor, not pieces of it: for the norm those tensors are first
redistributed to ``Replicate`` on that dimension (a collective per tensor, rare for gradients),
while scaling still happens in place on the local summands (scaling is linear). Plain tensors in
the same list are shards over ``group`` when it is given, else replicated (counted once).

Cost: one pass over the tensors in Python, linear in their number (torch's DTensor path is
quadratic on its first call, pytorch#169445), one local norm and one 0-d all_reduce per set of
tensors reduced over the same groups (one in total for FSDP2), and no host synchronization
(except ``error_if_nonfinite=True``). The power sum travels as one float64 scalar whatever the
gradients' dtypes, and every rank derives the norm and the coefficient from the same reduced
value, so all ranks scale identically.

These functions are reached through :func:`fastclip.clip_` and :func:`fastclip.total_norm` with
``group=`` or DTensor gradients, and through the stateful clippers of ``fastclip.adaptive`` (their
``group=``; :func:`single_reduction` and :func:`partials_reducer` give them the same two launches
with the collective in between).
"""
from __future__ import annotations

import math
import operator

import torch

from . import _engine, _inputs
from ._dispatch import empty_work, route

__all__ = ["clip_sharded_", "total_norm_sharded", "clip_with_norm_sharded_", "single_reduction", "partials_reducer",
           "device_of"]

_LOCAL = operator.attrgetter("_local_tensor")  # DTensor.to_local() without its autograd function


class _Job:
    """Tensors whose local power sums are all-reduced over the same process groups."""

    __slots__ = ("norm_tensors", "groups", "works")

    def __init__(self, groups: tuple):
        self.norm_tensors: list = []  # local tensors whose norm this rank contributes
        self.groups = groups  # all_reduce over each, in order; () = replicated (count once)
        self.works = None  # the dispatcher's route for norm_tensors, once computed


def _mesh_groups(mesh, shard_dims: list) -> tuple:
    return tuple(mesh.get_group(d) for d in shard_dims) if mesh.ndim > 1 else (mesh.get_group(),)


def _by_spec(tensors: list) -> tuple[list, dict]:
    """(plain tensors, {(mesh id, placements): (mesh, [DTensor])}) in one pass.

    FSDP2 gives all its gradients one shared spec object, and neighbouring tensors almost always
    share mesh and placements anyway, so identity tests against the previous tensor replace a hash
    per tensor (Placement hashes and comparisons are Python code).
    """
    from torch.distributed.tensor import DTensor

    plain, buckets = [], {}
    last_spec = last_mesh = last_placements = bucket = None
    for t in tensors:
        if type(t) is not DTensor and not isinstance(t, DTensor):
            plain.append(t)
            continue
        spec = t._spec
        if spec is not last_spec:
            mesh, placements = spec.mesh, spec.placements
            if mesh is not last_mesh or (placements is not last_placements and placements != last_placements):
                key = (id(mesh), placements)
                entry = buckets.get(key)
                if entry is None:
                    entry = buckets[key] = (mesh, [])
                bucket, last_mesh, last_placements = entry[1], mesh, placements
            last_spec = spec
        bucket.append(t)
    return plain, buckets


def _split(tensors: list, group) -> tuple[list, list]:
    """(jobs, local tensors to scale), one job per distinct tuple of groups to reduce over."""
    plain, buckets = _by_spec(tensors)
    jobs: dict[tuple, _Job] = {}

    def job(groups):
        j = jobs.get(groups)
        if j is None:
            j = jobs[groups] = _Job(groups)
        return j

    scale = plain
    if plain or (group is not None and not buckets):
        # plain tensors are shards over `group` (replicated without one); an empty list still
        # joins the collective, so that every rank of the group calls it
        job((group,) if group is not None else ()).norm_tensors = plain
    for (_, placements), (mesh, dts) in buckets.items():
        locals_ = list(map(_LOCAL, dts))
        scale = locals_ if not scale else scale + locals_
        shard_dims = [i for i, pl in enumerate(placements) if pl.is_shard()]
        if any(pl.is_partial() for pl in placements):
            locals_ = _unpartial(dts, mesh, placements)
        j = job(_mesh_groups(mesh, shard_dims) if shard_dims else ())
        j.norm_tensors = locals_ if not j.norm_tensors else j.norm_tensors + locals_
    return list(jobs.values()), scale


def _unpartial(dts: list, mesh, placements) -> list:
    """Local tensors of ``dts`` with every Partial mesh dimension summed (made Replicate)."""
    from torch.distributed.tensor import Replicate

    target = [Replicate() if pl.is_partial() else pl for pl in placements]
    return [d.redistribute(mesh, target)._local_tensor for d in dts]


def device_of(group) -> torch.device:
    """Where a collective over ``group`` needs its tensor (NCCL: the current CUDA device)."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _local_power_sum(job: _Job, p: float, kind: int, device) -> torch.Tensor:
    """This rank's Σ|x|^p over the job's tensors (max|x| for inf), 0-d float64."""
    if not job.norm_tensors:
        return torch.zeros((), dtype=torch.float64, device=device)
    job.works = route(job.norm_tensors)
    norm = _engine.works_norm(job.works, job.norm_tensors, p, kind, torch.float64).to(device)
    # the norm comes back in float64: raising it to p again costs nothing in accuracy
    if p == math.inf or p == 1.0:
        return norm
    return norm.square() if p == 2.0 else norm.pow(p)


def _all_reduce(value: torch.Tensor, groups: tuple, p: float) -> torch.Tensor:
    """Reduce a power sum over each group in turn (over a product of mesh dims, in order)."""
    import torch.distributed as dist

    if not groups:
        return value
    if p != math.inf:
        for g in groups:
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=g)
        return value
    # MAX doesn't propagate NaN reliably (gloo's std::max drops it depending on the order):
    # reduce a NaN flag beside the max, so a NaN gradient anywhere gives a NaN norm everywhere
    pair = torch.stack([torch.nan_to_num(value, nan=0.0), torch.isnan(value).to(value.dtype)])
    for g in groups:
        dist.all_reduce(pair, op=dist.ReduceOp.MAX, group=g)
    return torch.where(pair[1] > 0, torch.full_like(pair[0], math.nan), pair[0])


def _global_norm(jobs: list, p: float, device) -> torch.Tensor:
    """The p-norm of all shards of all ranks, 0-d float64 on ``device``, identical on every rank."""
    _, kind = _inputs.parse_norm_type(p)
    total = None
    for job in jobs:
        s = _all_reduce(_local_power_sum(job, p, kind, device), job.groups, p)
        total = s if total is None else (torch.maximum(total, s) if p == math.inf else total + s)
    if p == math.inf or p == 1.0:
        return total
    return total.sqrt() if p == 2.0 else total.pow(1.0 / p)


def _norm(tensors: list, p: float, error_if_nonfinite: bool, group):
    """(global norm, local tensors to scale, their route or None)."""
    jobs, scale = _split(tensors, group)
    device = scale[0].device if scale else device_of(group)
    norm = _global_norm(jobs, p, device)
    # the usual case (FSDP2: one mesh, one placement) scales the very list it took the norm of
    works = next((j.works for j in jobs if j.norm_tensors is scale), None)
    norm = norm.to(_engine.norm_dtype(works) if works else _inputs.result_dtype(scale))
    # every rank holds the same norm, so every rank raises (or none does): no rank is left waiting
    if error_if_nonfinite and not bool(torch.isfinite(norm)):  # the one path that syncs, as torch
        raise _inputs.nonfinite_error(p)
    return norm, scale, works


def total_norm_sharded(tensors: list, p: float, error_if_nonfinite: bool = False, group=None, *,
                       per_tensor: bool = False) -> torch.Tensor:
    r"""The p-norm of sharded tensors seen as one vector (what :func:`fastclip.total_norm` runs for
    ``group=`` or DTensor inputs).

    Args:
        tensors (list[Tensor]): this rank's tensors: DTensors, or plain tensors that are shards
            over ``group`` (replicated when ``group`` is None).
        p (float): order of the norm, > 0 or ``inf``.
        error_if_nonfinite (bool, optional): raise RuntimeError on every rank if the norm is NaN or
            inf (synchronizes). Default: False
        group (ProcessGroup, optional): the group plain tensors are sharded over. Default: None
        per_tensor (bool, optional): not supported yet (raises NotImplementedError). Default: False

    Returns:
        Tensor: the global norm, 0-d, float32 (float64 if any local tensor is float64), on the
        tensors' device, equal on every rank.

    Example::

        >>> import os, tempfile, torch, torch.distributed as dist, fastclip
        >>> store = os.path.join(tempfile.mkdtemp(), "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> fastclip.total_norm([torch.tensor([3.0, 4.0])], group=dist.group.WORLD)
        tensor(5.)
        >>> dist.destroy_process_group()
    """
    if per_tensor:
        raise NotImplementedError("per_tensor=True is not supported with sharded tensors yet")
    return _norm(tensors, p, error_if_nonfinite, group)[0]


def clip_sharded_(grads: list, max_norm, p: float, error_if_nonfinite: bool = False, group=None, *,
                  per_tensor: bool = False) -> torch.Tensor:
    r"""Clip sharded gradients in place by their global norm (what :func:`fastclip.clip_` runs for
    ``group=`` or DTensor gradients). Every rank scales its shards by the same coefficient:

    .. math::
        g \leftarrow g \cdot \min\Big(\frac{\text{max\_norm}}{\|g\|_p + 10^{-6}},\ 1\Big)

    Args:
        grads (list[Tensor]): this rank's gradients: DTensors, or plain tensors that are shards
            over ``group`` (replicated when ``group`` is None).
        max_norm (float or Tensor): the threshold, already validated; a tensor is never read on
            the host.
        p (float): order of the norm, > 0 or ``inf``.
        error_if_nonfinite (bool, optional): raise RuntimeError on every rank, before any
            gradient is modified, if the norm is NaN or inf (synchronizes). Default: False
        group (ProcessGroup, optional): the group plain tensors are sharded over. Default: None
        per_tensor (bool, optional): not supported yet (raises NotImplementedError). Default: False

    Returns:
        Tensor: the global norm before clipping, a plain 0-d tensor (float32, float64 if any
        gradient is float64) on the gradients' device, equal on every rank. torch returns a
        DTensor here; this is its ``.full_tensor()``.

    Example::

        >>> import os, tempfile, torch, torch.distributed as dist, fastclip
        >>> store = os.path.join(tempfile.mkdtemp(), "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> fastclip.clip_([w], 1.0, group=dist.group.WORLD)
        tensor(5.)
        >>> w.grad
        tensor([0.6000, 0.8000])
        >>> dist.destroy_process_group()
    """
    if per_tensor:
        raise NotImplementedError("per_tensor=True is not supported with sharded gradients yet")
    if not error_if_nonfinite and p != math.inf:
        norm = _clip_between_launches(grads, max_norm, p, group)
        if norm is not None:
            return norm
    norm, scale, works = _norm(grads, p, error_if_nonfinite, group)
    if scale:
        _engine.works_clip_with_norm(works or route(scale), scale, max_norm, norm)
    return norm


def single_reduction(grads: list, group):
    """(local tensors, process group) when ``grads`` are one set of shards whose power sums are
    all-reduced over one group (FSDP2's DTensors, or plain shards with ``group=``); else None
    (several meshes or placements, replicated only): then the general path of :func:`_norm` serves.

    Every rank must take the same path (they meet in the collective): this decides from what all
    ranks share (the placements, the group), never from whether this rank holds gradients.
    """
    jobs, scale = _split(grads, group)
    if len(jobs) != 1 or jobs[0].norm_tensors is not scale or len(jobs[0].groups) != 1:
        return None
    return scale, jobs[0].groups[0]


def partials_reducer(group):
    """The ``reduce_partials`` hook of the backends' ``clip``/``clip_with_policy``: sums the
    float64 partials of every rank over ``group``, between the norm pass and the scale pass.

    The summed vector has the same size on every rank (``size``, the largest grid; ranks may run
    different grids, and zeros add nothing), so all ranks reduce bitwise the same values.
    """

    def all_reduce_partials(partials, n, size):
        import torch.distributed as dist

        summed = torch.zeros(size, dtype=partials.dtype, device=partials.device)
        summed[:n].copy_(partials[:n])
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=group)
        return summed, size

    return all_reduce_partials


def _clip_between_launches(grads: list, max_norm, p: float, group):
    """The common case, as the design has it: one set of shards reduced over one group (FSDP2,
    or plain shards with ``group=``). The backend's power sums are all-reduced between its two
    passes (Triton: the norm launch's partials, between the two launches), and the second pass
    turns the global sum into the norm and the coefficient: 2 launches + 1 collective,
    deterministic (fixed-size, fixed-order sums). None when another path is needed (several
    meshes or placements, Partial).
    """
    shards = single_reduction(grads, group)
    if shards is None:
        return None
    scale, reduce_group = shards
    if scale:
        works = route(scale)
        if len(works) != 1:
            return None
        work, dtype = works[0], _engine.norm_dtype(works)
    else:
        # no gradients here: an empty work still runs both passes, so this rank joins the
        # collective and reduces the partials exactly as the others do (bitwise the same norm)
        work, dtype = empty_work(device_of(reduce_group)), torch.float32
    _, kind = _inputs.parse_norm_type(p)
    return work.backend.clip(work, scale, max_norm, p, kind, dtype, reduce_partials=partials_reducer(reduce_group))


def clip_with_norm_sharded_(grads: list, max_norm, total_norm) -> None:
    r"""Scale sharded gradients in place given their global norm (e.g. from
    :func:`total_norm_sharded`): every rank scales its local shards, no communication.

    .. math::
        g \leftarrow g \cdot \min\Big(\frac{\text{max\_norm}}{\text{total\_norm} + 10^{-6}},\ 1\Big)

    Correct for every placement: scaling is linear, so it commutes with sharding, replication
    and Partial sums.

    Args:
        grads (list[Tensor]): DTensor gradients (their local shards are scaled) or plain tensors.
        max_norm (float or Tensor): the threshold, already validated.
        total_norm (Tensor): the global norm, a plain 0-d tensor or a replicated DTensor.

    Returns:
        None
    """
    if not isinstance(total_norm, torch.Tensor):
        total_norm = torch.tensor(float(total_norm))
    elif _inputs.is_dtensor(total_norm):
        total_norm = total_norm.full_tensor()
    local = [g._local_tensor if _inputs.is_dtensor(g) else g for g in grads]
    if local:
        _engine.clip_with_norm(local, max_norm, total_norm.reshape(()))
