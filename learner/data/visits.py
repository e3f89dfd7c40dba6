"""Visits as a clinic writes them, turned into what a manifest orders: numbers or ISO dates.

:func:`read_visits` holds the rule ``learner manifest`` documents: numbers and ISO dates as
written, dates in a given :meth:`datetime.strptime` format as ISO dates, and visit labels
(``V1``, ``Visit 2``, ``m06``; ``baseline`` / ``bl`` = 0, ``screening`` / ``sc`` = -1) as
their numbers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

# Visit labels that mean "the first visit" (0) and "before it" (-1), whatever the prefix of the
# numbered labels beside them (ADNI writes sc, bl, m06, m12, ...).
BASELINE_LABELS = {"baseline": 0, "base": 0, "bl": 0, "screening": -1, "scr": -1, "sc": -1}
# A numbered label: letters (words joined by space, _ or -), an optional separator, a number.
_LABEL = re.compile(r"([^\W\d_]+(?:[ _-][^\W\d_]+)*)[ _.-]?(\d+)")


def read_visits(
    cells: Sequence[tuple[int, str]], date_format: str | None = None
) -> tuple[dict[int, str], str, list[tuple[int, str]]]:
    """Each row's visit as the manifest writes it (a number or an ISO date), how the column
    was read, and the cells that break the rule.

    The rule: with ``date_format`` every cell is a date in that format (written YYYY-MM-DD).
    Otherwise the column is read as the kind most of its cells are:

    - numbers (``1``, ``2``; days since baseline ``0``, ``457``; ``12.5``): written as they are;
    - ISO dates (``2001-01-15``, with a time or not): written as they are;
    - labels: a word and a number (``V1``, ``Visit 2``, ``m06``, ``MR3``: the number, so ``V10``
      comes after ``V9`` and ``m06`` before ``m12``), or ``baseline`` / ``base`` / ``bl``
      (0) and ``screening`` / ``scr`` / ``sc`` (-1). Every numbered label of the column uses
      the same word (compared without case, spaces, ``_`` and ``-``): ``V1`` beside ``m12``
      cannot be ordered and is an error.

    Args:
        cells: ``(table row, cell)`` of the visit column.
        date_format: a :meth:`datetime.strptime` format, or None.

    Returns:
        ``(visits, how, problems)``: row -> the visit to write (rows with a bad cell are
        absent); a phrase for the user; ``(row, what is wrong and the fix)`` per bad cell.

    Example:
        >>> read_visits([(2, "bl"), (3, "m06"), (4, "M12")])
        ({2: '0', 3: '6', 4: '12'}, 'labels bl, m06, M12 -> 0, 6, 12', [])
    """
    out: dict[int, str] = {}
    problems: list[tuple[int, str]] = []

    def bad(row: int, text: str) -> None:
        problems.append((row, text))

    empty = "is empty; write the visit (a number, a date or a label such as V1)"
    if date_format is not None:
        for row, text in cells:
            if not text:
                bad(row, empty)
                continue
            try:
                moment = datetime.strptime(text, date_format)
            except ValueError:
                bad(
                    row,
                    f"{text!r} does not match --date-format {date_format!r}; fix the cell or "
                    "the format (e.g. %d/%m/%Y for 15/01/2001)",
                )
                continue
            out[row] = (
                moment.date().isoformat()
                if moment.time() == datetime.min.time()
                else moment.isoformat()
            )
        return out, f"dates in the format {date_format} -> ISO dates", problems
    parsed: dict[int, tuple[str, str, str]] = {}  # row -> (kind, prefix, written)
    for row, text in cells:
        if not text:
            bad(row, empty)
            continue
        visit = _visit_kind(text)
        if visit is None:
            bad(row, _unknown_visit_text(text))
            continue
        parsed[row] = visit
    kinds = Counter(kind for kind, _, _ in parsed.values())
    if not kinds:
        return out, "no visits", problems
    major = kinds.most_common(1)[0][0]
    prefixes = Counter(prefix for kind, prefix, _ in parsed.values() if kind == "label" and prefix)
    prefix = prefixes.most_common(1)[0][0] if prefixes else ""
    texts = dict(cells)
    example = next(texts[row] for row, (kind, _, _) in parsed.items() if kind == major)
    for row, (kind, label_prefix, written) in parsed.items():
        if kind != major:
            bad(
                row,
                f"{texts[row]!r} is {_KIND_ARTICLES[kind]} {_KIND_NAMES[kind]} but the "
                f"column's visits are {_KIND_NAMES[major]}s (e.g. {example!r}); write every "
                "visit the same way",
            )
        elif kind == "label" and label_prefix and label_prefix != prefix:
            bad(
                row,
                f"{texts[row]!r} is numbered differently from the column's other labels "
                f"({prefix!r}...), so the two cannot be ordered; use one kind of label "
                "(V1, V2 ... or bl, m06, m12 ...)",
            )
        else:
            out[row] = written
    if major != "label":
        return out, f"{_KIND_NAMES[major]}s as written", problems
    labels = sorted({texts[row]: int(out[row]) for row in out}.items(), key=lambda kv: kv[1])
    more = " ..." if len(labels) > 3 else ""
    shown = ", ".join(label for label, _ in labels[:3])
    numbers = ", ".join(str(number) for _, number in labels[:3])
    return out, f"labels {shown}{more} -> {numbers}{more}", problems


_KIND_NAMES = {"number": "number", "date": "ISO date", "label": "visit label"}
_KIND_ARTICLES = {"number": "a", "date": "an", "label": "a"}


def _visit_kind(text: str) -> tuple[str, str, str] | None:
    """``(kind, label prefix, text to write)`` for a visit cell, or None."""
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return ("number", "", text) if math.isfinite(number) else None
    try:
        datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return "date", "", text
    lowered = text.lower()
    if lowered in BASELINE_LABELS:
        return "label", "", str(BASELINE_LABELS[lowered])
    match = _LABEL.fullmatch(text)
    if match:
        prefix = re.sub(r"[ _-]", "", match.group(1)).lower()
        return "label", prefix, str(int(match.group(2)))
    return None


def _unknown_visit_text(text: str) -> str:
    looks_like_date = bool(re.fullmatch(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}", text))
    fix = (
        "give the dates' format, e.g. --date-format %d/%m/%Y (or %m/%d/%Y)"
        if looks_like_date
        else "write numbers, ISO dates (YYYY-MM-DD) or labels (V1, V2; baseline, m06, m12)"
    )
    return f"{text!r} is not a number, an ISO date or a visit label; {fix}"
