r"""A Lightning callback that runs a fastclip clipper at every optimizer step.

Lightning calls ``Callback.on_before_optimizer_step`` after the backward pass and, with mixed
precision (``16-mixed``), after the GradScaler's ``unscale_`` (``MixedPrecision.optimizer_step``),
then its own clipping (``gradient_clip_val``, off here), then the optimizer's step: the place
its own ``configure_gradient_clipping`` occupies, for every strategy and precision.  The
callback clips the parameters of the optimizer being stepped, as Lightning's clipping does.

Logging: each step hands ``pl_module.log_dict`` the step's values as device tensors (``on_step``,
no reduction over the epoch); Lightning reads them on the host only when its loggers write, every
``log_every_n_steps``.  So a step never synchronizes with the device.
"""
from __future__ import annotations

from ._lazy import trainer_class
from ._step_log import StepLog

__all__ = ["ClipperCallback"]


class _ClipperCallback:
    r"""Run a fastclip clipper at every optimizer step of a Lightning ``Trainer``.

    Args:
        clipper (fastclip.Clipper): the policy, e.g. ``fastclip.ZClipper()``; its state is saved
            in Lightning checkpoints and restored when training resumes.
        prefix (str, optional): prefix of the logged names. Default: ``'clip/'``
        log (bool, optional): log ``<prefix>norm``, ``threshold``, ``clipped`` and
            ``clipped_steps`` (see ``fastclip.integrations._step_log.StepLog``). Default: True

    Attributes:
        last (fastclip.ClipResult or None): what the last step returned (device tensors).

    Raises:
        ValueError: at ``Trainer.fit``, if the trainer clips too (``gradient_clip_val`` > 0).

    Example::

        import lightning.pytorch as pl, fastclip
        from fastclip.integrations.lightning import ClipperCallback

        trainer = pl.Trainer(gradient_clip_val=None,                 # the callback clips
                             callbacks=[ClipperCallback(fastclip.ZClipper())])
        trainer.fit(model, data)                                     # logs clip/norm, clip/threshold, ...

    Sharded training: with FSDP2 or tensor parallelism (DTensor gradients) nothing is needed; with
    plain-tensor shards of one model on each rank (e.g. FSDP1's flat parameters), give the
    clipper ``group=`` (the sharding group).
    """

    def __init__(self, clipper, *, prefix: str = "clip/", log: bool = True):
        self.clipper = clipper
        self.log_values = log
        self._steps = StepLog(prefix)

    @property
    def last(self):
        return self._steps.last

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and (trainer.gradient_clip_val or 0) > 0:
            raise ValueError(f"{type(self).__name__} clips the gradients itself: pass Trainer(gradient_clip_val=None) "
                             f"(got {trainer.gradient_clip_val}) so that Lightning doesn't clip them a second time")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._steps.record(self.clipper(params))
        if self.log_values:
            pl_module.log_dict(self._steps.tensors(), on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict:
        return {"clipper": self.clipper.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.clipper.load_state_dict(state_dict["clipper"])


def __getattr__(name: str):
    if name == "ClipperCallback":
        cls = trainer_class(name, _ClipperCallback, ("lightning.pytorch:Callback", "pytorch_lightning:Callback"),
                            "lightning (or pytorch-lightning)")
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
