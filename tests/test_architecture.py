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


# -- dependencies --------------------------------------------------------------------------------------
def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _import_name(requirement: str) -> str:
    import re

    dist = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    return {"scikit-learn": "sklearn", "opentsne": "openTSNE"}.get(dist.lower(), dist.replace("-", "_").lower())


def _imported_top_level(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_imported():
    """A runtime dependency the package never imports is a defect (it costs every install); so is an
    import of a package that is not declared (or is only an optional extra, at module level)."""
    deps = [_import_name(r) for r in _pyproject()["project"]["dependencies"]]
    imported = _imported_top_level(PKG.rglob("*.py"))
    assert [d for d in deps if d not in imported] == []


def test_optional_extras_are_declared_and_stay_out_of_the_light_paths(tiny_run):
    """The optional analyses' packages are extras (`slt`, `embed`; scikit-learn also in `dev`), and
    `grokinterp --help`, `grokinterp info RUN`, the store and the sweeps (planning, tables) import none
    of them, nor transformer_lens or plotly: those paths answer without seconds of imports."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert [_import_name(r) for r in extras["slt"]] == ["devinterp"]
    assert {_import_name(r) for r in extras["embed"]} == {"sklearn", "openTSNE"}
    assert "sklearn" in {_import_name(r) for r in extras["dev"]}
    heavy = ("transformer_lens", "plotly", "sklearn", "devinterp", "openTSNE")
    code = f"""
import contextlib, io, sys
from grokinterp.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
    assert main(["info", {str(tiny_run.path)!r}]) == 0
    assert main(["info", {str(tiny_run.path)!r}, "--json"]) == 0
import grokinterp, grokinterp.store.run, grokinterp.store.integrity, grokinterp.sweeps.driver
import grokinterp.sweeps.executor, grokinterp.sweeps.table, grokinterp.monitor
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout
