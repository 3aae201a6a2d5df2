"""``gshead --help`` and every subcommand's ``--help``: they run, each has a description and an
example, every example is a command line the real parser accepts, the top level lists the commands
in workflow order, ``--weights`` names ``builtin:default``, ``bench`` takes the pipeline as a
positional (the old ``--contract PIPELINE.yaml`` still parses) and the ``--json`` summaries are JSON."""

from __future__ import annotations

import argparse
import json
import re
import shlex

import pytest

from gshead.cli import COMMAND_ORDER, QUICK_START, build_parser, main
from gshead.commands._help import example_lines
from gshead.commands.bench import bench_pipeline


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(parser, path=()):
    """(path of subcommand words, parser) for every parser under ``parser``, itself first."""
    yield path, parser
    for name, sub in _subparsers(parser).items():
        yield from _walk(sub, (*path, name))


PARSERS = list(_walk(build_parser()))
COMMANDS = [path for path, _ in PARSERS if path]


def test_every_command_and_action_is_walked():
    assert set(COMMAND_ORDER) <= {path[0] for path in COMMANDS}
    assert ("headmodel", "info") in COMMANDS and ("import", "gagavatar") in COMMANDS
    assert ("config", "schema") in COMMANDS and ("data", "from-videos") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_runs_and_shows_a_description_and_an_example(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gshead {' '.join(path)}"), out[:200]
    assert "\nexamples:\n" in out
    examples = [line for line in out.splitlines() if line.strip().startswith("gshead ")]
    assert examples, out
    parser = dict(PARSERS)[path]
    assert parser.description and len(parser.description) > 30, path


def _all_examples() -> list[tuple[str, str]]:
    out = []
    for path, parser in PARSERS:
        for line in example_lines(parser.epilog):
            out.append((" ".join(path) or "gshead", line))
    return out


EXAMPLES = _all_examples()


def test_every_parser_has_examples_and_the_top_level_the_quick_start():
    assert {where for where, _ in EXAMPLES} == {" ".join(p) for p in COMMANDS} | {"gshead"}
    top = [line for where, line in EXAMPLES if where == "gshead"]
    assert top == example_lines(QUICK_START)
    assert (
        top[0].startswith("gshead reconstruct example:astronaut ") and "--weights builtin:default" in top[0]
    )
    assert top[1].startswith("gshead reenact ") and "--driver demo" in top[1]


@pytest.mark.parametrize("where, example", EXAMPLES, ids=[f"{w}: {e}" for w, e in EXAMPLES])
def test_every_example_parses(where, example):
    assert not re.search(r"[|<>;&`$]", example), f"{example}: shell syntax in an example"
    argv = shlex.split(example)
    assert argv[0] == "gshead"
    args = build_parser().parse_args(argv[1:])  # argparse exits (status 2) on a bad example
    assert callable(args.func)
    if where != "gshead":  # a command's examples are mostly of that command
        assert argv[1] in {where.split()[0], "reenact", "reconstruct"}, example


def test_top_level_help_lists_commands_in_workflow_order(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    listed = [m.group(1) for m in re.finditer(r"^    (\S+)", out, flags=re.MULTILINE)]
    assert listed == list(COMMAND_ORDER)
    assert list(_subparsers(build_parser())) == list(COMMAND_ORDER)
    assert "quick start:" in out and "gshead COMMAND --help" in out


def test_weights_help_names_the_shipped_weights():
    found = []
    for path, parser in PARSERS:
        for action in parser._actions:
            if "--weights" in action.option_strings:
                found.append(path)
                assert "builtin:default" in action.help and "file" in action.help, path
    assert ("reconstruct",) in found and ("eval",) in found


def test_no_auto_metavar_with_an_underscore():
    for path, parser in PARSERS:
        usage = parser.format_usage()
        assert not re.search(r"\b[A-Z]+_[A-Z_]+\b", usage), (path, usage)


def test_reenact_frames_help_says_what_other_drivers_do():
    parser = dict(PARSERS)[("reenact",)]
    frames = next(a for a in parser._actions if "--frames" in a.option_strings)
    assert frames.metavar == "N" and "demo" in frames.help and "every other driver" in frames.help
    orbit = next(a for a in parser._actions if "--orbit-degrees" in a.option_strings)
    assert orbit.metavar == "DEG"


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "configs/separated-cpu.yaml"],
        ["bench", "configs/separated-cpu.yaml", "--contract"],
        ["bench", "--contract", "configs/separated-cpu.yaml"],  # the old spelling
        ["bench", "--contract", "configs/separated-cpu.yaml", "--frames", "3", "--json"],
        ["bench", "--contract", "--threads", "1", "configs/separated-cpu.yaml"],
    ],
)
def test_bench_takes_the_pipeline_as_a_positional_or_the_old_option(argv):
    assert bench_pipeline(build_parser().parse_args(argv)) == "configs/separated-cpu.yaml"


