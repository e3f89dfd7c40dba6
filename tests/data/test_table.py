"""Reading a delimited table whatever its separator, decimal mark and line endings."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.data.table import parse_decimal, parse_separator, read_text_table, sniff_separator
from learner.errors import ConfigError, DataError

ROWS = [["P1", "1", "27.5"], ["P2", "2", "30"]]


def _write(folder: Path, text: str, name: str = "t.csv") -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize(
    ("sep", "decimal"), [(",", "."), (";", ","), (";", "."), ("\t", "."), ("|", ",")]
)
def test_separator_and_decimal_are_sniffed(
    tmp_path: Path, ending: str, sep: str, decimal: str
) -> None:
    lines = ["id", "visit", "mmse"], *[[a, b, c.replace(".", decimal)] for a, b, c in ROWS]
    path = _write(tmp_path, "".join(sep.join(cells) + ending for cells in lines))
    table = read_text_table(path)
    assert (table.sep, table.decimal) == (sep, decimal)
    assert table.sep_sniffed and table.decimal_sniffed
    assert table.header == ["id", "visit", "mmse"]
    assert table.records == [(2, ROWS[0]), (3, ROWS[1])]


def test_decimal_comma_only_rewrites_numbers(tmp_path: Path) -> None:
    text = "id;note;x\rA;1,5 and more;-0,25\rB;,5;1e3\r"
    table = read_text_table(_write(tmp_path, text))
    assert [cells for _, cells in table.records] == [
        ["A", "1,5 and more", "-0.25"],
        ["B", ".5", "1e3"],
    ]


def test_a_decimal_point_anywhere_keeps_commas(tmp_path: Path) -> None:
    # 1,5 beside 2.5 cannot both be decimals: the point wins and the comma stays text.
    table = read_text_table(_write(tmp_path, "id;x\nA;1,5\nB;2.5\n"))
    assert table.decimal == "."
    assert table.records[0][1] == ["A", "1,5"]


def test_given_separator_and_decimal(tmp_path: Path) -> None:
    path = _write(tmp_path, 'id,x\nA,"1,5"\n')
    sniffed = read_text_table(path)
    assert sniffed.decimal == "." and sniffed.records[0][1] == ["A", "1,5"]
    given = read_text_table(path, sep=",", decimal=",")
    assert given.records[0][1] == ["A", "1.5"]
    assert given.describe() == "separator ',' (given), decimal ',' (given)"


def test_quoted_line_breaks_and_bom_keep_spreadsheet_rows(tmp_path: Path) -> None:
    text = '\ufeffid;note\r"A";"two\rlines"\r\rB;x\r'
    table = read_text_table(_write(tmp_path, text))
    assert table.header == ["id", "note"]
    assert table.records == [(2, ["A", "two\rlines"]), (3, []), (4, ["B", "x"])]


def test_sniffing_falls_back_to_what_most_lines_hold() -> None:
    assert sniff_separator("a;b;c") == ";"  # a header alone
    assert sniff_separator("a;b\n1,2\n3,4\n5,6\n") == ","  # rows outvote the header
    assert sniff_separator("plain\n") == ","


def test_empty_table(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"t.csv: is empty; write a header row and one row per"):
        read_text_table(_write(tmp_path, "\n\n"))


def test_separator_and_decimal_options() -> None:
    assert parse_separator("tab") == parse_separator("\\t") == "\t"
    assert parse_separator(";") == parse_separator("semicolon") == ";"
    assert parse_separator(None) is None and parse_decimal(None) is None
    assert parse_decimal(",") == ","
    with pytest.raises(ConfigError, match=r"--sep ':': not a separator"):
        parse_separator(":")
    with pytest.raises(ConfigError, match=r"--decimal ';': not a decimal mark"):
        parse_decimal(";")
