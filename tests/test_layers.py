"""The package's architecture, read from its source: every module imports only layers below
its own (or modules of its own layer, without cycles), internal imports sit at the top of
files, no private name crosses a package boundary, and pixel-centre shifts (+-0.5) are
written only in :mod:`l2m_plugin.coords`. README "Layout" draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "l2m_plugin"

#: bottom to top. A module belongs to the first entry whose name is a prefix of its own.
LAYERS = [
    ("core", ["coords", "files", "hardware", "config", "geometry", "io", "sampling"]),
    ("formats", ["formats"]),
    ("weights", ["weights"]),
    ("models", ["models"]),
    ("matching", ["matching"]),
    ("viz", ["viz"]),
    ("sfm", ["sfm"]),
    ("data", ["synthesis", "lifting"]),
    ("eval", ["eval"]),
    ("training", ["training"]),
    ("testing", ["testing"]),
    ("integrations", ["integrations"]),
    ("cli", ["cli", ""]),  # "" = the package's own __init__ (the public API)
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _rel(mod: str) -> str:
    path = MODULES[mod]
    return f"l2m_plugin/{path.relative_to(PKG)}" if path.is_relative_to(PKG) else str(path)


def _layer(mod: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if pre and (mod == pre or mod.startswith(pre + ".")):
                return i
    if mod == "":
        return len(LAYERS) - 1
    raise AssertionError(f"module l2m_plugin.{mod} is in no layer of tests/test_layers.py: add it")


def _package(mod: str) -> str:
    """The unit inside which private names may be shared: a subpackage, or a top-level module."""
    return mod.split(".")[0]


def _imports(mod: str):
    """``(target module, imported name or None, line, at_top)`` for every import of l2m_plugin."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.add(id(node))
        elif isinstance(node, (ast.If, ast.Try)):  # e.g. `if TYPE_CHECKING:` or an optional import
            top.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write l2m_plugin.<module>"
            if node.module != "l2m_plugin" and not (node.module or "").startswith("l2m_plugin."):
                continue
            base = node.module[len("l2m_plugin") :].lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}".lstrip(".")
                if sub in MODULES:  # `from l2m_plugin.pkg import module`
                    yield sub, None, node.lineno, id(node) in top
                else:
                    yield base, alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "l2m_plugin" or alias.name.startswith("l2m_plugin."):
                    yield alias.name[len("l2m_plugin") :].lstrip("."), None, node.lineno, id(node) in top


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _, _ in _imports(m) if t != m} for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)


def test_no_upward_import():
    bad = []
    for m in sorted(MODULES):
        for target, _name, line, _ in _imports(m):
            if target not in MODULES:
                bad.append(f"{_rel(m)}:{line}: l2m_plugin.{target} does not exist")
            elif _layer(target) > _layer(m):
                bad.append(
                    f"{_rel(m)}:{line}: {LAYERS[_layer(m)][0]} imports "
                    f"l2m_plugin.{target} of the higher layer {LAYERS[_layer(target)][0]}"
                )
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t not in graph:
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_internal_imports_at_the_top_of_files():
    late = [
        f"{_rel(m)}:{line}: l2m_plugin.{t} imported inside a function"
        for m in sorted(MODULES)
        for t, _, line, at_top in _imports(m)
        if not at_top
    ]
    assert not late, "\n".join(late)


def test_no_private_name_crosses_a_package():
    bad = []
    for m in sorted(MODULES):
        for target, name, line, _ in _imports(m):
            if name and name.startswith("_") and not name.startswith("__") and _package(target) != _package(m):
                bad.append(f"{_rel(m)}:{line}: private {name} of l2m_plugin.{target}")
    assert not bad, "\n".join(bad)


def _half_shifts(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            sides = (node.left, node.right)
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)):
            sides = (node.value,)
        else:
            continue
        if any(isinstance(s, ast.Constant) and s.value == 0.5 for s in sides):
            yield node.lineno, ast.unparse(node)


def test_pixel_centre_shifts_only_in_coords():
    bad = [
        f"{_rel(m)}:{line}: {src[:70]} (use l2m_plugin.coords)"
        for m in sorted(MODULES)
        if m != "coords"
        for line, src in _half_shifts(MODULES[m])
    ]
    assert not bad, "\n".join(bad)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The AST readers above see an upward import, a late import and a half shift."""
    global MODULES
    probe = PKG / "coords.py"
    src = probe.read_text(encoding="utf-8")
    fake = tmp_path / "coords.py"
    fake.write_text(src + "\n\ndef _probe(x):\n    from l2m_plugin.cli import main\n\n    return x + 0.5\n")
    saved = MODULES
    MODULES = {**saved, "coords": fake}
    try:
        with pytest.raises(AssertionError, match="higher layer cli"):
            test_no_upward_import()
        with pytest.raises(AssertionError, match="inside a function"):
            test_internal_imports_at_the_top_of_files()
        assert any("x + 0.5" in s for _, s in _half_shifts(fake))
    finally:
        MODULES = saved
