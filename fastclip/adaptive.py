r"""Stateful clippers: the threshold ``c`` comes from the history of gradient norms, on the device.

Every clipper is called once per training step, between ``loss.backward()`` and
``optimizer.step()``::

    clipper = fastclip.ZClipper()
    ...
    loss.backward()
    result = clipper(model.parameters())      # ClipResult of 0-d device tensors
    optimizer.step()

Everything a policy keeps (step count, sums, EMA mean and variance, norm history) lives in
preallocated device tensors that are updated in place; nothing is ever read on the host.  So a
step never synchronizes with the GPU, and (except where noted: ``PercentileClipper`` with
unbounded history) runs the same kernels on the same buffers every step, which is what CUDA-graph
capture needs.  How a step runs:

* On the Triton path (CUDA), :class:`FixedClipper`, :class:`MeanClipper`, :class:`ZClipper` and
  :class:`PercentileClipper` with ``window <= 4096`` run in the two launches of
  :func:`fastclip.clip_`: the norm launch, then the scale launch, whose programs each compute the
  threshold from the clipper's state (one small float64 device buffer, of which the state tensors
  are views); the last program to read it writes the new state and the results.  Nothing else
  runs on the device.  Sharded gradients (``group=``, or FSDP2's DTensors on one mesh) add one
  all-reduce of the norm launch's partial sums between the two launches, as ``clip_`` does.
* Otherwise (the plain-PyTorch path, e.g. on the CPU; ``PercentileClipper`` with unbounded
  history or a window over 4096; gradients on several devices; DTensors over several meshes or
  placements; the inf-norm of sharded gradients; inside ``torch.compile``; a subclass's own
  policy) a step is :func:`fastclip.total_norm` (with ``group=``: the global norm, through
  ``fastclip.distributed``), 15-30 one-element torch ops for the policy
  (:meth:`Clipper._threshold`), then :func:`fastclip.clip_with_norm_` with the threshold as a 0-d
  device tensor.  This torch-op implementation is also the reference: on the same norms, the
  kernel's thresholds, results, state and gradients are bitwise the same
  (tests/test_policy_kernel.py).

Sharded gradients: every rank gets the global norm, bitwise the same on every rank, so every
rank computes the same threshold and keeps the same state (tests/test_distributed.py); every rank
must call the clipper at every step, with or without gradients, and hold its gradients on one
device.

Conventions shared by all policies:

* The threshold of step ``t`` is computed before step ``t`` is clipped and is applied with torch's
  rule ``coef = min(c / (norm + 1e-6), 1)``.  ``c = inf`` means "no clipping this step".
* Non-finite norms never enter the statistics: a step whose norm is NaN or inf leaves the
  clipper's state bitwise unchanged (it does not count as a step), whatever ``nonfinite`` says.
* ``nonfinite`` picks what happens to the gradients of such a step:

  - ``'propagate'`` (default): as torch, they are scaled by the NaN or 0 coefficient;
  - ``'skip'``: the coefficient is 0 and ``result.found_inf`` is 1.0, on the device; hand that
    flag to the optimizer (see :func:`step_if_finite`) so the step is skipped without a sync;
  - ``'error'``: raise RuntimeError before touching gradients or state (this reads the norm on the
    host: the one mode that synchronizes, as ``error_if_nonfinite=True``).

* ``state_dict()`` / ``load_state_dict()`` save and restore every tensor bitwise: a resumed run
  produces the same thresholds as an uninterrupted one.  ``load_state_dict`` copies into the
  existing buffers when they exist, so a captured CUDA graph stays valid.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from . import _dispatch, _inputs, distributed
from . import custom_op as _custom_op
from ._backend import use_triton
from ._dispatch import empty_work, route
from .api import clip_with_norm_, total_norm
from .kernels.launch_settings import (NONFINITE_ERROR, NONFINITE_PROPAGATE, NONFINITE_SKIP, POLICY_FIXED,
                                      POLICY_MAX_WINDOW, POLICY_MEAN, POLICY_NONE, POLICY_PERCENTILE, POLICY_SETTINGS,
                                      POLICY_WORD_ARRAYS, POLICY_WORD_COUNT, POLICY_WORD_NONFINITE, POLICY_WORD_SETTINGS,
                                      POLICY_WORD_STAT0, POLICY_WORD_STAT1, POLICY_ZCLIP, f64_bits)

__all__ = ["ClipResult", "Clipper", "FixedClipper", "MeanClipper", "PercentileClipper", "ZClipper",
           "step_if_finite"]

_NONFINITE_MODES = {"propagate": NONFINITE_PROPAGATE, "skip": NONFINITE_SKIP, "error": NONFINITE_ERROR}
_STAT = torch.float64  # statistics are kept in float64: sums over millions of steps stay exact enough


class ClipResult(NamedTuple):
    """What one clipper step did, as 0-d tensors on the gradients' device (never read on the host).

    Attributes:
        norm (Tensor): total norm of the gradients before clipping (float32; float64 for fp64 grads).
        threshold (Tensor): the ``max_norm`` used this step, same dtype as ``norm``; ``inf`` when
            the policy did not clip (e.g. during warm-up).
        coef (Tensor): the factor the gradients were multiplied by, ``min(threshold / (norm +
            1e-6), 1)`` (0 for a skipped non-finite step).
        clipped (Tensor): bool, True when the gradients were rewritten (``coef < 1`` or NaN).
        found_inf (Tensor): float32 1.0 if the norm was NaN or inf, else 0.0 (GradScaler's
            ``found_inf`` convention).
    """

    norm: torch.Tensor
    threshold: torch.Tensor
    coef: torch.Tensor
    clipped: torch.Tensor
    found_inf: torch.Tensor


def _sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root of a float64 tensor, as the kernel's sqrt.rn.f64.

    On the CPU ``torch.sqrt`` goes through MKL's vdSqrt, which misrounds about 1 % of doubles
    (2 532 of 200 000 random ones, torch 2.13); the square root of the complex number x + 0i is
    computed with the C library's correctly rounded sqrt (glibc csqrt).  Elsewhere (CUDA)
    ``torch.sqrt`` is IEEE-rounded already.
    """
    if x.device.type != "cpu":
        return torch.sqrt(x)
    return torch.sqrt(x.to(torch.complex128)).real


def _check_number(value, name: str, *, low: float, low_ok: bool = True, high: float = math.inf,
                  allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    bad_low = value < low or (value == low and not low_ok)
    if math.isnan(value) or bad_low or value > high or (math.isinf(value) and not allow_inf):
        bound = ">=" if low_ok else ">"
        raise ValueError(f"{name} must be {bound} {low}" + (f" and <= {high}" if high < math.inf else "")
                         + f", got {value}")
    return value


def _check_int(value, name: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


class Clipper:
    r"""Base class of the stateful clippers: norm, policy threshold, scale, all on the device.

    A subclass implements :meth:`_new_state` (the preallocated device buffers) and
    :meth:`_threshold` (this step's threshold from the state and the norm, updating the state in
    place, with tensor ops only: no ``.item()``, no ``bool(tensor)``, no Python ``if`` on tensor
    values).  The base class does the rest.  A policy that the scale launch also computes itself
    (``kernels/policy_ops.py``) names its code in ``_POLICY``, the buffer word of each state tensor
    in ``_SLOTS`` and its hyper-parameters in :meth:`_settings`; :meth:`_threshold` stays the
    reference (and the CPU path).

    Args:
        norm_type (float or str, optional): order of the norm, as in :func:`fastclip.clip_`.
            Default: 2.0
        nonfinite (str, optional): ``'propagate'``, ``'skip'`` or ``'error'`` (module docstring).
            Default: ``'propagate'``
        group (ProcessGroup, optional): the gradients on each rank are shards of one model over
            this group (tensor, pipeline or hand-made sharding): the norm is the global one, so
            every rank computes the same threshold and keeps the same state.  DTensor gradients
            (FSDP2, tensor parallel) need no group.  Default: None
    """

    _POLICY = POLICY_NONE  # the policy code of the scale launch (launch_settings.POLICY_*); none: torch ops
    _SLOTS: dict = {}  # state tensor name -> its first word in the policy buffer

    def __init__(self, *, norm_type=2.0, nonfinite: str = "propagate", group=None):
        self._p, self._kind = _inputs.parse_norm_type(norm_type)  # validate now, not at the first step
        if nonfinite not in _NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {', '.join(map(repr, _NONFINITE_MODES))}, got {nonfinite!r}")
        self.norm_type = norm_type
        self.nonfinite = nonfinite
        self.group = group
        self._state: dict[str, torch.Tensor] | None = None  # allocated at the first step, on its device
        self._buffer: torch.Tensor | None = None  # the policy buffer the state tensors are views of
        self._derived_valid = False  # buffer words derived from the state (percentile: sorted copies)
        self._fuse_policy = True  # False: torch ops even on the Triton path (the reference, in tests)

    # ----------------------------------------------------------------------------------------
    # what a policy provides
    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def _threshold(self, state: dict, norm: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """This step's threshold (0-d float64); updates ``state`` in place, only where ``finite``."""
        raise NotImplementedError

    def _config(self) -> dict:
        return {}

    def _before_step(self) -> None:
        """Host-side hook run before each step (no tensor reads); default: nothing."""

    def _kernel_policy(self) -> int:
        """The scale launch's policy code for this clipper, or POLICY_NONE (torch ops)."""
        return self._POLICY

    def _settings(self) -> dict:
        """Hyper-parameters for the policy buffer, by the names of launch_settings.POLICY_SETTINGS."""
        return {}

    def _array_words(self) -> int:
        """Words of the policy buffer after the fixed header (percentile: its window, three times)."""
        return 0

    def _refresh_derived(self) -> None:
        """Rewrite the buffer words derived from the state (after it changed outside the kernel)."""

    # ----------------------------------------------------------------------------------------
    def _state_on(self, device: torch.device) -> dict:
        if self._state is None:
            self._state = self._allocate(self._new_state(device), device)
        elif any(t.device != device for t in self._state.values()):
            # e.g. a state loaded on the CPU, first used on the GPU: one copy, before any capture
            self._state = self._allocate({k: t.to(device) for k, t in self._state.items()}, device)
        return self._state

    def _allocate(self, state: dict, device: torch.device) -> dict:
        """``state`` as views of a new policy buffer on ``device`` (values copied), if this clipper
        has a kernel policy and the tensors have the layout it expects; else ``state`` itself."""
        self._buffer, self._derived_valid = None, False
        code = self._kernel_policy()
        if code == POLICY_NONE:
            return state
        expected = self._new_state(torch.device("meta"))
        if state.keys() != expected.keys() or any((state[k].shape, state[k].dtype) != (t.shape, t.dtype)
                                                  for k, t in expected.items()):
            return state  # e.g. a window loaded with strict=False: the torch ops serve it
        header = torch.zeros(POLICY_WORD_ARRAYS, dtype=torch.int64)
        header[POLICY_WORD_NONFINITE] = _NONFINITE_MODES[self.nonfinite]
        settings = self._settings()
        for i, entry in enumerate(POLICY_SETTINGS[code]):
            name, _, kind = entry.partition(":")
            value = settings[name]
            header[POLICY_WORD_SETTINGS + i] = int(value) if kind == "i" else f64_bits(value)
        buffer = torch.empty(POLICY_WORD_ARRAYS + self._array_words(), dtype=_STAT, device=device)
        buffer.view(torch.int64)[:POLICY_WORD_ARRAYS].copy_(header)
        views = {}
        for name, t in state.items():
            first = self._SLOTS[name]
            views[name] = buffer[first: first + t.numel()].view(t.dtype).view(t.shape)
            views[name].copy_(t)
        self._buffer = buffer
        return views

    def __call__(self, parameters, *, per_tensor: bool = False):
        r"""Clip the gradients of ``parameters`` in place with this step's threshold.

        Args:
            parameters (Iterable[Tensor] or Tensor): tensors whose ``.grad`` will be clipped;
                ``None`` grads are skipped.
            per_tensor (bool, optional): also return each gradient's norm before clipping, from
                the same norm launch (as ``fastclip.total_norm(..., per_tensor=True)``), e.g. for
                :class:`fastclip.monitor.NormRecorder`. Default: False

        Returns:
            ClipResult: ``(norm, threshold, coef, clipped, found_inf)``, 0-d tensors on the
            gradients' device; with ``per_tensor=True``, a tuple ``(result, norms)`` with
            ``norms`` 1-D in gradient order.  With no gradients at all: norm 0 and coef 1 on the
            CPU, and the state is left untouched (with ``group=``, a rank without gradients
            still takes part: it gets the global norm and updates its state like the others).

        Raises:
            NotImplementedError: ``per_tensor=True`` with sharded gradients (``group=`` or DTensor).
        """
        with torch.no_grad():
            return self._step(parameters, per_tensor)

    def step(self, model_or_parameters):
        r"""Clip the gradients of a module's parameters (or of ``parameters``): the official ZClip
        class's ``step(model)``, for every clipper.  Call it after ``loss.backward()`` and before
        ``optimizer.step()``.

        Args:
            model_or_parameters (torch.nn.Module or Iterable[Tensor] or Tensor): a module (its
                ``.parameters()`` are clipped) or the parameters themselves.

        Returns:
            ClipResult: as :meth:`__call__` (device tensors; the official ``step`` returns the
            norm as a Python float, which costs a host sync per step).

        Example::

            >>> import torch, fastclip
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> model.weight.grad = torch.tensor([[3.0, 4.0]])
            >>> fastclip.FixedClipper(1.0).step(model).norm
            tensor(5.)
        """
        if isinstance(model_or_parameters, torch.nn.Module):
            model_or_parameters = model_or_parameters.parameters()
        return self(model_or_parameters)

    def _step(self, parameters, per_tensor: bool):
        params = _inputs.as_tensor_list(parameters)
        grads, key = _dispatch.collect(params, of_params=True)  # as clip_: the native helper's fast path
        # a native key means the helper saw plain tensors only
        sharded = self.group is not None or (key is None and _inputs.has_dtensor(grads))
        if sharded and per_tensor:
            raise NotImplementedError("per_tensor=True is not supported with sharded gradients (group= or DTensor) yet")
        if not grads and not sharded:  # sharded: a rank without gradients still joins the collective
            zero = torch.tensor(0.0)
            result = ClipResult(zero, torch.tensor(math.inf), torch.tensor(1.0), torch.tensor(False), zero.clone())
            return (result, torch.zeros(0)) if per_tensor else result
        fused = self._fused_route(grads, key, params, sharded)
        if fused is not None:
            work, local, reduce_partials = fused
            self._state_on(work.device)
            if self._buffer is not None:  # the state has the layout the kernel expects
                return self._kernel_step(work, local, per_tensor, reduce_partials)
        return self._torch_step(params, grads, per_tensor)

    def _fused_route(self, grads: list, key, params: list, sharded: bool):
        """``(work, local gradients, reduce_partials)`` when this step can run in the two launches
        of clip_ (sharded: with the all-reduce of the partials between them), else None.

        On several ranks, every rank must decide the same way (they meet in the collective):
        from the clipper's settings, the backend of the device, the placements and the group.
        """
        if not self._fuse_policy or self._kernel_policy() == POLICY_NONE or _custom_op.is_compiling():
            return None
        reduce_partials = None
        if sharded:
            if self._p == math.inf:
                return None  # the partials are maxima: the torch path reduces them with MAX
            shards = distributed.single_reduction(grads, self.group)
            if shards is None:
                return None  # several meshes or placements: the torch path combines them
            grads, group = shards
            key, reduce_partials = None, distributed.partials_reducer(group)
            if not grads:
                device = distributed.device_of(group)
                return (empty_work(device), grads, reduce_partials) if use_triton(device) else None
        first = grads[0]
        if not isinstance(first, torch.Tensor) or not use_triton(first.device):
            return None  # the torch-op path handles (or rejects) these
        try:
            works = route(grads, key)
        except TypeError:
            _inputs.check_param_grads(params)  # a bad gradient: name its parameter's position
            raise
        return (works[0], grads, reduce_partials) if len(works) == 1 and works[0].triton else None

    def _kernel_step(self, work, grads: list, per_tensor: bool, reduce_partials=None):
        from . import _triton_backend  # imports triton: only on the Triton path

        self._before_step()
        if not self._derived_valid:
            self._refresh_derived()
            self._derived_valid = True
        norm_dtype = torch.float64 if work.has_fp64 else torch.float32
        out = _triton_backend.clip_with_policy(work, grads, self._p, self._kind, norm_dtype, self._kernel_policy(),
                                               self._buffer, per_tensor=per_tensor, reduce_partials=reduce_partials)
        values, norms = out if per_tensor else (out, None)
        result = ClipResult(*values)
        # nonfinite='error': the kernel left grads and state alone; reading the flag is the one sync
        if self.nonfinite == "error" and bool(result.found_inf):
            raise _inputs.nonfinite_error(self._p)
        return (result, norms) if per_tensor else result

    def _torch_step(self, params: list, grads: list, per_tensor: bool):
        """The torch-op implementation: total_norm, the policy as tensor ops, clip_with_norm_."""
        if per_tensor:
            norm, norms = total_norm(grads, self.norm_type, per_tensor=True)
        else:
            norm = total_norm(grads, self.norm_type, group=self.group)
        finite = torch.isfinite(norm)
        if self.nonfinite == "error" and not bool(finite):  # the one mode that reads the device
            raise _inputs.nonfinite_error(self._p)
        self._before_step()
        state = self._state_on(norm.device)
        threshold = self._threshold(state, norm.to(_STAT), finite).to(norm.dtype)
        self._derived_valid = False  # the state changed outside the kernel
        if self.nonfinite == "skip":
            # coef = 0 / (1 + 1e-6) = 0 exactly; where() passes finite values through bitwise
            scale_threshold = torch.where(finite, threshold, 0.0)
            scale_norm = torch.where(finite, norm, 1.0)
        else:
            scale_threshold, scale_norm = threshold, norm
        clip_with_norm_(params, scale_threshold, scale_norm)
        coef = torch.clamp(scale_threshold / (scale_norm + 1e-6), max=1.0)  # what the scale launch used
        clipped = torch.logical_not(coef >= 1.0)  # NaN coefficients rewrite the gradients too
        found_inf = torch.logical_not(finite).to(torch.float32)
        result = ClipResult(norm, threshold, coef, clipped, found_inf)
        return (result, norms) if per_tensor else result

    # ----------------------------------------------------------------------------------------
    def _host_state(self) -> dict:
        return {}

    def _load_host_state(self, host: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """The clipper's state: policy name, hyper-parameters and copies of its device tensors.

        Returns:
            dict: ``{'policy', 'config', 'state', 'host'}``; ``state`` is empty before the first step.
        """
        state = {} if self._state is None else {k: t.detach().clone() for k, t in self._state.items()}
        return {"policy": type(self).__name__, "config": self._config(), "state": state,
                "host": self._host_state()}

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Restore a state from :meth:`state_dict`; later thresholds are bitwise those of the saved run.

        Args:
            state_dict (dict): from :meth:`state_dict` of the same policy.
            strict (bool, optional): raise ValueError if the saved hyper-parameters differ from
                this clipper's (the thresholds would then differ too). Default: True

        Raises:
            ValueError: another policy, different hyper-parameters (with ``strict``), or missing tensors.
        """
        if state_dict.get("policy") != type(self).__name__:
            raise ValueError(f"state_dict is for {state_dict.get('policy')!r}, not {type(self).__name__!r}")
        mine, theirs = self._config(), self._upgrade_config(state_dict.get("config", {}))
        if strict and mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"{type(self).__name__}.load_state_dict: saved hyper-parameters differ in "
                             f"{', '.join(diff)} (saved {theirs}, this clipper {mine}); "
                             f"pass strict=False to load anyway")
        saved = self._upgrade_state(state_dict.get("state", {}))
        self._load_host_state(state_dict.get("host", {}))
        self._derived_valid = False
        if not saved:
            self._state, self._buffer = None, None
            return
        names = set(self._state) if self._state is not None else set(self._new_state(torch.device("meta")))
        if set(saved) != names:
            raise ValueError(f"state_dict holds tensors {sorted(saved)}, expected {sorted(names)}")
        if self._state is None or any(saved[k].shape != t.shape for k, t in self._state.items()):
            device = next(iter(saved.values())).device
            self._state = self._allocate({k: t.detach().clone() for k, t in saved.items()}, device)
            return
        for k, t in self._state.items():  # in place: buffers keep their addresses (CUDA graphs)
            t.copy_(saved[k])

    def _upgrade_state(self, saved: dict) -> dict:
        """A state saved by an earlier fastclip, in this version's layout (default: as it is)."""
        return saved

    def _upgrade_config(self, saved: dict) -> dict:
        """Hyper-parameters saved by an earlier fastclip, with the ones added since at the values
        that reproduce its rule (default: as they are)."""
        return saved

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"


class FixedClipper(Clipper):
    r"""Clip to a fixed threshold ``c``: :func:`fastclip.clip_` behind the stateful interface.

    .. math::
        g \leftarrow g \cdot \min\Big(\frac{c}{\|g\| + 10^{-6}},\ 1\Big)

    Args:
        max_norm (float): the threshold c >= 0.
        norm_type (float or str, optional): order of the norm. Default: 2.0
        nonfinite (str, optional): ``'propagate'``, ``'skip'`` or ``'error'``. Default: ``'propagate'``
        group (ProcessGroup, optional): shards over a process group (see :class:`Clipper`). Default: None

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> clipper = fastclip.FixedClipper(1.0)
        >>> r = clipper([w])
        >>> r.norm, r.threshold, bool(r.clipped)
        (tensor(5.), tensor(1.), True)
        >>> w.grad
        tensor([0.6000, 0.8000])

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv 1211.5063).
    """

    _POLICY = POLICY_FIXED
    _SLOTS = {"threshold": POLICY_WORD_STAT0}

    def __init__(self, max_norm: float, *, norm_type=2.0, nonfinite: str = "propagate", group=None):
        super().__init__(norm_type=norm_type, nonfinite=nonfinite, group=group)
        self.max_norm = _check_number(max_norm, "max_norm", low=0.0, allow_inf=True)

    def _config(self) -> dict:
        return {"max_norm": self.max_norm}

    def _new_state(self, device):
        return {"threshold": torch.full((), self.max_norm, dtype=_STAT, device=device)}

    def _threshold(self, state, norm, finite):
        return state["threshold"]


class MeanClipper(Clipper):
    r"""Warm up, then clip to ``factor`` times the mean gradient norm.

    Pascanu et al. (2013): "a good heuristic for setting this threshold is to look at statistics
    on the average norm over a sufficiently large number of updates".  For the first
    ``warmup_steps`` steps (counting steps with a finite norm) the threshold is
    ``warmup_max_norm`` (None: no clipping) and the norms are averaged; then

    .. math::
        c_t = \text{factor} \cdot \text{mean}_s \min(\|g_s\|, c_s)

    (:math:`c_s = \infty` while warming up without ``warmup_max_norm``, so warm-up norms enter as
    they are).  Which norms the mean covers:

    * ``running=False`` (default): the warm-up norms only.  The threshold is set once, at the end
      of the warm-up, and then fixed: the seed's advice ("train a little, look at the norms,
      start from their mean") as a policy.  Spikes after the warm-up can't move it.
    * ``running=True``: every norm so far, warm-up and after, each counted *after clipping*,
      :math:`\min(\|g_s\|, c_s)`: a spike can raise the mean by at most
      :math:`\text{factor} \cdot c_s / t`, so exploding steps don't drag the threshold up with
      them, and a slow change of the typical norm is followed.  Because clipped norms enter at
      :math:`c_s`, the mean of a noisy norm sits below the threshold: with ``factor`` <= 1 the
      threshold keeps creeping down (at rate 1/t) towards the low end of the norm distribution;
      use ``factor`` >= 1.5 for a level that tracks the norm.

    The sum and the count are float64 / int64 device tensors.

    Args:
        warmup_steps (int): steps (>= 1) averaged before the mean is used.
        factor (float, optional): multiplier of the mean (> 0). Default: 1.0
        warmup_max_norm (float, optional): threshold during warm-up; None = no clipping. Default: None
        running (bool, optional): keep averaging after the warm-up (see above). Default: False
        norm_type (float or str, optional): order of the norm. Default: 2.0
        nonfinite (str, optional): ``'propagate'``, ``'skip'`` or ``'error'``. Default: ``'propagate'``
        group (ProcessGroup, optional): shards over a process group (see :class:`Clipper`). Default: None

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> clipper = fastclip.MeanClipper(warmup_steps=2)
        >>> for g in [1.0, 3.0, 10.0]:
        ...     w.grad = torch.tensor([g])
        ...     r = clipper([w])
        >>> r.threshold, w.grad          # mean of 1 and 3
        (tensor(2.), tensor([2.0000]))

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv 1211.5063), section 3.2.
    """

    def __init__(self, warmup_steps: int, factor: float = 1.0, warmup_max_norm: float | None = None, *,
                 running: bool = False, norm_type=2.0, nonfinite: str = "propagate", group=None):
        super().__init__(norm_type=norm_type, nonfinite=nonfinite, group=group)
        self.warmup_steps = _check_int(warmup_steps, "warmup_steps", low=1)
        self.factor = _check_number(factor, "factor", low=0.0, low_ok=False)
        self.warmup_max_norm = (None if warmup_max_norm is None
                                else _check_number(warmup_max_norm, "warmup_max_norm", low=0.0, allow_inf=True))
        self.running = bool(running)

    _POLICY = POLICY_MEAN
    _SLOTS = {"count": POLICY_WORD_COUNT, "sum": POLICY_WORD_STAT0}

    def _config(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "factor": self.factor, "warmup_max_norm": self.warmup_max_norm,
                "running": self.running}

    def _settings(self) -> dict:
        warm = math.inf if self.warmup_max_norm is None else self.warmup_max_norm
        return {"warmup_steps": self.warmup_steps, "factor": self.factor, "warmup_max_norm": warm,
                "running": self.running}

    def _new_state(self, device):
        return {"count": torch.zeros((), dtype=torch.int64, device=device),
                "sum": torch.zeros((), dtype=_STAT, device=device)}

    def _threshold(self, state, norm, finite):
        count, total = state["count"], state["sum"]
        warm = math.inf if self.warmup_max_norm is None else self.warmup_max_norm
        warming = count < self.warmup_steps
        averaged = count if self.running else torch.clamp(count, max=self.warmup_steps)
        mean = total / torch.clamp(averaged, min=1)
        threshold = torch.where(warming, warm, mean * self.factor)
        add = finite if self.running else finite & warming
        total.add_(torch.where(add, torch.minimum(norm, threshold), 0.0))
        count.add_(finite)
        return threshold


class PercentileClipper(Clipper):
    r"""AutoClip: clip to the p-th percentile of the history of gradient norms.

    At each step the current norm is appended to the history, then (Seetharaman et al. 2020,
    Algorithm 1, reference code ``np.percentile(grad_history, p)``)

    .. math::
        c_t = \text{percentile}_p\big(\|g_1\|, \dots, \|g_t\|\big)

    with numpy's default (linear) interpolation, computed on the device: the history lives in a
    preallocated buffer padded with +inf, which is sorted each step (the finite norms come first),
    and the two neighbouring order statistics are gathered at device-computed ranks.  No host read.
    As in the reference code (which calls ``torch.nn.utils.clip_grad_norm_``), a norm that is
    itself the percentile (e.g. the first step) is scaled by ``norm / (norm + 1e-6)``.

    Two history modes:

    * ``window=N``: the last N finite norms, in a fixed ring buffer.  Constant cost per step
      (a sort of N values), fixed buffers: CUDA-graph capturable.  On the Triton path with
      N <= 4096 the scale launch computes it (no sort: the policy buffer also keeps the window
      sorted, and each step exchanges the oldest norm for the new one at their ranks).
    * ``window=None`` (AutoClip's unbounded history): every finite norm since the start.  The
      buffer grows by doubling from ``capacity``, decided on the host from the number of calls (an
      upper bound of the number of recorded norms, known without reading the device), so growth
      never syncs; only the filled prefix is sorted.  Memory is 8 bytes per step (8 MB per million
      steps) and cost is O(t log t) per step, as the reference's O(t) per-step percentile.  The
      buffer's address and the sorted length change, so this mode can't be captured in a CUDA graph.

    Args:
        percentile (float, optional): p in [0, 100]; the AutoClip paper recommends 10. Default: 10.0
        window (int, optional): keep only the last ``window`` norms; None = unbounded. Default: None
        capacity (int, optional): initial buffer length for the unbounded history. Default: 1024
        norm_type (float or str, optional): order of the norm. Default: 2.0
        nonfinite (str, optional): ``'propagate'``, ``'skip'`` or ``'error'``. Default: ``'propagate'``
        group (ProcessGroup, optional): shards over a process group (see :class:`Clipper`). Default: None

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> clipper = fastclip.PercentileClipper(percentile=50)
        >>> for g in [1.0, 2.0, 3.0, 100.0]:
        ...     w.grad = torch.tensor([g])
        ...     r = clipper([w])
        >>> r.threshold, w.grad          # median of 1, 2, 3, 100
        (tensor(2.5000), tensor([2.5000]))

    References:
        Seetharaman, Wichern, Pardo & Le Roux, "AutoClip: Adaptive Gradient Clipping for Source
        Separation Networks", MLSP 2020 (arXiv 2007.14469); reference code
        https://github.com/pseeth/autoclip/blob/7de6a2fc43553eace2daf384301a712808a98b01/autoclip.py
    """

    def __init__(self, percentile: float = 10.0, window: int | None = None, *, capacity: int = 1024,
                 norm_type=2.0, nonfinite: str = "propagate", group=None):
        super().__init__(norm_type=norm_type, nonfinite=nonfinite, group=group)
        self.percentile = _check_number(percentile, "percentile", low=0.0, high=100.0)
        self.window = None if window is None else _check_int(window, "window", low=1)
        self.capacity = _check_int(capacity, "capacity", low=1)
        self._calls = 0  # host-side count of steps: bounds the number of recorded norms, no sync

    _SLOTS = {"history": POLICY_WORD_ARRAYS, "count": POLICY_WORD_COUNT}

    def _config(self) -> dict:
        return {"percentile": self.percentile, "window": self.window}

    def _kernel_policy(self) -> int:
        fits = self.window is not None and self.window <= POLICY_MAX_WINDOW
        return POLICY_PERCENTILE if fits else POLICY_NONE

    def _settings(self) -> dict:
        return {"window": self.window, "quantile": self.percentile / 100.0}

    def _array_words(self) -> int:
        return 3 * self.window  # the ring, then two sorted copies of it

    def _refresh_derived(self) -> None:
        # both sorted copies (the kernel reads copy count % 2): no need to read the count
        start = POLICY_WORD_ARRAYS + self.window
        copies = self._buffer[start: start + 2 * self.window].view(2, self.window)
        copies.copy_(torch.sort(self._state["history"]).values)

    def _host_state(self) -> dict:
        return {"calls": self._calls}

    def _load_host_state(self, host: dict) -> None:
        self._calls = int(host.get("calls", 0))

    def _new_state(self, device):
        length = self.window if self.window is not None else max(self.capacity, self._calls + 1)
        return {"history": torch.full((length,), math.inf, dtype=_STAT, device=device),
                "count": torch.zeros((), dtype=torch.int64, device=device)}

    def _before_step(self) -> None:
        self._calls += 1
        if self.window is None and self._state is not None and self._state["history"].numel() < self._calls:
            # unbounded history: double on the host's count, a device-to-device copy, no sync
            old = self._state["history"]
            grown = torch.full((2 * old.numel(),), math.inf, dtype=_STAT, device=old.device)
            grown[: old.numel()].copy_(old)
            self._state["history"] = grown

    def _threshold(self, state, norm, finite):
        history, count = state["history"], state["count"]
        length = history.numel()
        pos = torch.remainder(count, length).reshape(1)  # ring position (== count when unbounded)
        # append the current norm (rewrite the old value when it is not finite: state unchanged)
        history.scatter_(0, pos, torch.where(finite, norm, history.gather(0, pos)).reshape(1))
        count.add_(finite)
        n = torch.clamp(count, max=length)  # number of recorded norms
        # unbounded: the recorded norms are in the first `_calls` slots; sort only those
        live = history if self.window is not None else history[: min(self._calls, length)]
        ordered = torch.sort(live).values  # +inf padding sorts last
        # numpy 'linear': virtual index (n - 1) * p / 100, lerp between its floor and ceil neighbours
        index = (n - 1).to(_STAT) * (self.percentile / 100.0)
        lo = torch.floor(index)
        t = index - lo
        last = torch.clamp(n - 1, min=0)
        lo_i = torch.minimum(torch.clamp(lo.to(torch.int64), min=0), last)
        hi_i = torch.minimum(lo_i + 1, last)
        a = ordered.gather(0, lo_i.reshape(1)).reshape(())
        b = ordered.gather(0, hi_i.reshape(1)).reshape(())
        diff = b - a
        # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
        value = torch.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
        return torch.where(n > 0, value, math.inf)  # empty history (first norm non-finite): no clipping


class ZClipper(Clipper):
    r"""ZClip: z-score spike clipping on EMA statistics of the gradient norm (Kumar et al. 2025).

    The official ``ZClip`` class's rule and names: ``mode='zscore'`` (the default; ZClip's
    ``'percentile'`` mode raises NotImplementedError) with ``clip_option='adaptive_scaling'`` or
    ``'mean'``, ``max_grad_norm``, ``clip_factor``, ``skip_update_on_spike``, and
    ``step(model)``.  Only ``alpha`` and ``z_thresh`` may be passed by position (the first two
    positions of both classes); everything else is keyword-only, so ``ZClipper(0.97, 2.5, 5)``
    raises instead of meaning something other than the official ``ZClip(0.97, 2.5, 5)`` (whose
    third argument is ``max_grad_norm``).  With :math:`g_t` the norm of step t:

    * **warm-up**: over the first ``warmup_steps`` (default 25) finite norms, :math:`\mu` = their
      mean and :math:`\sigma^2` = their (population) variance, accumulated one norm per step with
      Welford's update (a fixed order of operations that the kernel computes identically; the
      official code sums a buffer of them, which differs in the last bits).  During warm-up the
      threshold is ``max_grad_norm``: **with the default** ``max_grad_norm=None`` **nothing is
      clipped for the first 25 steps** (the official default is 1.0, a fixed cap during warm-up
      and on top of ZClip after it).
    * then, with :math:`\sigma = \max(\sqrt{\sigma^2}, \text{min\_std})` and
      :math:`z_t = (g_t - \mu)/(\sigma + \epsilon)`: if :math:`z_t > z_\text{thresh}` the step is a
      spike and

      .. math::
          c_t = \text{clip\_factor} \cdot \Big(\mu + \frac{z_\text{thresh}\,\sigma}{z_t / z_\text{thresh}}\Big)
          \quad (\text{adaptive\_scaling}), \qquad c_t = \mu \quad (\text{mean})

      otherwise :math:`c_t = \infty` (not clipped).  With ``max_grad_norm``, :math:`c_t \leftarrow
      \min(c_t, \text{max\_grad\_norm})`.
    * the EMA is updated with :math:`u_t = c_t` (before the ``max_grad_norm`` cap) for a spike,
      else :math:`u_t = g_t` (skipped for spikes if ``skip_update_on_spike``), as in the official
      code:

      .. math::
          \mu \leftarrow \alpha\mu + (1-\alpha)u_t, \qquad
          \sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)(u_t - \mu)^2

      where the variance uses the *updated* mean, as the official ``_update_ema`` does.

    **σ = 0.**  If the warm-up norms are all equal (all zero, say, or a constant loss), then
    :math:`\sigma = 0`, :math:`z_t = (g_t - \mu)/\epsilon` is huge for any larger norm, and every
    norm above the mean is a spike clipped to the mean (:math:`c_t = \mu`, since the adaptive
    term vanishes); while the norms stay constant the variance stays 0.  The official code does
    the same.  ``min_std`` (default 0: the official rule) is a floor on :math:`\sigma`: a norm is
    then a spike only above :math:`\mu + z_\text{thresh}(\text{min\_std} + \epsilon)`.

    Differences from the official class (bluorion-com/ZClip): ``max_grad_norm`` defaults to None
    (theirs 1.0); the clip coefficient is torch's ``min(c / (norm + 1e-6), 1)`` at every step
    (theirs, after warm-up, leaves a norm equal to the cap unscaled: a 1e-6 relative difference);
    non-finite norms are not recorded (see the module docstring); the statistics are float64
    device tensors instead of Python floats, and ``step`` returns a :class:`ClipResult` of device
    tensors instead of the norm as a float (no host sync).

    Args:
        alpha (float, optional): EMA smoothing factor in (0, 1). Default: 0.97
        z_thresh (float, optional): z-score above which a norm is a spike (> 0). Default: 2.5
        max_grad_norm (float, optional): fixed cap, also applied during warm-up; None: no cap.
            Default: None
        eps (float, optional): added to sigma in the z-score. Default: 1e-6
        warmup_steps (int, optional): finite norms (>= 1) collected before the EMA starts; no
            clipping meanwhile unless ``max_grad_norm`` is given. Default: 25
        mode (str, optional): ``'zscore'``; ``'percentile'`` raises NotImplementedError.
            Default: ``'zscore'``
        clip_option (str, optional): ``'adaptive_scaling'`` or ``'mean'``. Default: ``'adaptive_scaling'``
        clip_factor (float, optional): multiplier of the adaptive threshold. Default: 1.0
        skip_update_on_spike (bool, optional): don't update the EMA on spikes. Default: False
        min_std (float, optional): floor of sigma (>= 0); 0 is the official rule. Default: 0.0
        max_norm (float, optional): another name of ``max_grad_norm`` (the name fastclip's other
            clippers use); pass one of the two. Default: None
        norm_type (float or str, optional): order of the norm. Default: 2.0
        nonfinite (str, optional): ``'propagate'``, ``'skip'`` or ``'error'``. Default: ``'propagate'``
        group (ProcessGroup, optional): shards over a process group (see :class:`Clipper`). Default: None

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> clipper = fastclip.ZClipper(warmup_steps=4)
        >>> for g in [1.0, 1.2, 0.8, 1.0, 1.1, 50.0]:
        ...     w.grad = torch.tensor([g])
        ...     r = clipper([w])
        >>> bool(r.clipped), round(float(r.threshold), 3)
        (True, 1.006)

    References:
        Kumar, Owen, Roy Chowdhury & Güra, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
        arXiv 2504.02507 (2025).  Rule followed: the official implementation at main,
        https://github.com/bluorion-com/ZClip/blob/584ce4f5a4aabab59e7df1dbaffc26a44df39dc1/zclip/zclip.py
        (``_initialize_ema``, ``_update_ema``, ``_compute_positive_zscore``, ``_compute_clip_val``,
        ``step``; the file is unchanged since e42cdd1, 2025-05-10), which runs; the earlier
        commits 1acb0857 (its zclip/zclip.py does not parse) and 134344fc (its ``step`` calls the
        missing ``apply_in_place_clipping``) do not.
    """

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, *, max_grad_norm: float | None = None,
                 eps: float = 1e-6, warmup_steps: int = 25, mode: str = "zscore",
                 clip_option: str = "adaptive_scaling", clip_factor: float = 1.0, skip_update_on_spike: bool = False,
                 min_std: float = 0.0, max_norm: float | None = None, norm_type=2.0, nonfinite: str = "propagate",
                 group=None):
        super().__init__(norm_type=norm_type, nonfinite=nonfinite, group=group)
        self.alpha = _check_number(alpha, "alpha", low=0.0, low_ok=False, high=1.0)
        if self.alpha == 1.0:
            raise ValueError("alpha must be < 1 (alpha = 1 never updates the statistics)")
        self.z_thresh = _check_number(z_thresh, "z_thresh", low=0.0, low_ok=False)
        self.warmup_steps = _check_int(warmup_steps, "warmup_steps", low=1)
        if not isinstance(mode, str):
            raise TypeError(f"mode must be a str, got {type(mode).__name__}")
        if mode.lower() == "percentile":
            raise NotImplementedError("ZClip's mode='percentile' (clip every norm above mean + z_thresh * std) is not "
                                      "implemented; mode='zscore' (the default) is")
        if mode.lower() != "zscore":
            raise ValueError(f"mode must be 'zscore' ('percentile' is not implemented), got {mode!r}")
        if clip_option not in ("adaptive_scaling", "mean"):
            raise ValueError(f"clip_option must be 'adaptive_scaling' or 'mean', got {clip_option!r}")
        self.clip_option = clip_option
        self.clip_factor = _check_number(clip_factor, "clip_factor", low=0.0, low_ok=False)
        if max_norm is not None and max_grad_norm is not None:
            raise TypeError("ZClipper takes max_grad_norm or its other name max_norm, not both")
        cap = max_grad_norm if max_norm is None else max_norm
        self.max_norm = None if cap is None else _check_number(
            cap, "max_grad_norm" if max_norm is None else "max_norm", low=0.0, allow_inf=True)
        self.skip_update_on_spike = bool(skip_update_on_spike)
        self.eps = _check_number(eps, "eps", low=0.0)
        self.min_std = _check_number(min_std, "min_std", low=0.0)

    @property
    def max_grad_norm(self) -> float | None:
        """The fixed cap (the official name; ``max_norm`` is the same value)."""
        return self.max_norm

    def _config(self) -> dict:
        return {"alpha": self.alpha, "z_thresh": self.z_thresh, "warmup_steps": self.warmup_steps,
                "clip_option": self.clip_option, "clip_factor": self.clip_factor, "max_norm": self.max_norm,
                "skip_update_on_spike": self.skip_update_on_spike, "eps": self.eps, "min_std": self.min_std}

    def _upgrade_config(self, saved: dict) -> dict:
        return {"min_std": 0.0, **saved}  # saved before the floor existed: the official rule

    _POLICY = POLICY_ZCLIP
    _SLOTS = {"count": POLICY_WORD_COUNT, "mean": POLICY_WORD_STAT0, "var": POLICY_WORD_STAT1}

    def _settings(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "alpha": self.alpha, "one_minus_alpha": 1.0 - self.alpha,
                "z_thresh": self.z_thresh, "clip_factor": self.clip_factor,
                "max_norm": math.inf if self.max_norm is None else self.max_norm, "eps": self.eps,
                "clip_to_mean": self.clip_option == "mean", "skip_update_on_spike": self.skip_update_on_spike,
                "min_std": self.min_std}

    def _new_state(self, device):
        # during warm-up `mean` is the running mean and `var` the sum of squared deviations
        return {"count": torch.zeros((), dtype=torch.int64, device=device),
                "mean": torch.zeros((), dtype=_STAT, device=device),
                "var": torch.zeros((), dtype=_STAT, device=device)}

    def _upgrade_state(self, saved: dict) -> dict:
        if "warmup" not in saved:
            return saved
        # states saved before the kernel policies kept the warm-up norms: replay them through Welford
        saved = dict(saved)
        norms = saved.pop("warmup")
        count = int(saved["count"])  # a host read, at load time only
        if count < norms.numel():
            mean, m2 = torch.zeros_like(saved["mean"]), torch.zeros_like(saved["var"])
            for i in range(count):
                delta = norms[i] - mean
                mean = mean + delta / (i + 1)
                m2 = m2 + delta * (norms[i] - mean)
            saved["mean"], saved["var"] = mean, m2
        return saved

    @property
    def mean(self) -> torch.Tensor | None:
        """EMA mean of the norm (0-d float64 device tensor; the running mean during warm-up)."""
        return None if self._state is None else self._state["mean"]

    @property
    def std(self) -> torch.Tensor | None:
        """EMA standard deviation of the norm (0-d float64 device tensor, before the ``min_std``
        floor; meaningless during warm-up)."""
        return None if self._state is None else _sqrt_rn(self._state["var"])

    def _threshold(self, state, norm, finite):
        count, mean, var = state["count"], state["mean"], state["var"]
        warming = count < self.warmup_steps
        record = warming & finite
        # warm-up: Welford's running mean and sum of squared deviations, one norm per step
        delta = norm - mean
        run_mean = mean + delta / (count + 1)
        run_m2 = var + delta * (norm - run_mean)
        init = record & (count == self.warmup_steps - 1)  # this norm completes the warm-up
        # z-score phase, on the statistics of the previous steps
        active = torch.logical_not(warming) & finite
        std = _sqrt_rn(var)
        std = torch.where(std < self.min_std, self.min_std, std)  # the floor (0: none), as the kernel
        z = (norm - mean) / (std + self.eps)
        spike = active & (z > self.z_thresh)
        if self.clip_option == "adaptive_scaling":
            clip_val = (mean + (self.z_thresh * std) / (z / self.z_thresh)) * self.clip_factor
        else:
            clip_val = mean
        threshold = torch.where(spike, clip_val, math.inf)
        if self.max_norm is not None:
            threshold = torch.clamp(threshold, max=self.max_norm)
        update = active if not self.skip_update_on_spike else active & torch.logical_not(spike)
        u = torch.where(spike, clip_val, norm)
        new_mean = mean * self.alpha + u * (1.0 - self.alpha)
        new_var = var * self.alpha + torch.square(u - new_mean) * (1.0 - self.alpha)
        mean.copy_(torch.where(record, run_mean, torch.where(update, new_mean, mean)))
        var.copy_(torch.where(record, torch.where(init, run_m2 / self.warmup_steps, run_m2),
                              torch.where(update, new_var, var)))
        count.add_(finite)
        return threshold


def step_if_finite(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor, *args, **kwargs):
    r"""Run ``optimizer.step()`` unless ``found_inf`` is 1 — on the device for fused optimizers.

    Fused torch optimizers (``torch.optim.Adam/AdamW/SGD/Adagrad(..., fused=True)``, CUDA and
    CPU) read a ``found_inf`` tensor inside their kernel and skip the whole update (parameters,
    moments and step count) when it is 1: the protocol :class:`torch.amp.GradScaler` uses.  This
    sets it for one step: no host sync.  Other optimizers have no device-side skip; for them the
    flag is read on the host (one sync, the same one ``GradScaler.step`` pays) and ``step()`` is
    called only if it is 0.

    Combine with a GradScaler's flag by ``torch.maximum(result.found_inf, other_found_inf)``.
    Caveat (torch 2.13): fused SGD with momentum leaves its momentum buffer uninitialised when the
    very first step is skipped; fused Adam/AdamW are exact.

    Args:
        optimizer (torch.optim.Optimizer): the optimizer to step.
        found_inf (Tensor): 0-d float 0./1. flag, e.g. ``ClipResult.found_inf``.
        *args, **kwargs: passed to ``optimizer.step``.

    Returns:
        whatever ``optimizer.step`` returns (None when a non-fused step is skipped).

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.Adam([w], lr=0.1, fused=True)
        >>> clipper = fastclip.FixedClipper(1.0, nonfinite="skip")
        >>> w.grad = torch.tensor([float("nan"), 1.0])
        >>> r = clipper([w])
        >>> fastclip.step_if_finite(opt, r.found_inf)
        >>> w
        Parameter containing:
        tensor([1., 1.], requires_grad=True)
    """
    fused = getattr(optimizer, "_step_supports_amp_scaling", False) and all(
        group.get("fused") for group in optimizer.param_groups)
    if not fused:
        if bool(found_inf):  # host read: non-fused optimizers have no device-side skip
            return None
        return optimizer.step(*args, **kwargs)
    saved = {name: getattr(optimizer, name) for name in ("found_inf", "grad_scale") if hasattr(optimizer, name)}
    optimizer.found_inf, optimizer.grad_scale = found_inf.to(torch.float32), None
    try:
        return optimizer.step(*args, **kwargs)
    finally:
        for name in ("found_inf", "grad_scale"):  # leave the optimizer as it was (GradScaler does the same)
            if name in saved:
                setattr(optimizer, name, saved[name])
            else:
                delattr(optimizer, name)
