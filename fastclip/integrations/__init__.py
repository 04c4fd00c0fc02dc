"""fastclip's clippers inside the trainers people use: a callback per trainer.

* ``fastclip.integrations.lightning.ClipperCallback``: Lightning (``lightning`` or ``pytorch_lightning``),
* ``fastclip.integrations.hf.ClipperCallback``: transformers' ``Trainer``.

Each runs any :class:`fastclip.Clipper` once per optimizer step (after the AMP unscale, before
the optimizer's step, with the trainer's own clipping off) and logs the step's norm, threshold
and clipped flag through the trainer's logger without a host sync per step.  Importing these
modules needs neither trainer; using a callback without its trainer raises ImportError naming the
package to install.
"""
