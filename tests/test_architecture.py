"""The house rules, checked: layers (import-linter), no import cycles, no private names across modules,
no subpackage that would shadow a facade function."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "grokinterp"


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "kept" in out.stdout


def _graph():
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph("grokinterp")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    g = _graph()
    # A package's __init__ may re-export its own submodules (that is not a cycle of the design);
    # every other edge counts, function-level imports included.
    edges = {}
    for m in g.modules:
        edges[m] = {t for t in g.find_modules_directly_imported_by(m)
                    if not (t.startswith(m + ".") and (PKG / Path(*m.split(".")[1:]) / "__init__.py").exists())}
    assert _cycles(edges) == []


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_uses(src: str, module: str, is_pkg: bool) -> list[str]:
    """``from X import _name`` from another module, and ``alias._name`` on an imported grokinterp name."""
    bad = []
    tree = ast.parse(src)
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src_mod = _resolve(module, is_pkg, node)
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__") and src_mod != module:
                    bad.append(f"{node.lineno}: from {src_mod} import {a.name}")
                if src_mod.startswith("grokinterp"):
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("grokinterp"):
                    aliases.add((a.asname or a.name).split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return bad


def test_no_private_names_imported_across_modules():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT)
        bad += [f"{rel}:{b}" for b in _private_uses(path.read_text(), _module_name(path), path.name == "__init__.py")]
    assert bad == []


def test_private_name_checker_catches_planted_uses():
    src = "from ..store.layout import _ST_DTYPES\nfrom .. import config as c\nfrom .x import ok\nx = c._require\n"
    assert _private_uses(src, "grokinterp.analysis.fake", False) == [
        "1: from grokinterp.store.layout import _ST_DTYPES", "4: c._require"]


def test_no_subpackage_shadows_a_facade_function():
    for name in ("train", "sweep", "resume"):
        assert not (PKG / name).exists() and not (PKG / f"{name}.py").exists(), name
