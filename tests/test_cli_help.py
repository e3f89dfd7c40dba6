"""--help is wrapped by the terminal, not by the source's line breaks: at any width every
wrapped line is full (the next word would not have fitted), flags show no ``<bool>`` type and
no help text is cut with an ellipsis."""

from __future__ import annotations

import itertools
import re

import pytest
from typer.testing import CliRunner

from learner.cli import app, unwrap_help

ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMANDS = [[], *([c.name or c.callback.__name__] for c in app.registered_commands)]  # type: ignore[union-attr]
WIDTHS = (80, 140)


def _help(args: list[str], width: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(width))
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output).splitlines()


def _indent(line: str) -> int:
    """The index of the first non-blank character inside a panel line (``│ ... │``)."""
    return len(line) - len(line[1:].lstrip())


def _ragged(lines: list[str], width: int) -> list[str]:
    """Lines broken before the terminal's edge: the next line's first word would have fitted.

    Prose lines span the width less a space each side. In a panel, a cell's next line (an
    option's help, a command's summary) starts at the help column, the panel's deepest
    indent, and the cell spans from there to the right border less a space."""
    columns, panel = [], []  # per line: the help column of its panel
    for line in lines:
        if line.startswith("╭"):
            panel = []
        if line.startswith("│") and line[1:-1].strip():
            panel.append(line)
        columns.append(panel)  # filled in as the panel is read
    found = []
    for i, (line, following) in enumerate(itertools.pairwise(lines)):
        column = max((_indent(x) for x in columns[i]), default=0)
        if line.startswith("│") and following.startswith("│"):
            if column <= 5 or _indent(following) != column:  # not a cell's next line
                continue
            text, right = line[column:-1].rstrip(), width - 2 - column
        elif not line.startswith(("│", "╭", "╰")) and not following.startswith(("│", "╭")):
            text, right = line.strip(), width - 2
        else:
            continue
        words = following.strip("│ ").split()
        if not text or not words or words[0].startswith("["):  # [required], [default: x]
            continue
        if len(text) + 1 + len(words[0]) <= right:
            found.append(f"{text!r} then {words[0]!r}")
    return found


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "learner")
def test_help_is_wrapped_by_the_terminal(
    args: list[str], width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _help(args, width, monkeypatch)
    assert max(len(line) for line in lines) <= width
    assert _ragged(lines, width) == []
    page = "\n".join(lines)
    assert "<bool>" not in page and "…" not in page


def test_the_checker_finds_a_hand_wrapped_paragraph() -> None:
    # The check above can fail: a docstring's own line break, as Typer shows it unwrapped.
    lines = [" Finished cells are reused only when their key", " still holds.", ""]
    assert _ragged(lines, 80) == ["'Finished cells are reused only when their key' then 'still'"]
    cell = ["│ --out  Folder for".ljust(31) + "│", "│        every cell.".ljust(31) + "│"]
    assert _ragged(cell, 32) == ["'Folder for' then 'every'"]
    full = ["│ --out  Folder for every".ljust(31) + "│", "│        cell.".ljust(31) + "│"]
    assert _ragged(full, 32) == []


def test_unwrap_help_joins_lines_and_keeps_paragraphs() -> None:
    text = """First line
    goes on.

    Second paragraph
    goes on too.

    \b
    kept
    as is"""
    assert unwrap_help(text) == (
        "First line goes on.\n\nSecond paragraph goes on too.\n\n\b\nkept\nas is"
    )


def test_python_dash_m_learner_is_the_same_command_line() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "learner", "demo", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "--out" in done.stdout
