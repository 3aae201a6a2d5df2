"""The hooks a gshead plugin implements: one per component kind.

A plugin is a module with functions decorated by ``hookimpl`` and named after these specs.
Each hook is called once, when the registry first loads, with a ``Register`` object that the
core owns (``gshead.core.registry.Register``); the plugin adds each of its components with it::

    from typing import Literal
    from gshead import hookimpl, EncoderConfig

    class MyEncoderConfig(EncoderConfig):
        name: Literal["my-encoder"] = "my-encoder"
        width: int = 64
        '''Channels of the feature map.'''

    @hookimpl
    def gshead_register_encoders(register):
        register.add(MyEncoderConfig, MyEncoder)   # MyEncoder(config, context) builds it

The component's name is the default of its config's ``name`` field, so YAML selects it with
``encoder: {name: my-encoder, width: 32}``. Built-in components use exactly these hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from gshead.core.components import KIND_TABLE

if TYPE_CHECKING:
    from gshead.core.registry import Register

PROJECT = "gshead"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gshead_register_headmodels(register: Register) -> None:
    """Register morphable head models.

    :param register: call ``register.add(config_class, factory)`` once per head model.
    """


@hookspec
def gshead_register_encoders(register: Register) -> None:
    """Register image encoders (image -> FeatureMaps).

    :param register: call ``register.add(config_class, factory)`` once per encoder.
    """


@hookspec
def gshead_register_lifters(register: Register) -> None:
    """Register lifters (FeatureMaps -> static Gaussians).

    :param register: call ``register.add(config_class, factory)`` once per lifter.
    """


@hookspec
def gshead_register_drivers(register: Register) -> None:
    """Register expression drivers (make the rig once, pose it per frame).

    :param register: call ``register.add(config_class, factory)`` once per driver.
    """


@hookspec
def gshead_register_rasterizers(register: Register) -> None:
    """Register Gaussian rasterizers (Gaussians + camera -> feature image).

    :param register: call ``register.add(config_class, factory)`` once per rasterizer.
    """


@hookspec
def gshead_register_refiners(register: Register) -> None:
    """Register neural refiners (feature image -> RGB image).

    :param register: call ``register.add(config_class, factory)`` once per refiner.
    """


@hookspec
def gshead_register_trackers(register: Register) -> None:
    """Register trackers (images -> head parameters and cameras).

    :param register: call ``register.add(config_class, factory)`` once per tracker.
    """


HOOK_FOR_KIND: dict[str, str] = {info.kind: info.hook for info in KIND_TABLE}
"""The hook of each kind (derived from ``KIND_TABLE``; a test checks every hook is specified above)."""
