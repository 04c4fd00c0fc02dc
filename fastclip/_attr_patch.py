"""Module attributes replaced by fastclip's functions, and put back exactly: the mechanism shared by
``fastclip.patch`` (torch) and ``fastclip.patch_timm`` (timm)."""
from __future__ import annotations

import threading


class AttributePatches:
    """A thread-safe record of replaced module attributes.

    :meth:`apply` replaces each ``module.name`` not already replaced and remembers the object it
    found; :meth:`restore` puts those objects back, leaving alone an attribute that someone else
    replaced after us.  Both are idempotent.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._originals: dict = {}  # (module, name) -> (the object found, our replacement)

    def apply(self, targets, on_replace=None) -> list[str]:
        """Replace ``module.name`` by ``replacement`` for each ``(module, name, replacement)``;
        ``on_replace(module, name, original)`` runs (under the lock) for each one replaced now.
        Returns the ``'module.name'`` of every target."""
        done = []
        with self._lock:
            for module, name, replacement in targets:
                current = getattr(module, name)
                if current is not replacement:
                    self._originals[(module, name)] = (current, replacement)
                    if on_replace is not None:
                        on_replace(module, name, current)
                    setattr(module, name, replacement)
                done.append(f"{module.__name__}.{name}")
        return done

    def restore(self) -> None:
        """Put back what :meth:`apply` replaced, where our replacement is still in place."""
        with self._lock:
            for (module, name), (original, replacement) in list(self._originals.items()):
                if getattr(module, name, None) is replacement:
                    setattr(module, name, original)
                del self._originals[(module, name)]

    def original(self, module, name: str):
        """The object ``module.name`` held before :meth:`apply` replaced it (None if not replaced)."""
        entry = self._originals.get((module, name))
        return entry[0] if entry is not None else None
