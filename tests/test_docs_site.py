"""The documentation site (mkdocs.yml) builds with ``mkdocs build --strict``: every page and the
API reference render, and a link to a page or file that does not exist fails the build."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
MISSING = [name for name in PLUGINS if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"the docs toolchain is not installed (no {', '.join(MISSING)}): "
    "`make test` installs it with the dev extra (pip install -e '.[dev]')",
)
# What the site reads or links to; the copy for the broken-link test holds only these.
SOURCES = (
    "mkdocs.yml",
    "README.md",
    "BENCHMARKS.md",
    "LICENSE",
    "Makefile",
    "pyproject.toml",
    "constraints.txt",
    "conftest.py",
    "docs",
    "learner",
    "benchmarks",
    "configs",
    "tests",
)


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = build(ROOT, site)
    assert done.returncode == 0, done.stdout + done.stderr
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "intra-patient" in home, "the home page is not README.md"
    assert 'href="guide/"' in home, "README's link to docs/guide.md was not made a site link"
    reference = (site / "reference" / "learner" / "index.html").read_text(encoding="utf-8")
    for name in ("load_model", "predict_change", "write_cohort"):
        assert name in reference, f"the API reference lost {name}"
    assert ":func:" not in reference
    assert (site / "findings" / "index.html").is_file()
    assert (site / "benchmarks" / "reports" / "speed" / "index.html").is_file()


def _copy_sources(dest: Path) -> None:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "work", "*.egg-info")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, dest / name)


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _copy_sources(root)
    with (root / "docs" / "api.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [a page](no-such-page.md).\n")
    with (root / "README.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [a result](benchmarks/results/no-such-result.json).\n")
    done = build(root, tmp_path / "site")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "no-such-page.md" in output and "no-such-result.json" in output
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2, output
