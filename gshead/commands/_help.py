"""How every ``gshead`` subcommand's ``--help`` reads: a description and an epilog of examples.

``doc(description, *examples)`` gives the ``add_parser`` keywords: the description (paragraphs
re-wrapped to the terminal), an ``examples:`` epilog whose lines are kept as written (``# ...``
lines say what the ``gshead ...`` line under them does) and the formatter that does both. Every
example is a real command line: ``tests/test_cli_help.py`` parses each with the real parser.
"""

from __future__ import annotations

import argparse
import textwrap


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Unindented paragraphs are wrapped to the width; indented lines (the examples) stay as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for block in text.split("\n\n"):
            lines = block.splitlines()
            if not any(line.startswith(" ") for line in lines):
                out.append(
                    textwrap.fill(
                        " ".join(block.split()), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
            else:
                out.append("\n".join(indent + line for line in lines))
        return "\n\n".join(out)


def examples_epilog(*examples: str, title: str = "examples") -> str:
    """``title:`` then each example indented by two spaces; an example may be ``# what`` + newline + command."""
    lines = [f"{title}:"]
    for example in examples:
        lines.extend("  " + line for line in example.splitlines())
    return "\n".join(lines)


def doc(description: str, *examples: str) -> dict:
    """The ``add_parser`` keywords for a command: ``description``, an examples ``epilog``, the formatter."""
    return {
        "description": description,
        "epilog": examples_epilog(*examples) if examples else None,
        "formatter_class": Formatter,
    }


def example_lines(text: str | None) -> list[str]:
    """The ``gshead ...`` command lines of an epilog (what the tests parse)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip().startswith("gshead ")]


__all__ = ["Formatter", "doc", "example_lines", "examples_epilog"]


WEIGHTS_HELP = (
    "pipeline weights to load: builtin:default (the shipped trained weights of the embedded "
    "default pipeline), or a pipeline-weights .safetensors file written by 'gshead import' or "
    "'gshead train' for this pipeline (default: none, the seeded initialisation)"
)
"""The ``--weights`` help of the commands that build a pipeline (reconstruct, eval)."""
