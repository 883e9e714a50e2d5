"""The repository's documentation is self-contained: nothing points into the development checkout's
``../shared`` (users do not have it), and every relative link in the docs resolves inside the repo."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".md", ".py", ".ipynb", ".toml", ".txt", ".rst", ".cfg", ".json", ".html", ".yml", ".yaml", ".sh"}
#: A pointer into the development checkout: ``../shared``, ``shared/<file or folder>`` or its design files.
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/(?:DESIGN|ARCHITECTURE|STYLE|reference|hooks)\b"
                     r"|(?<![\w/])(?:DESIGN|ARCHITECTURE|STYLE)\.md\b")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".venv", ".git", "checkpoints"} & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names if Path(n).suffix in TEXT and (ROOT / n).is_file()]


def test_no_tracked_file_points_into_the_development_checkout():
    files = _tracked()
    assert any(f.name == "README.md" for f in files) and len(files) > 50
    me = Path(__file__).resolve()
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in files if f.resolve() != me
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("doc", ["README.md", "NOTES.md", "CONTRIBUTING.md", "docs/design.md", "docs/paper_numbers.md"])
def test_relative_links_of_the_docs_resolve_inside_the_repository(doc):
    path = ROOT / doc
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    for link in links:
        if "://" in link or link.startswith("mailto:"):
            continue
        target = (path.parent / link).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), f"{doc}: link {link!r} does not resolve"


def test_the_readme_leads_to_the_design_and_the_design_states_the_definitions():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/design.md)" in readme
    design = (ROOT / "docs/design.md").read_text()
    for must in ("Fourier conventions", "cos first", "W_L = W_out @ W_U", "restricted loss", "excluded loss",
                 "Gini", "Phases", "ln p"):
        assert must in design, must
