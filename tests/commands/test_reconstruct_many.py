"""``gshead reconstruct IMG1 IMG2 ... | FOLDER -o DIR``: one avatar each, a summary table, a bad
image reported and skipped (exit 1), nothing half-written; refusals before any work."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from gshead.cli import main
from gshead.commands.reconstruct import avatar_name, image_list, summary_table
from gshead.io.avatar import load_avatar
from gshead.io.media import read_image
from gshead.testing import tiny_pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("many-cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def portraits(tmp_path_factory):
    """A folder with two small copies of example:astronaut (the only real portrait allowed), a
    broken .png and a text file that is not an image."""
    folder = tmp_path_factory.mktemp("portraits")
    pixels = (read_image("example:astronaut")[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((96, 96)).save(folder / "anna.png")
    Image.fromarray(pixels[:, ::-1]).resize((96, 96)).save(folder / "ben.jpg")
    return folder


def _run(capsys, *argv):
    code = main(["reconstruct", *argv, "-q"])
    return code, capsys.readouterr().err


def test_several_images_make_one_avatar_each_and_a_summary(tiny, portraits, tmp_path, capsys):
    out = tmp_path / "avatars"  # made when missing
    code, err = _run(
        capsys, "example:astronaut", str(portraits / "anna.png"), "-o", str(out), "--pipeline", tiny
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["anna.safetensors", "astronaut.safetensors"]
    for name in ("anna", "astronaut"):
        assert load_avatar(out / f"{name}.safetensors").avatar.static.count > 0
    lines = err.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("image "))
    assert "avatar" in lines[header] and "PSNR after fit" in lines[header] and "seconds" in lines[header]
    rows = lines[header + 2 : header + 4]
    assert rows[0].startswith("example:astronaut") and str(out / "astronaut.safetensors") in rows[0]
    assert rows[1].startswith(str(portraits / "anna.png")) and rows[1].split()[-2] == "-"  # no fitting
    assert "2 of 2 avatars written" in lines[-1]


def test_a_bad_image_is_reported_skipped_and_the_run_exits_1(tiny, portraits, tmp_path, capsys):
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    code, err = _run(
        capsys, str(bad), str(portraits / "anna.png"), str(tmp_path / "missing.png"), "-o", str(out),
        "--pipeline", tiny, "--fit-steps", "1",
    )  # fmt: skip
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["anna.safetensors"]  # nothing half-written
    assert f"gshead: {bad}: skipped: " in err and "not a readable image" in err
    assert f"{tmp_path / 'missing.png'}: skipped: " in err
    anna = next(line for line in err.splitlines() if line.startswith(str(portraits / "anna.png")))
    float(anna.split()[-2])  # the PSNR after one fitting step is a number
    assert "1 of 3 avatars written" in err and "2 images failed" in err


def test_a_folder_is_its_images_in_name_order(tiny, portraits, tmp_path, capsys):
    (portraits / "notes.txt").write_text("not a portrait", encoding="utf-8")
    (portraits / ".hidden.png").write_bytes(b"")
    try:
        assert image_list([str(portraits)]) == [str(portraits / "anna.png"), str(portraits / "ben.jpg")]
        out = tmp_path / "from-folder"
        code, err = _run(capsys, str(portraits), "-o", str(out), "--pipeline", tiny)
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["anna.safetensors", "ben.safetensors"]
    finally:
        (portraits / "notes.txt").unlink()
        (portraits / ".hidden.png").unlink()


def test_one_image_keeps_the_file_output(tiny, tmp_path, capsys):
    out = tmp_path / "one.safetensors"
    code, err = _run(capsys, "example:astronaut", "-o", str(out), "--pipeline", tiny)
    assert code == 0 and out.is_file() and "wrote" in err and "PSNR after fit" not in err


@pytest.mark.parametrize(
    "case, expected",
    [
        ("file-output", "expected a folder name for -o, not a .safetensors file"),
        ("existing-file", "exists and is not a folder"),
        ("same-stem", "would both be written to"),
        ("source-track", "--source-track: belongs to one image"),
        ("empty-folder", "a folder with no images"),
    ],
)
def test_refusals_come_before_any_work(tiny, portraits, tmp_path, capsys, case, expected):
    anna, ben = str(portraits / "anna.png"), str(portraits / "ben.jpg")
    args = {
        "file-output": [anna, ben, "-o", str(tmp_path / "x.safetensors")],
        "existing-file": [anna, ben, "-o", str(tmp_path / "taken")],
        "same-stem": [anna, str(tmp_path / "anna.jpg"), "-o", str(tmp_path / "out")],
        "source-track": [anna, ben, "-o", str(tmp_path / "out"), "--source-track", "optim.pkl"],
        "empty-folder": [str(tmp_path / "empty"), "-o", str(tmp_path / "out")],
    }[case]
    (tmp_path / "taken").write_text("a file", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _run(capsys, *args, "--pipeline", tiny)
    assert code == 2
    assert err.startswith("gshead: error: ") and expected in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made, nothing replaced
    assert (tmp_path / "taken").read_text(encoding="utf-8") == "a file"


def test_names_and_table_layout():
    assert avatar_name("example:astronaut") == "astronaut.safetensors"
    assert avatar_name("photos/Anna Smith.JPG") == "Anna Smith.safetensors"
    table = summary_table(
        [("a.png", "out/a.safetensors", "21.50", "3.2"), ("b.png", "failed: x", "-", "0.1")]
    )
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["image", "avatar"] and set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].endswith("21.50      3.2") and lines[3].startswith("b.png  failed: x")
