"""gshead's pytest plugin: fixtures that test a component against gshead's contract.

Installed with gshead (entry point ``pytest11: gshead``), so any suite that has gshead installed
gets these fixtures without imports or a conftest. A third-party plugin's whole contract test::

    def test_my_encoder(gshead_check):
        gshead_check.component("encoder", {"name": "my-encoder", "width": 16})
        gshead_check.pipeline(encoder={"name": "my-encoder", "width": 16})

``gshead_check.component`` builds the component inside gshead's tiny reference pipeline and
checks its kind's contract (``gshead.testing.KIND_CHECKS``); ``gshead_check.pipeline``
reconstructs and drives that pipeline with the given slots replaced and checks the
frozen-avatar contract. Both raise ``AssertionError`` naming the rule that broke. The registry
is gshead's usual one: built-in components plus every installed ``gshead`` entry point (a
suite can override the ``gshead_registry`` fixture to add an uninstalled plugin module, e.g.
``Registry(extra_plugins=[("mine", my_module)])``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # torch and gshead load only when a test asks for a fixture
    from gshead.core.components import Kind
    from gshead.core.registry import Registry
    from gshead.core.types import Avatar


@dataclass(frozen=True)
class ContractCheck:
    """The checks of ``gshead.testing`` bound to one registry."""

    registry: Registry

    def component(self, kind: Kind, config: dict[str, Any] | None = None) -> None:
        """Build ``kind`` from ``config`` (a slot mapping with its ``name``) and check its contract."""
        from gshead.testing import check_component

        check_component(kind, config, registry=self.registry)

    def pipeline(self, **slots: Any) -> Avatar:
        """Reconstruct and drive the tiny pipeline with ``slots`` replaced; returns the avatar."""
        from gshead.testing import check_pipeline

        return check_pipeline(registry=self.registry, **slots)

    def encoder_independence(self, small: dict[str, Any], large: dict[str, Any], **slots: Any) -> None:
        """Two encoders give avatars of equal shape and equal per-frame driving work."""
        from gshead.testing import check_encoder_independence

        check_encoder_independence(small, large, registry=self.registry, **slots)


@pytest.fixture
def gshead_registry() -> Registry:
    """A fresh registry: built-in components and every installed ``gshead`` entry point."""
    from gshead.core.registry import Registry

    return Registry()


@pytest.fixture
def gshead_check(gshead_registry: Registry) -> ContractCheck:
    """Contract checks on ``gshead_registry``: ``.component(kind, config)``, ``.pipeline(**slots)``,
    ``.encoder_independence(small, large)``."""
    return ContractCheck(gshead_registry)


@pytest.fixture
def gshead_tiny_pipeline():
    """``gshead.testing.tiny_pipeline``: the tiny reference pipeline as a config dict, slots replaceable."""
    from gshead.testing import tiny_pipeline

    return tiny_pipeline
