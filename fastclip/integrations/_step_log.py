"""What the trainer callbacks log: a clipper's last step, kept on the device until the trainer logs."""
from __future__ import annotations

import torch

#: the logged fields, after the callback's prefix
FIELDS = ("norm", "threshold", "clipped", "clipped_steps")


class StepLog:
    """The last :class:`fastclip.ClipResult` and the number of clipped steps so far, as device
    tensors: recording a step costs one small device op and never reads a value on the host.

    Logged (each name after ``prefix``): ``norm`` and ``threshold`` of the last step (``inf``: the
    policy did not clip, e.g. during warm-up), ``clipped`` (1.0 if the last step rewrote the
    gradients, else 0.0) and ``clipped_steps`` (clipped steps since training started; the
    difference between two logged values is the count of the steps in between).
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.last = None  # the last ClipResult
        self.clipped_steps: torch.Tensor | None = None  # int64 on the device
        self.unread = False  # a step was recorded since the last read()

    def record(self, result) -> None:
        clipped = result.clipped.to(torch.int64)
        self.clipped_steps = clipped if self.clipped_steps is None else self.clipped_steps + clipped.to(
            self.clipped_steps.device)
        self.last, self.unread = result, True

    def tensors(self) -> dict[str, torch.Tensor]:
        """The logged values as 0-d floating tensors on the device (no host read): norm and
        threshold in the norm's dtype, the flag and the count as float32."""
        last = self.last
        values = (last.norm, last.threshold, last.clipped.to(torch.float32), self.clipped_steps.to(torch.float32))
        return {self.prefix + name: v for name, v in zip(FIELDS, values)}

    def read(self) -> dict[str, float]:
        """The logged values as Python floats: one host read (a device sync) for all of them."""
        tensors = self.tensors()
        device = self.last.norm.device
        floats = torch.stack([t.to(device, torch.float64) for t in tensors.values()]).tolist()
        self.unread = False
        return dict(zip(tensors, floats))
