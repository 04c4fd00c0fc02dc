"""One backend interface: both backends implement every operation of ``fastclip._backend.Backend``
with the same parameters, the dispatcher hands each device's work the backend that serves it, and
the modules below the public API never import it (no api <-> custom_op <-> distributed cycle).
"""
import ast
import inspect
import pathlib

import pytest

import fastclip
import fastclip._backend
import fastclip._dispatch
import fastclip._torch_adapter
from oracles import grads, make_params, ref_norm, require_triton_on_cpu

PACKAGE = pathlib.Path(fastclip.__file__).parent


def _backends():
    require_triton_on_cpu()
    import fastclip._triton_backend

    return {"torch": fastclip._torch_adapter, "triton": fastclip._triton_backend}


@pytest.mark.parametrize("operation", fastclip._backend.OPERATIONS)
def test_both_backends_implement_each_operation_with_the_same_parameters(operation):
    backends = _backends()
    signatures = {name: inspect.signature(getattr(b, operation)) for name, b in backends.items()}
    protocol = inspect.signature(getattr(fastclip._backend.Backend, operation))
    expected = [p for p in protocol.parameters.values() if p.name != "self"]

    for name, sig in signatures.items():
        params = list(sig.parameters.values())
        assert [(p.name, p.kind, p.default) for p in params] == [(p.name, p.kind, p.default) for p in expected], (
            f"{name}.{operation}{sig} differs from Backend.{operation}{protocol}")


def test_each_backend_names_itself():
    assert {name: b.name for name, b in _backends().items()} == {"torch": "torch", "triton": "triton"}


@pytest.mark.parametrize("backend", ["torch", "triton"], indirect=True)
def test_every_device_work_carries_the_backend_that_serves_it(backend, device):
    params = make_params([(30,), (4, 5)], device=device)

    (work,) = fastclip._dispatch.route(grads(params))

    assert work.backend is _backends()[backend]
    assert work.triton == (backend == "triton")


@pytest.mark.parametrize("backend", ["torch", "triton"], indirect=True)
def test_entry_points_reach_the_backend_only_through_its_operations(backend, device, monkeypatch):
    """clip_, total_norm, clip_with_norm_ and clip_value_ each call one operation of the work's backend."""
    module = _backends()[backend]
    calls = []
    for op in ("total_norm", "clip", "clip_with_norm", "clamp"):
        real = getattr(module, op)

        def spy(*args, _real=real, _op=op, **kwargs):
            calls.append(_op)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, op, spy)
    params = make_params([(30,), (4, 5)], device=device)
    expected = ref_norm(grads(params), 2)

    norm = fastclip.clip_(params, 1e9)
    fastclip.total_norm(grads(params))
    fastclip.clip_with_norm_(params, 1e9, norm)
    fastclip.clip_value_(params, 1e9)

    assert calls == ["clip", "total_norm", "clip_with_norm", "clamp"]
    assert norm.item() == pytest.approx(expected, rel=1e-5)


def _imports_of(path: pathlib.Path) -> set:
    """Every fastclip module a file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fastclip."))
    return found


@pytest.mark.parametrize("module", ["_backend", "_dispatch", "_engine", "_torch_adapter", "_triton_backend",
                                    "custom_op", "distributed", "native"])
def test_modules_below_the_api_never_import_it(module):
    assert "api" not in _imports_of(PACKAGE / f"{module}.py")
