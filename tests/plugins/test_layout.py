"""The layout of ``gshead.plugins``: one module per registered component, named after it, and no
plugin importing another.

1. Every built-in component's config class and factory are defined in
   ``gshead.plugins.<kind>s.<name with '-' read as '_'>``, the file ``gshead/plugins/<kind>s/<name>.py``.
2. A static (``ast``) check of every module under ``gshead/plugins``: besides third-party packages,
   it may import only ``gshead.core``, ``gshead.io``, ``gshead.plugins._shared`` and the
   ``_``-prefixed helper modules of its own kind (``_shared`` modules: only core, io and
   ``_shared``). Imports inside functions, relative imports and ``importlib.import_module`` calls
   with a literal name count too. A component that composes others (``auto``) builds them
   through the registry instead.

The one exception is a deprecated alias module (``sys.modules[__name__] = <moved module>``,
kept for an old import path): it imports exactly the module it stands for, and nothing under
``gshead/plugins`` may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gshead.plugins
from gshead.core.components import KIND_TABLE, kind_info
from gshead.core.registry import Registry

PLUGINS = Path(gshead.plugins.__file__).resolve().parent
GSHEAD = PLUGINS.parent
KIND_FOLDERS = tuple(info.plural for info in KIND_TABLE)
SPECS = Registry(autoload=False).all()


def _module_name(path: Path) -> str:
    parts = path.relative_to(GSHEAD.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of gshead's source tree."""
    base = GSHEAD.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _is_alias(tree: ast.Module) -> bool:
    """A deprecated alias: some top-level ``sys.modules[__name__] = ...``."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and ast.unparse(target.value) == "sys.modules"
                    and ast.unparse(target.slice) == "__name__"
                ):
                    return True
    return False


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Absolute names of every gshead module ``tree`` (the source of ``module``) imports."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{source}.{alias.name}"
                found.add(sub if _is_module(sub) else source)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = ast.unparse(node.func)
            if func in ("importlib.import_module", "import_module", "__import__") and isinstance(
                node.args[0].value, str
            ):
                found.add(node.args[0].value)
    return {name for name in found if name == "gshead" or name.startswith("gshead.")}


def allowed(importer: str, imported: str) -> bool:
    """Whether module ``importer`` (under ``gshead.plugins``) may import ``imported``."""

    def within(name: str, root: str) -> bool:
        return name == root or name.startswith(root + ".")

    if within(imported, "gshead.core") or within(imported, "gshead.io"):
        return True
    if within(imported, "gshead.plugins._shared"):
        return True
    parts = importer.split(".")
    if len(parts) >= 3 and parts[2] in KIND_FOLDERS:  # a module of one kind: its own ``_`` helpers
        kind = f"gshead.plugins.{parts[2]}"
        rest = imported[len(kind) + 1 :].split(".") if within(imported, kind) else None
        return rest is not None and (imported == kind or rest[0].startswith("_"))
    return False


def _sources() -> list[tuple[str, Path]]:
    return sorted((_module_name(p), p) for p in PLUGINS.rglob("*.py") if "__pycache__" not in p.parts)


def violations() -> list[str]:
    """Every forbidden import under ``gshead/plugins``, as ``importer -> imported`` lines."""
    problems: list[str] = []
    aliases: set[str] = set()
    parsed = []
    for module, path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parsed.append((module, path, tree))
        if _is_alias(tree):
            aliases.add(module)
    for module, path, tree in parsed:
        imports = imported_modules(tree, module, path.name == "__init__.py")
        if module in aliases:
            if len(imports) != 1:
                problems.append(
                    f"{module} (a deprecated alias) imports {sorted(imports)}; expected one module"
                )
            continue
        problems += [f"{module} -> {name}" for name in sorted(imports) if not allowed(module, name)]
        problems += [f"{module} -> {name} (a deprecated alias)" for name in sorted(imports & aliases)]
    return problems


# -- 1. one module per component, named after it ----------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}:{s.name}")
def test_component_is_defined_in_the_module_named_after_it(spec):
    folder = kind_info(spec.kind).plural
    stem = spec.name.replace("-", "_")
    expected = f"gshead.plugins.{folder}.{stem}"
    assert spec.config_class.__module__ == expected, (
        f"{spec.config_class.__name__} is not defined in {expected}"
    )
    assert getattr(spec.factory, "__module__", None) == expected, (
        f"the factory of {spec.name!r} is not in {expected}"
    )
    assert (PLUGINS / folder / f"{stem}.py").is_file()


def test_every_kind_has_components_and_its_folder():
    kinds = {spec.kind for spec in SPECS}
    for info in KIND_TABLE:
        assert info.kind in kinds, f"no built-in {info.kind}"
        assert (PLUGINS / info.plural / "__init__.py").is_file(), f"gshead/plugins/{info.plural}/ is missing"


def test_every_public_module_of_a_kind_registers_a_component():
    registered = {spec.config_class.__module__ for spec in SPECS}
    for folder in KIND_FOLDERS:
        for path in sorted((PLUGINS / folder).glob("*.py")):
            if path.name.startswith("_"):
                continue  # __init__ and the kind's helpers
            module = _module_name(path)
            if _is_alias(ast.parse(path.read_text(encoding="utf-8"))):
                continue
            assert module in registered, f"{module} registers no component; helpers are named _<name>.py"


# -- 2. no plugin imports another -------------------------------------------------------------------
def test_no_plugin_module_imports_another_plugin():
    problems = violations()
    assert not problems, "forbidden imports under gshead/plugins:\n" + "\n".join(problems)


def test_the_import_check_sees_what_it_must():
    def check(module: str, source: str, package: bool = False) -> list[str]:
        tree = ast.parse(source)
        return sorted(n for n in imported_modules(tree, module, package) if not allowed(module, n))

    me = "gshead.plugins.drivers.mine"
    assert check(me, "from gshead.plugins.lifters.mesh_anchored import AnchorHead") == [
        "gshead.plugins.lifters.mesh_anchored"
    ]
    assert check(me, "from gshead.plugins.drivers import mesh_bound") == ["gshead.plugins.drivers.mesh_bound"]
    assert check(me, "def f():\n    from .mesh_bound import MeshBoundConfig") == [
        "gshead.plugins.drivers.mesh_bound"
    ]
    assert check(me, "from ..lifters import _dpt") == ["gshead.plugins.lifters._dpt"]  # another kind's helper
    assert check(me, "import importlib\nimportlib.import_module('gshead.plugins.rasterizers.cpu')") == [
        "gshead.plugins.rasterizers.cpu"
    ]
    assert check(me, "import gshead.train.config") == ["gshead.train.config"]
    fine = (
        "import torch\nfrom gshead.core.geometry import quat_to_rotmat\nfrom gshead.io.media import read_image\n"
        "from gshead.plugins._shared.surface import AnchorHead\nfrom gshead.plugins.drivers import _helpers\n"
        "from . import _helpers\nfrom gshead.plugins.drivers._helpers import x\n"
    )
    assert check(me, fine) == []
    # _shared may use core, io and _shared only
    shared = "gshead.plugins._shared.thing"
    assert check(shared, "from .surface import sample_at\nfrom gshead.core.types import Gaussians") == []
    assert check(shared, "from gshead.plugins.rasterizers._projection import EPS2D") == [
        "gshead.plugins.rasterizers._projection"
    ]
