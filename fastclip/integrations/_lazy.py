"""Callback classes built on first use, so that importing an integration needs no trainer package."""
from __future__ import annotations

import importlib


def trainer_class(name: str, body: type, bases: tuple, install: str) -> type:
    """``body`` (the callback's methods) on top of each importable trainer base class.

    Args:
        name (str): the public class name (``module.name`` is where users import it from).
        body (type): a plain class with the callback's methods and docstring.
        bases (tuple[str, ...]): ``'module:Class'`` of each base that the trainer may check with
            ``isinstance`` (Lightning ships as ``lightning.pytorch`` and as ``pytorch_lightning``,
            with two distinct ``Callback`` classes: the callback derives from every one installed).
        install (str): what to ``pip install`` when none imports.

    Raises:
        ImportError: no base imports; the message names the package to install.
    """
    found, errors = [], []
    for spec in bases:
        module, attr = spec.split(":")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except ImportError as exc:
            errors.append(f"{module}: {exc}")
    if not found:
        raise ImportError(f"{body.__module__}.{name} needs {install.split()[0]}: pip install {install} "
                          f"({'; '.join(errors)})")
    cls = type(name, (body, *found), {"__module__": body.__module__, "__qualname__": name, "__doc__": body.__doc__})
    return cls
