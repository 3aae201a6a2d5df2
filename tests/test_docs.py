"""The docs run: every "writing a plugin" example passes the contract checks, and the generated
component list is in sync with the code."""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest

from gshead.core.components import KINDS
from gshead.core.registry import Registry
from gshead.docs import REGENERATE, components_markdown
from gshead.pytest_plugin import ContractCheck

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


class _DocsCheck(ContractCheck):
    """``gshead_check`` as a page's test gets it, except that the numba rasterizer (``cpu``)
    replaces the slow reference one in tiny pipelines where the example is not the rasterizer."""

    def pipeline(self, **slots):
        slots.setdefault("rasterizer", {"name": "cpu"})
        return super().pipeline(**slots)


def _page_tests(kind: str) -> list:
    """The test functions of the page's contract-test block (the python block defining them)."""
    blocks = [b for b in _python_blocks(DOCS / "plugins" / f"{kind}.md") if "def test_" in b]
    assert len(blocks) == 1, f"{kind}.md: expected one python block with the example's test"
    namespace: dict = {}
    exec(compile(blocks[0], f"docs/plugins/{kind}.md (test)", "exec"), namespace)  # noqa: S102 - our own docs
    tests = [f for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    assert tests, f"{kind}.md: the test block defines no test function"
    return tests


@pytest.mark.parametrize("kind", KINDS)
def test_plugin_page_example_passes_its_own_contract_test(kind):
    module, module_name = _example_module(kind)
    try:
        registry = Registry(autoload=False, blocked=(), extra_plugins=[("docs-example", module)])
        ours = [s for s in registry.components(kind).values() if s.source == "docs-example"]
        assert len(ours) == 1, f"docs/plugins/{kind}.md: the example must register exactly one {kind}"
        name = ours[0].name
        page = (DOCS / "plugins" / f"{kind}.md").read_text(encoding="utf-8")
        assert "register.add(" in page, f"{kind}.md: the example registers with register.add(Config, Factory)"
        assert f'{name} = "{module_name}"' in page  # entry-point line
        # the page's test checks this component, with the fixture of gshead's pytest plugin ...
        assert f'gshead_check.component("{kind}", {{"name": "{name}"' in page
        assert f'gshead_check.pipeline({kind}={{"name": "{name}"' in page
        # ... and passes: a tiny avatar reconstructs and drives with it (contract clauses 1, 2)
        for test in _page_tests(kind):
            test(_DocsCheck(registry))
    finally:
        sys.modules.pop(module_name, None)


def test_page_tests_catch_a_broken_component():
    """The pages' tests do check: the encoder page's test fails on a lying copy of its example."""
    module, module_name = _example_module("encoder")
    try:
        original = module.MeanPoolEncoder.__init__

        def lying_init(self, config, context):
            original(self, config, context)
            self.out_channels = (config.width + 1,)

        module.MeanPoolEncoder.__init__ = lying_init
        registry = Registry(autoload=False, blocked=(), extra_plugins=[("docs-example", module)])
        (test,) = _page_tests("encoder")
        with pytest.raises(AssertionError, match="out_channels"):
            test(_DocsCheck(registry))
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


def _alias_target(source: str) -> str | None:
    """The module a deprecated alias stands for (``from a import b as _moved`` + ``sys.modules[__name__] =``)."""
    tree = ast.parse(source)
    if not any(
        isinstance(node, ast.Assign) and any(ast.unparse(t) == "sys.modules[__name__]" for t in node.targets)
        for node in tree.body
    ):
        return None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.names[0].asname == "_moved":
            return f"{node.module}.{node.names[0].name}"
        if isinstance(node, ast.Import) and node.names[0].asname == "_moved":
            return node.names[0].name
    raise AssertionError("an alias module must import its new home as _moved")


def test_architecture_page_lists_every_deprecated_alias_and_the_layout_rules():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = DOCS.parent / "gshead"
    aliases = {}
    for path in sorted(package.rglob("*.py")):
        target = _alias_target(path.read_text(encoding="utf-8"))
        if target is not None:
            old = ".".join(path.relative_to(DOCS.parent).with_suffix("").parts)
            aliases[old] = target
    assert len(aliases) >= 19, aliases
    for old, new in aliases.items():
        assert f"| `{old}` | `{new}` |" in page, f"docs/architecture.md: add the row for the alias {old} -> {new}"
    assert "lint-imports" in page and "gshead/plugins/KINDs/NAME.py" in page
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in readme
