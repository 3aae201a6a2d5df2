"""Tracked-sequence files and the demo motion."""

from __future__ import annotations

import pytest
import torch

from gshead.core.errors import InputError
from gshead.io.motion import demo_motion
from gshead.io.sequence import TrackedSequence, load_sequence, save_sequence
from gshead.core.types import Camera
from gshead.plugins.headmodels.procedural import ProceduralHeadConfig, ProceduralHeadModel


@pytest.fixture(scope="module")
def head():
    return ProceduralHeadModel(ProceduralHeadConfig(subdivisions=4))


def _sequence(head, n=12):
    valid = torch.ones(n, dtype=torch.bool)
    valid[3] = False
    return TrackedSequence(demo_motion(head, n), Camera.frontal(1.0, 18.0, 64, 48, n), valid, 30.0, "procedural")


def test_round_trip(tmp_path, head):
    seq = _sequence(head)
    save_sequence(tmp_path / "s.safetensors", seq)
    back = load_sequence(tmp_path / "s.safetensors")
    assert len(back) == 12 and back.fps == 30.0 and back.head_model == "procedural"
    assert (back.camera.width, back.camera.height) == (64, 48)
    assert torch.equal(back.valid, seq.valid)
    for key, value in seq.params.tensors().items():
        assert torch.equal(back.params.tensors()[key], value), key


def test_bad_files_fail_in_one_line(tmp_path, head):
    path = tmp_path / "s.safetensors"
    save_sequence(path, _sequence(head))
    short = tmp_path / "short.safetensors"
    short.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="not a readable tracked-sequence file"):
        load_sequence(short)
    with pytest.raises(InputError, match="no such tracked-sequence file"):
        load_sequence(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "other"})
    with pytest.raises(InputError, match="not a gshead tracked sequence"):
        load_sequence(tmp_path / "other.safetensors")


def test_mismatched_lengths_are_refused(head):
    with pytest.raises(InputError, match="12 frames of parameters but 5 cameras"):
        TrackedSequence(demo_motion(head, 12), Camera.frontal(1.0, 18.0, 64, 64, 5), torch.ones(12, dtype=torch.bool), 25.0, "procedural")


def test_demo_motion_has_its_four_phases(head):
    motion = demo_motion(head, 40)
    names = head.expression_names
    talk, smile, blink, turn = (slice(0, 10), slice(10, 20), slice(20, 30), slice(30, 40))
    assert motion.jaw[talk, 0].max() > 0.2 and motion.jaw[smile].abs().max() == 0
    assert motion.expression[smile, names.index("mouthSmileLeft")].max() > 0.9
    assert motion.expression[blink, names.index("eyeBlinkLeft")].max() > 0.9
    assert motion.rotation[turn, 1].max() > 0.3 and motion.rotation[turn, 1].min() < -0.3
    assert motion.rotation[:30].abs().max() == 0
    with pytest.raises(InputError, match="at least 4 frames"):
        demo_motion(head, 3)
