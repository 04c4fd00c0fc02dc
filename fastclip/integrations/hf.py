r"""A transformers ``TrainerCallback`` that runs a fastclip clipper at every optimizer step.

Where it runs: ``Trainer`` (transformers 5.x) computes the gradient norm (``max_grad_norm > 0``:
clipping; ``max_grad_norm=0``: ``accelerator.clip_grad_norm_(params, inf)``, which also unscales
fp16 gradients), then calls ``on_pre_optimizer_step``, then ``optimizer.step()``.  The callback
clips there, after the GradScaler's unscale (it unscales itself if nothing did yet) and before
the step, with the trainer's own clipping off (``max_grad_norm=0``).

Logging: the step's results stay on the device; at each ``on_log`` of a training log (every
``logging_steps``) they are read once and added to the logged dict and to
``trainer.state.log_history``.  So a step never synchronizes with the device.  The Trainer's
reporting callbacks (TensorBoard, W&B, ...) come before user callbacks: to have them see the
values, put the callback first with :meth:`ClipperCallback.attach`.
"""
from __future__ import annotations

from ._lazy import trainer_class
from ._step_log import StepLog

__all__ = ["ClipperCallback"]


def unscale_if_needed(optimizer) -> None:
    """Unscale fp16 gradients with accelerate's GradScaler unless that happened this step.

    accelerate's ``AcceleratedOptimizer`` carries the scaler; its ``step`` knows that the
    gradients were unscaled (torch's GradScaler records it per optimizer), as after
    ``accelerator.clip_grad_norm_``.
    """
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return
    from torch.amp.grad_scaler import OptState

    inner = getattr(optimizer, "optimizer", optimizer)
    if scaler._per_optimizer_states[id(inner)]["stage"] is OptState.READY:
        scaler.unscale_(inner)


class _ClipperCallback:
    r"""Run a fastclip clipper at every optimizer step of a transformers ``Trainer``.

    Args:
        clipper (fastclip.Clipper): the policy, e.g. ``fastclip.ZClipper()``.
        prefix (str, optional): prefix of the logged names. Default: ``'clip/'``

    Logged at each training log (names after ``prefix``): ``norm`` and ``threshold`` of the last
    step, ``clipped`` (1.0 if it was clipped) and ``clipped_steps`` (clipped steps so far).

    Attributes:
        last (fastclip.ClipResult or None): what the last step returned (device tensors).

    Raises:
        ValueError: when the Trainer is built, if it clips too (``max_grad_norm`` > 0).

    Example::

        import fastclip, transformers
        from fastclip.integrations.hf import ClipperCallback

        args = transformers.TrainingArguments("out", max_grad_norm=0, logging_steps=10)  # the callback clips
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
        ClipperCallback(fastclip.ZClipper()).attach(trainer)   # or Trainer(..., callbacks=[...])
        trainer.train()                                         # logs clip/norm, clip/threshold, ...

    The clipper's state is not part of the Trainer's checkpoints: save ``clipper.state_dict()``
    beside them to resume with the same thresholds.
    """

    def __init__(self, clipper, *, prefix: str = "clip/"):
        self.clipper = clipper
        self._steps = StepLog(prefix)

    @property
    def last(self):
        return self._steps.last

    def attach(self, trainer):
        """Register with ``trainer`` ahead of its reporting callbacks (which then log the values too).

        Returns:
            the callback.
        """
        self._check(trainer.args)
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def _check(self, args) -> None:
        if args.max_grad_norm > 0:
            raise ValueError(f"{type(self).__name__} clips the gradients itself: pass "
                             f"TrainingArguments(max_grad_norm=0) (got {args.max_grad_norm}) so that the Trainer "
                             f"doesn't clip them first")

    def on_init_end(self, args, state, control, **kwargs):
        self._check(args)

    def on_train_begin(self, args, state, control, **kwargs):
        self._check(args)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        unscale_if_needed(optimizer)
        self._steps.record(self.clipper(model.parameters()))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self._steps.unread:
            return
        values = self._steps.read()  # the one host read, at a log step
        logs.update(values)
        if state.log_history:  # the Trainer appended this log just before on_log
            state.log_history[-1].update(values)


def __getattr__(name: str):
    if name == "ClipperCallback":
        cls = trainer_class(name, _ClipperCallback, ("transformers:TrainerCallback",), "transformers")
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
