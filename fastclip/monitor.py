r"""Record gradient norms during training without host syncs, and plot them afterwards.

:class:`NormRecorder` appends each step's norm (and optionally the threshold, the clipped flag and
per-tensor norms) to preallocated device buffers with in-place copies: recording never reads the
device.  The numbers come to the host once, when you ask for them (:meth:`NormRecorder.numpy`,
:func:`plot_norm_history`).  That is the data to choose a clipping threshold from: Pascanu et al.
(2013) advise starting from the average norm.

Per-tensor norms come from the norm launch itself: ``fastclip.clip_(..., per_tensor=True)``,
``fastclip.total_norm(..., per_tensor=True)`` or ``clipper(parameters, per_tensor=True)`` return
them as one 1-D device tensor, which :meth:`NormRecorder.record` takes as ``per_tensor``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch


__all__ = ["NormRecorder", "plot_norm_history"]


class NormRecorder:
    r"""Per-step gradient-norm history in preallocated device buffers, filled without host syncs.

    Each :meth:`record` call is one step: it copies a 0-d norm (or a
    :class:`~fastclip.adaptive.ClipResult`: norm, threshold and clipped flag) and optionally a 1-D
    tensor of per-tensor norms into row ``step`` of device buffers.  The row index is a host
    counter, so recording never reads the device; when the buffers are full they double (a
    device-to-device copy).  Buffers are float64 for norms and thresholds, float32 for
    per-tensor norms.

    Args:
        capacity (int, optional): initial number of steps the buffers hold. Default: 1024
        device (torch.device or str, optional): device of the buffers; None = that of the first
            recorded norm. Default: None

    Example::

        >>> import torch
        >>> from fastclip.monitor import NormRecorder
        >>> rec = NormRecorder()
        >>> for g in [1.0, 2.0, 4.0]:
        ...     rec.record(torch.tensor(g))
        >>> len(rec), rec.numpy()["norm"].tolist()
        (3, [1.0, 2.0, 4.0])
    """

    def __init__(self, capacity: int = 1024, device=None):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.device = None if device is None else torch.device(device)
        self.steps = 0
        self._buffers: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.steps

    def _buffer(self, name: str, width: int | None, dtype: torch.dtype, fill: float) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None:
            shape = (self.capacity,) if width is None else (self.capacity, width)
            buf = torch.full(shape, fill, dtype=dtype, device=self.device)
            self._buffers[name] = buf
        elif width is not None and buf.shape[1] != width:
            raise ValueError(f"per-tensor norms had {buf.shape[1]} entries, now {width}: record the same "
                             f"tensors every step (or use one recorder per parameter set)")
        return buf

    def _grow(self) -> None:
        # host-side index: the buffers are full exactly when steps == capacity, no device read
        for name, buf in self._buffers.items():
            grown = torch.full((2 * buf.shape[0], *buf.shape[1:]), math.nan, dtype=buf.dtype, device=buf.device)
            grown[: buf.shape[0]].copy_(buf)
            self._buffers[name] = grown
        self.capacity *= 2

    def record(self, norm, per_tensor: torch.Tensor | None = None) -> None:
        """Append one step.

        Args:
            norm (Tensor or ClipResult): the step's total norm (0-d tensor or number), or a
                clipper's result (its norm, threshold and clipped flag are recorded).
            per_tensor (Tensor, optional): 1-D per-tensor norms for this step (e.g. from
                ``clipper(parameters, per_tensor=True)``); the same length at every step. Default: None
        """
        threshold = clipped = None
        if hasattr(norm, "threshold") and hasattr(norm, "clipped"):
            norm, threshold, clipped = norm.norm, norm.threshold, norm.clipped
        if not isinstance(norm, torch.Tensor):
            norm = torch.tensor(float(norm), dtype=torch.float64)
        if self.device is None:
            self.device = norm.device
        if self.steps == self.capacity:
            self._grow()
        i = self.steps
        with torch.no_grad():
            self._buffer("norm", None, torch.float64, math.nan)[i].copy_(norm.reshape(()))
            if threshold is not None:
                self._buffer("threshold", None, torch.float64, math.nan)[i].copy_(threshold.reshape(()))
                self._buffer("clipped", None, torch.float64, math.nan)[i].copy_(clipped.reshape(()))
            if per_tensor is not None:
                per_tensor = per_tensor.reshape(-1)
                self._buffer("per_tensor", per_tensor.numel(), torch.float32, math.nan)[i].copy_(per_tensor)
        self.steps += 1

    def tensors(self) -> dict[str, torch.Tensor]:
        """The recorded steps as device tensors (views, no copy): ``norm`` and, if recorded,
        ``threshold``, ``clipped`` (1.0/0.0) and ``per_tensor`` (``[steps, n_tensors]``)."""
        return {name: buf[: self.steps] for name, buf in self._buffers.items()}

    def numpy(self) -> dict:
        """The recorded steps as NumPy arrays (one device-to-host copy per buffer: a sync)."""
        return {name: t.detach().cpu().numpy() for name, t in self.tensors().items()}


def _as_runs(source) -> dict:
    """{label: {'norm': array, ...}} from a recorder, an array, or a mapping of either."""
    import numpy as np

    def one(item):
        if isinstance(item, NormRecorder):
            return item.numpy()
        if isinstance(item, Mapping):
            return {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=float)
                    for k, v in item.items()}
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu()
        return {"norm": np.asarray(item, dtype=float).reshape(-1)}

    if isinstance(source, Mapping) and "norm" not in source:
        return {str(label): one(item) for label, item in source.items()}
    return {"": one(source)}


def plot_norm_history(source, path, *, title: str | None = None, bins: int = 60, log: bool = True):
    r"""Write a PNG of gradient-norm history: time series (with thresholds and clipped steps) and histogram.

    If per-tensor norms were recorded (one run), a third panel shows them as a heat map
    (tensor × step).  matplotlib is imported here, never at ``import fastclip``, and only through
    its object API (the global pyplot backend is left alone).

    Args:
        source: a :class:`NormRecorder`; a 1-D array/tensor of norms; a dict with key ``'norm'``
            (and optionally ``'threshold'``, ``'clipped'``, ``'per_tensor'``); or a mapping
            ``{label: any of those}`` to overlay several runs.
        path (str or os.PathLike): the PNG file to write (its folder must exist).
        title (str, optional): figure title. Default: None
        bins (int, optional): histogram bins. Default: 60
        log (bool, optional): log scale for norms (log-spaced histogram bins). Default: True

    Returns:
        pathlib.Path: ``path``.

    Example::

        >>> import tempfile, os, torch
        >>> from fastclip.monitor import plot_norm_history
        >>> out = os.path.join(tempfile.mkdtemp(), "norms.png")
        >>> plot_norm_history(torch.rand(100) + 0.5, out).name
        'norms.png'
    """
    import pathlib

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = _as_runs(source)
    per_tensor = next(iter(runs.values())).get("per_tensor") if len(runs) == 1 else None
    has_heatmap = per_tensor is not None and per_tensor.size > 0
    fig = Figure(figsize=(13 if has_heatmap else 11, 4.2))
    FigureCanvasAgg(fig)
    widths = [2.2, 1, 1.6] if has_heatmap else [2.2, 1]
    axes = fig.subplots(1, len(widths), gridspec_kw={"width_ratios": widths})
    series_ax, hist_ax = axes[0], axes[1]

    finite_all = np.concatenate([r["norm"][np.isfinite(r["norm"]) & (r["norm"] > 0 if log else True)]
                                 for r in runs.values()] or [np.zeros(0)])
    if finite_all.size and log:
        edges = np.geomspace(finite_all.min(), finite_all.max() * 1.0001, bins + 1)
    elif finite_all.size:
        edges = np.linspace(finite_all.min(), finite_all.max(), bins + 1)
    else:
        edges = bins
    for k, (label, run) in enumerate(runs.items()):
        color = f"C{k}"
        norm = run["norm"]
        steps = np.arange(norm.size)
        series_ax.plot(steps, norm, color=color, lw=0.8, label=(label or "norm") + " (before clipping)")
        thr = run.get("threshold")
        if thr is not None and np.isfinite(thr).any():
            series_ax.plot(steps, np.where(np.isfinite(thr), thr, np.nan), color="k" if len(runs) == 1 else color,
                           lw=1.4, ls="--", zorder=3, label=(label + " " if label else "") + "threshold")
        clipped = run.get("clipped")
        if clipped is not None and (clipped > 0.5).any():
            hit = clipped > 0.5
            series_ax.scatter(steps[hit], norm[hit], s=6, color=color, marker="x", lw=0.6,
                              label=(label + " " if label else "") + f"clipped ({int(hit.sum())} steps)")
        bad = ~np.isfinite(norm)
        if bad.any():
            series_ax.scatter(steps[bad], np.full(int(bad.sum()), np.nanmax(norm[~bad]) if (~bad).any() else 1.0),
                              s=12, color="k", marker="|", label=f"non-finite ({int(bad.sum())})")
        good = norm[np.isfinite(norm) & ((norm > 0) if log else True)]
        if good.size:
            hist_ax.hist(good, bins=edges, color=color, alpha=0.5 if len(runs) > 1 else 0.8,
                         label=label or None)
    series_ax.set_xlabel("step")
    series_ax.set_ylabel("gradient norm")
    series_ax.set_title("per-step norm")
    hist_ax.set_xlabel("gradient norm")
    hist_ax.set_ylabel("steps")
    hist_ax.set_title("histogram")
    if log and finite_all.size:
        series_ax.set_yscale("log")
        hist_ax.set_xscale("log")
    series_ax.legend(fontsize=7, loc="best")
    if len(runs) > 1:
        hist_ax.legend(fontsize=7)
    if has_heatmap:
        ax = axes[2]
        data = np.where(per_tensor > 0, per_tensor, np.nan).T
        image = ax.imshow(np.log10(data) if log else data, aspect="auto", origin="lower", interpolation="nearest",
                          cmap="viridis")
        fig.colorbar(image, ax=ax, label="log10 norm" if log else "norm")
        ax.set_xlabel("step")
        ax.set_ylabel("tensor")
        ax.set_title("per-tensor norms")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    return path