def test_bench_without_a_pipeline_or_with_two_is_one_line(capsys):
    assert main(["bench"]) == 2
    assert "no pipeline" in capsys.readouterr().err
    assert main(["bench", "a.yaml", "--contract", "b.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two pipelines" in err[0]


# ------------------------------------------------------------------------------ --json
@pytest.fixture(scope="module")
def pipeline_yaml(tiny_pipeline_yaml):
    return tiny_pipeline_yaml


@pytest.fixture(scope="module")
def avatar(tiny_avatar_file):
    return tiny_avatar_file


def _json(capsys) -> dict:
    captured = capsys.readouterr()
    assert "wrote " in captured.err or "reconstruct:" in captured.err  # the human text stays on stderr
    return json.loads(captured.out)


def test_reconstruct_json(pipeline_yaml, tmp_path, capsys):
    out = tmp_path / "one.safetensors"
    argv = ["reconstruct", "example:astronaut", "-o", str(out), "--pipeline", str(pipeline_yaml), "-q"]
    assert main([*argv, "--fit-steps", "1", "--json"]) == 0
    summary = _json(capsys)
    assert summary["avatar"] == str(out) and summary["image"] == "example:astronaut"
    assert summary["static_gaussians"] > 0 and summary["driven_gaussians"] >= 0 and summary["channels"] == 8
    assert summary["fit"]["steps"] == 1 and summary["fit"]["psnr_after"] > 0

    folder = tmp_path / "many"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    argv = ["reconstruct", "example:astronaut", str(bad), "-o", str(folder), "--pipeline", str(pipeline_yaml)]
    assert main([*argv, "-q", "--json"]) == 1
    summary = _json(capsys)
    assert (summary["written"], summary["failed"]) == (1, 1)
    good, failed = summary["images"]
    assert (
        good["avatar"] == str(folder / "astronaut.safetensors")
        and good["error"] is None
        and good["fit"] is None
    )
    assert failed["avatar"] is None and failed["error"]


def test_reenact_export_and_track_json(avatar, pipeline_yaml, tmp_path, capsys):
    grid = tmp_path / "frames.png"
    argv = [
        "reenact",
        str(avatar),
        "--driver",
        "demo",
        "--frames",
        "4",
        "--size",
        "16",
        "-o",
        str(grid),
        "-q",
    ]
    assert main([*argv, "--json"]) == 0
    summary = _json(capsys)
    assert summary["output"] == str(grid) and summary["frames"] == 4 and summary["grid"]["rows"] >= 1

    ply = tmp_path / "head.ply"
    assert main(["export", str(avatar), "-o", str(ply), "--json"]) == 0
    summary = _json(capsys)
    assert summary["output"] == str(ply) and summary["gaussians"] > 0 and summary["sh_degree"] == 3
    assert summary["camera"] == str(tmp_path / "head.camera.json") and summary["up"] == "-y"

    seq = tmp_path / "astronaut-track.safetensors"
    argv = ["track", "example:astronaut", "-o", str(seq), "--pipeline", str(pipeline_yaml), "-q", "--json"]
    assert main(argv) == 0
    summary = _json(capsys)
    assert summary["output"] == str(seq) and summary["frames"] == 1 and summary["format"] == "sequence"
    assert summary["head_model"] == "procedural" and len(summary["crop"]) == 2


def test_live_json_report_is_strict_json():
    from gshead.commands.live import report_json
    from gshead.jobs.live import LiveReport

    report = LiveReport(
        source="talk.mp4", arrived=10, shown=8, dropped=2, no_face=0, seconds=1.0, fps=8.0, source_fps=25.0,
        startup_s=0.5, latency_ms_median=40.0, latency_ms_p95=float("nan"), track_ms_median=10.0,
        render_ms_median=20.0,
    )  # fmt: skip
    text = json.dumps(report_json(report), allow_nan=False)
    assert json.loads(text)["latency_ms_p95"] is None and json.loads(text)["shown"] == 8
    assert build_parser().parse_args(["live", "a.safetensors", "--video", "0", "--json"]).json
