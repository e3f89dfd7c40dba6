"""docs/tutorial-oasis2.md runs as written: every fenced ``bash`` or ``python`` block preceded by
a ``<!-- run -->`` line is executed, in order, in one temporary folder holding a link to the
OASIS-2 slices, with ``learner`` and ``python`` this interpreter. Each must exit 0, and the
output lines the page quotes that do not depend on training (counts, the split, file
checks) must be what the commands print. Skips with a reason when ``../shared/data`` lacks
the data (a fresh clone). About two minutes on two CPU cores: ``-m "not tutorial"``
deselects it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "tutorial-oasis2.md"
OASIS2 = REPO / ".." / "shared" / "data" / "oasis2-slices"
MARKER = "<!-- run -->"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# What the page quotes that is the same on every machine (no trained number in it; the
# caveat's first reason comes from the split): each must be on the page and in the output.
QUOTED = (
    "table oasis_longitudinal_demographic.csv: separator ';' (sniffed), decimal ',' (sniffed); "
    "373 rows",
    "skipped 372 file(s) that do not exist (axl 126, cor 123, sag 123); "
    "123 of 373 table rows gave no manifest row",
    "wrote manifest.csv: 747 scans from 250 of 373 table rows",
    "scan files decoded: 747, all readable",
    "warning: 'stable' is 82% of manifest pairs",
    "change model caveat: held-out test had no improve pair: not comparable",
    "patients: 71 train, 15 val, 15 test",
    "58 test pairs of 15 patients",
    "15 patients, 104 scans, 20 visit pairs (20 with scores)",
    "warning: do not trust these predictions: held-out test had no improve pair: not comparable",
    "caveat: held-out test had no improve pair: not comparable",
    "('worsen', 'stable', 'improve')",
)


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block whose opening line follows a ``<!-- run -->`` line."""
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() == MARKER:
            blocks.append((match.group(1), match.group(2)))
    return blocks


def test_the_page_marks_its_commands() -> None:
    blocks = runnable_blocks(PAGE.read_text(encoding="utf-8"))
    assert [language for language, _ in blocks] == ["bash"] * 6 + ["python"]
    commands = " ".join(code for _, code in blocks)
    for command in ("learner manifest", "learner validate", "learner run", "learner predict"):
        assert command in commands
    assert "learner.load_model(" in commands


def _tools(folder: Path) -> Path:
    """A bin folder whose ``learner`` and ``python`` are this interpreter (and this checkout)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, command in (
        ("learner", f'"{sys.executable}" -m learner.cli'),
        ("python", f'"{sys.executable}"'),
    ):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {command} "$@"\n', encoding="utf-8")
        script.chmod(0o755)
    return bin_dir


@pytest.mark.tutorial
def test_the_tutorial_runs_on_the_real_data(tmp_path: Path) -> None:
    if not (OASIS2 / "oasis_longitudinal_demographic.csv").is_file():
        pytest.skip(
            f"{OASIS2.resolve()} is absent: the tutorial needs the OASIS-2 slices in ../shared/data"
        )
    page = PAGE.read_text(encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    (work / "oasis2-slices").symlink_to(OASIS2.resolve(), target_is_directory=True)
    env = {
        **os.environ,
        "PATH": f"{_tools(tmp_path)}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "COLUMNS": "80",  # rich tables and wrapped lines as wide as the page's
    }
    output = []
    for number, (language, code) in enumerate(runnable_blocks(page), start=1):
        command = ["bash", "-e", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        printed = done.stdout + done.stderr
        assert done.returncode == 0, (
            f"block {number} ({language}) exited {done.returncode}:\n{code}\n{printed}"
        )
        output.append(printed)
    printed = "\n".join(output)
    for line in QUOTED:
        assert line in page, f"the page no longer quotes {line!r}"
        assert line in printed, f"the commands did not print {line!r}:\n{printed}"
    for name in ("manifest.csv", "heldout.csv", "predictions.csv", "runs/oasis2/report.html"):
        assert (work / name).is_file(), name
    assert (work / "runs" / "oasis2" / "change-model" / "model.json").is_file()
    header = (work / "predictions.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("patient_id,visit_from,visit_to,")
    assert ",label,head_label,agree,answer,answer_from," in header
    assert header.endswith(",caveat,model_record")
