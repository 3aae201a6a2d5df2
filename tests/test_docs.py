"""The docs run: every "writing a plugin" example passes the contract checks, and the generated
component list is in sync with the code."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from gshead.core.components import KINDS
from gshead.core.registry import Registry
from gshead.docs import REGENERATE, components_markdown
from gshead.testing import check_component, check_pipeline

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)


def _example_module(kind: str) -> tuple[types.ModuleType, str]:
    """The page's plugin example (its first python block) imported as a module, and its name."""
    block = _python_blocks(DOCS / "plugins" / f"{kind}.md")[0]
    first = block.splitlines()[0]
    assert re.fullmatch(r"# gshead_\w+_plugin\.py", first), (
        f"{kind}.md: the example must start with '# <module>.py'"
    )
    module_name = first[2:-3]
    module = types.ModuleType(module_name)
    module.__file__ = str(DOCS / "plugins" / f"{kind}.md")
    sys.modules[module_name] = module  # pydantic resolves the config's annotations through it
    try:
        exec(compile(block, f"docs/plugins/{kind}.md", "exec"), module.__dict__)  # noqa: S102 - our own docs
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module, module_name


@pytest.mark.parametrize("kind", KINDS)
def test_plugin_page_example_passes_the_contract_checks(kind):
    module, module_name = _example_module(kind)
    try:
        registry = Registry(autoload=False, blocked=(), extra_plugins=[("docs-example", module)])
        ours = [s for s in registry.components(kind).values() if s.source == "docs-example"]
        assert len(ours) == 1, f"docs/plugins/{kind}.md: the example must register exactly one {kind}"
        name = ours[0].name
        check_component(kind, {"name": name}, registry=registry)
        # and a tiny avatar reconstructs and drives with it (contract clauses 1 and 2); the
        # numba rasterizer keeps this fast where the example is not the rasterizer itself
        slots = (
            {kind: {"name": name}}
            if kind == "rasterizer"
            else {kind: {"name": name}, "rasterizer": {"name": "cpu"}}
        )
        check_pipeline(registry=registry, **slots)
        # the page's own test snippet names the same component
        page = (DOCS / "plugins" / f"{kind}.md").read_text(encoding="utf-8")
        assert f'check_component("{kind}", {{"name": "{name}"' in page
        assert f'{name} = "{module_name}"' in page  # entry-point line
    finally:
        sys.modules.pop(module_name, None)


def test_every_kind_has_a_page_linked_from_the_index():
    index = (DOCS / "plugins" / "README.md").read_text(encoding="utf-8")
    for kind in KINDS:
        assert (DOCS / "plugins" / f"{kind}.md").is_file()
        assert f"({kind}.md)" in index, f"docs/plugins/README.md does not link {kind}.md"
    top = (DOCS / "README.md").read_text(encoding="utf-8")
    assert "(components.md)" in top and "(plugins/README.md)" in top


def test_components_md_is_in_sync_with_the_code():
    current = (DOCS / "components.md").read_text(encoding="utf-8")
    assert current == components_markdown(), f"docs/components.md is out of date; run: {REGENERATE}"


def test_components_md_lists_every_builtin_component_and_field():
    text = components_markdown()
    registry = Registry(autoload=False, blocked=())
    for spec in registry.all():
        assert f"### `{spec.name}`" in text
        for field, info in spec.config_class.model_fields.items():
            if field != "name":
                assert f"| `{field}` |" in text
                if info.description:
                    assert " ".join(info.description.split())[:40].replace("|", "\\|") in text


def test_docs_module_check_mode(tmp_path, capsys):
    from gshead.docs import main

    out = tmp_path / "components.md"
    assert main(["-o", str(out)]) == 0
    assert main(["-o", str(out), "--check"]) == 0
    out.write_text("stale\n", encoding="utf-8")
    assert main(["-o", str(out), "--check"]) == 1
    assert REGENERATE in capsys.readouterr().err


def test_readme_walkthrough_commands_parse_and_link_existing_pages():
    """Every gshead command the walkthrough shows is accepted by the parser (options exist), and
    its links point at files that exist."""
    import shlex

    from gshead.cli import build_parser

    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    commands = [
        c
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
        for c in block.strip().splitlines()
    ]
    commands += re.findall(r"`(gshead (?:plugins|headmodel info \w+))`", section)  # complete inline commands
    assert len(commands) >= 4
    parser = build_parser()
    for command in commands:
        words = shlex.split(command.strip())
        assert words[0] == "gshead", command
        try:
            parser.parse_args(words[1:])
        except SystemExit:  # pragma: no cover - the message is printed by argparse
            pytest.fail(f"README walkthrough command does not parse: {command}")
    for link in re.findall(r"\]\((docs/[^)#]+)\)", section):
        assert (DOCS.parent / link).exists(), link


def test_docs_index_links_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}; add it to the index"
