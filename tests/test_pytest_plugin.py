"""gshead's pytest plugin (entry point ``pytest11``): a third-party suite gets the contract checks
as fixtures, with no import and no conftest."""

from __future__ import annotations

import textwrap

pytest_plugins = ["pytester"]

BROKEN_PLUGIN = textwrap.dedent(
    '''
    from typing import Literal

    import torch
    from torch import nn

    from gshead import EncoderConfig, hookimpl
    from gshead.core.types import FeatureMaps


    class LiarConfig(EncoderConfig):
        name: Literal["liar"] = "liar"


    class Liar(nn.Module):
        """Says it makes 8 channels and makes 5."""

        out_channels = (8,)
        global_channels = 4

        def __init__(self, config, context):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)

        def forward(self, image):
            return FeatureMaps(local=(self.conv(image),), global_token=torch.zeros(image.shape[0], 4), image=image)


    @hookimpl
    def gshead_register_encoders(register):
        register.add(LiarConfig, Liar)
    '''
)

SUITE = textwrap.dedent(
    '''
    import pytest

    import liar_plugin
    from gshead.core.registry import Registry


    @pytest.fixture
    def gshead_registry():
        return Registry(autoload=False, extra_plugins=[("liar-dist", liar_plugin)])


    def test_builtin_encoder(gshead_check):
        gshead_check.component("encoder", {"name": "tiny-conv", "channels": 4})


    def test_liar(gshead_check):
        gshead_check.component("encoder", {"name": "liar"})
    '''
)


def test_fixtures_come_from_the_entry_point_and_catch_a_broken_component(pytester):
    pytester.makepyfile(liar_plugin=BROKEN_PLUGIN, test_liar=SUITE)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*encoder 'liar': local channels (5,) != out_channels*"])


def test_gshead_check_runs_the_pipeline_contract(gshead_check, gshead_tiny_pipeline):
    avatar = gshead_check.pipeline(encoder={"name": "tiny-conv", "channels": 4})
    assert avatar.static.count > 0
    assert gshead_tiny_pipeline(seed=3)["seed"] == 3
