"""The visit rule (:mod:`learner.data.visits`) and path templates (:mod:`learner.data.builder`);
the command's tests are in tests/test_cli_manifest.py."""

from __future__ import annotations

import pytest

from learner.data.builder import PathTemplate
from learner.data.visits import read_visits
from learner.errors import ConfigError


def _visits(cells: list[str], date_format: str | None = None) -> tuple[list[str], str]:
    out, how, problems = read_visits(list(enumerate(cells, start=2)), date_format)
    assert not problems
    return [out[row] for row in sorted(out)], how


def _visit_problems(cells: list[str], date_format: str | None = None) -> list[str]:
    _, _, problems = read_visits(list(enumerate(cells, start=2)), date_format)
    return [f"t.csv row {row}, column visit: {text}" for row, text in problems]


def test_numbers_and_iso_dates_are_written_as_they_are() -> None:
    assert _visits(["0", "457", "12.5"]) == (["0", "457", "12.5"], "numbers as written")
    dates = ["2001-01-15", "2002-02-20T10:30:00"]
    assert _visits(dates) == (dates, "ISO dates as written")


def test_dates_in_a_format_become_iso() -> None:
    out, how = _visits(["15/01/2001", "01/12/2000"], "%d/%m/%Y")
    assert (out, how) == (["2001-01-15", "2000-12-01"], "dates in the format %d/%m/%Y -> ISO dates")
    problems = _visit_problems(["15/01/2001", "2000-12-01"], "%d/%m/%Y")
    assert problems == [
        "t.csv row 3, column visit: '2000-12-01' does not match --date-format '%d/%m/%Y'; fix "
        "the cell or the format (e.g. %d/%m/%Y for 15/01/2001)"
    ]
    with_time = _visits(["01/12/2000 14:05"], "%d/%m/%Y %H:%M")[0]
    assert with_time == ["2000-12-01T14:05:00"]


@pytest.mark.parametrize(
    ("cells", "numbers"),
    [
        (["V1", "V2", "V10", "v3"], ["1", "2", "10", "3"]),
        (["Visit 1", "visit_2", "VISIT-3"], ["1", "2", "3"]),
        (["baseline", "Month 6", "month 12"], ["0", "6", "12"]),
        (["sc", "bl", "m06", "m120"], ["-1", "0", "6", "120"]),
        (["MR1", "MR2"], ["1", "2"]),
    ],
)
def test_labels_give_their_number(cells: list[str], numbers: list[str]) -> None:
    assert _visits(cells)[0] == numbers


def test_mixed_visit_kinds_name_the_odd_cell() -> None:
    assert _visit_problems(["1", "2", "2001-01-01"]) == [
        "t.csv row 4, column visit: '2001-01-01' is an ISO date but the column's visits are "
        "numbers (e.g. '1'); write every visit the same way"
    ]
    assert _visit_problems(["V1", "V2", "first", ""]) == [
        "t.csv row 4, column visit: 'first' is not a number, an ISO date or a visit label; "
        "write numbers, ISO dates (YYYY-MM-DD) or labels (V1, V2; baseline, m06, m12)",
        "t.csv row 5, column visit: is empty; write the visit (a number, a date or a label "
        "such as V1)",
    ]


def test_path_templates() -> None:
    template = PathTemplate.parse("cor=cor/{Subject ID}_{ MRI ID }.nii.gz")
    assert template.zone == "cor" and template.fields == ("Subject ID", "MRI ID")
    assert template.fill({"Subject ID": "S1", "MRI ID": "S1_MR2"}) == "cor/S1_S1_MR2.nii.gz"
    assert PathTemplate.parse("/data/{id}.npy") == PathTemplate("/data/{id}.npy", None)
    for bad in ("", "x={}.npy", "{id.npy", "id}.npy"):
        with pytest.raises(ConfigError, match=r"expected a file name with \{column\} fields"):
            PathTemplate.parse(bad)
