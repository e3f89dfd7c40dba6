"""Read a delimited text table as text cells, whatever its separator, decimal mark and line
endings: a clinic's export as well as a manifest.

Spreadsheets save CSV as their locale wants it: ``a,b,1.5`` in English, ``a;b;1,5`` where the
comma is the decimal mark (the published OASIS-2 table, with CR line endings too). The
separator is sniffed from the first lines (:class:`csv.Sniffer`, among ``, ; TAB |``) unless
given; the decimal mark is ``,`` when the separator is not a comma, some cell is a number with
a decimal comma (``0,5``) and none is one with a decimal point (``0.5``); otherwise ``.``.
Cells that are numbers with a decimal comma are then rewritten with a point, so that
``float()`` reads them; other cells stay as written.

Example:
    >>> _ = open("visits.csv", "w", newline="").write("id;visit;mmse\\rP1;1;27,5\\rP2;1;30\\r")
    >>> table = read_text_table("visits.csv")
    >>> table.sep, table.decimal, table.header
    (';', ',', ['id', 'visit', 'mmse'])
    >>> [cells for _, cells in table.records]
    [['P1', '1', '27.5'], ['P2', '1', '30']]
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from learner.errors import ConfigError, DataError

# Separators a table may use, by the name a user may give for it (--sep).
SEPARATORS = {",": ",", "comma": ",", ";": ";", "semicolon": ";", "tab": "\t", "\\t": "\t"}
SEPARATORS |= {"\t": "\t", "|": "|", "pipe": "|"}
SEPARATOR_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
DECIMALS = (".", ",")
# Enough lines to sniff from; the whole file is read afterwards anyway.
_SNIFF_CHARS = 64 * 1024
_CANDIDATES = ",;\t|"
_COMMA_NUMBER = re.compile(r"[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?")
_POINT_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class TextTable:
    """A table read as text.

    Attributes:
        header: the first record's cells, as written.
        records: ``(row, cells)`` for every later record: ``row`` is the spreadsheet row
            (header = 1, so that blank lines and line breaks inside quoted cells count as a
            spreadsheet counts them); ``cells`` as written, except that numbers with a decimal
            comma are rewritten with a point when ``decimal`` is ``,``.
        sep: the separator used.
        decimal: the decimal mark used (``.`` or ``,``).
        sep_sniffed, decimal_sniffed: whether each was found from the file (not given).
    """

    header: list[str]
    records: list[tuple[int, list[str]]]
    sep: str
    decimal: str
    sep_sniffed: bool
    decimal_sniffed: bool

    def describe(self) -> str:
        """``"separator ';' (sniffed), decimal ',' (sniffed)"``."""
        sep = SEPARATOR_NAMES.get(self.sep, repr(self.sep))
        how = (
            "sniffed" if self.sep_sniffed else "given",
            "sniffed" if self.decimal_sniffed else "given",
        )
        return f"separator {sep} ({how[0]}), decimal {self.decimal!r} ({how[1]})"


def parse_separator(text: str | None) -> str | None:
    """``--sep``: ``,`` ``;`` ``|``, ``tab`` (or ``\\t``), or the names ``comma`` ``semicolon``
    ``pipe``; None (sniff) when not given.

    Raises:
        ConfigError: another value.
    """
    if text is None:
        return None
    sep = SEPARATORS.get(text) or SEPARATORS.get(text.strip().lower())
    if sep is None:
        raise ConfigError(
            f"--sep {text!r}: not a separator; use ',', ';', '|' or tab (or leave it out to "
            "sniff it from the file)"
        )
    return sep


def parse_decimal(text: str | None) -> str | None:
    """``--decimal``: ``.`` or ``,``; None (sniff) when not given.

    Raises:
        ConfigError: another value.
    """
    if text is None:
        return None
    if text.strip() not in DECIMALS:
        raise ConfigError(
            f"--decimal {text!r}: not a decimal mark; use '.' or ',' (or leave it out to "
            "sniff it from the file)"
        )
    return text.strip()


def read_text_table(
    path: str | os.PathLike[str],
    *,
    sep: str | None = None,
    decimal: str | None = None,
    unit: str = "record",
) -> TextTable:
    """Read a delimited UTF-8 text file (an Excel BOM is dropped) as text cells.

    Args:
        path: the file; any line ending (LF, CRLF, CR).
        sep: the separator, or None to sniff it (see the module's docstring).
        decimal: the decimal mark, or None to sniff it.
        unit: what a row stands for, in the message for an empty file ("scan").

    Returns:
        The :class:`TextTable`.

    Raises:
        DataError: the file is empty (no header).
        UnicodeDecodeError, OSError: the file is not UTF-8 or cannot be read (callers say which
            file and what to do).
    """
    source = Path(path)
    # newline="": every line ending ends a line and quoted line breaks stay in their cell.
    with open(source, encoding="utf-8-sig", newline="") as handle:
        sample = handle.read(_SNIFF_CHARS)
        handle.seek(0)
        sep_sniffed = sep is None
        used = sep if sep is not None else sniff_separator(sample)
        records = list(csv.reader(handle, delimiter=used))
    if not records or not any(cell.strip() for cell in records[0]):
        raise DataError(f"{source.name}: is empty; write a header row and one row per {unit}")
    body = [(row, cells) for row, cells in enumerate(records[1:], start=2)]
    decimal_sniffed = decimal is None
    mark = decimal if decimal is not None else sniff_decimal(body, used)
    if mark == ",":
        body = [(row, [_with_point(cell) for cell in cells]) for row, cells in body]
    return TextTable(records[0], body, used, mark, sep_sniffed, decimal_sniffed)


def sniff_separator(sample: str) -> str:
    """The separator of a table from its first lines: :class:`csv.Sniffer` among
    ``, ; TAB |``; when it cannot tell, the candidate that most lines hold equally often, else
    a comma."""
    # The sniffer splits lines on "\n" only: a CR-only file would be one line to it.
    lines = sample.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(sample) >= _SNIFF_CHARS and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    text = "\n".join(lines)
    try:
        return csv.Sniffer().sniff(text, delimiters=_CANDIDATES).delimiter
    except csv.Error:
        pass
    # The sniffer wants (nearly) every line alike: else the candidate that most lines hold
    # equally often (a header alone, a header whose separator differs from the rows').
    best, best_lines = ",", 0
    filled = [line for line in lines if line.strip()]
    for candidate in _CANDIDATES:
        counts = Counter(n for line in filled if (n := line.count(candidate)))
        agreeing = counts.most_common(1)[0][1] if counts else 0
        if agreeing > best_lines:
            best, best_lines = candidate, agreeing
    return best


def sniff_decimal(records: list[tuple[int, list[str]]], sep: str) -> str:
    """``,`` when ``sep`` is not a comma, some cell is a number with a decimal comma and none
    a number with a decimal point; else ``.``."""
    if sep == ",":
        return "."
    comma = False
    for _, cells in records:
        for cell in cells:
            text = cell.strip()
            if _POINT_NUMBER.fullmatch(text):
                return "."
            comma = comma or bool(_COMMA_NUMBER.fullmatch(text))
    return "," if comma else "."


def _with_point(cell: str) -> str:
    text = cell.strip()
    return text.replace(",", ".") if _COMMA_NUMBER.fullmatch(text) else cell
