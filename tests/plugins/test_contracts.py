"""Every registered component passes the contract checks of its kind, and is documented."""

from __future__ import annotations

import inspect

import pytest

from gshead.core import hookspecs
from gshead.core.registry import Registry
from gshead.testing import check_component, check_pipeline

REGISTRY = Registry(autoload=False)
SPECS = REGISTRY.all()


def _skip_if_unavailable(spec):
    reason = spec.config_class.unavailable()
    if reason:
        pytest.skip(f"{spec.kind} {spec.name!r}: {reason}")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}:{s.name}")
def test_component_contract(spec):
    _skip_if_unavailable(spec)
    check_component(spec.kind, {"name": spec.name, **spec.config_class.test_fields}, registry=REGISTRY)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}:{s.name}")
def test_component_in_a_pipeline(spec):
    _skip_if_unavailable(spec)
    check_pipeline(registry=REGISTRY, **{spec.kind: {"name": spec.name, **spec.config_class.test_fields}})


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}:{s.name}")
def test_component_is_documented(spec):
    cls = spec.config_class
    assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} needs a docstring"
    module = inspect.getmodule(cls)
    assert module is not None and module.__doc__ and module.__doc__.strip(), f"{module} needs a module docstring"
    undocumented = [n for n, f in cls.model_fields.items() if n != "name" and not f.description]
    assert not undocumented, f"{cls.__name__}: document fields {undocumented} with a docstring under each"


@pytest.mark.parametrize("hook", sorted(hookspecs.HOOK_FOR_KIND.values()))
def test_every_hook_is_documented(hook):
    doc = getattr(hookspecs, hook).__doc__ or ""
    assert doc.strip().splitlines()[0].startswith("Register ") and ":param register:" in doc
