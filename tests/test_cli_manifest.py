"""`learner manifest`: from a clinic's table and scan files to a manifest `validate` accepts.

Small tables written here cover the separators, decimal marks, line endings, visit kinds and
missing files; the published OASIS-2 table and slices are used where ../shared/data holds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.cli import app

runner = CliRunner()

REPO = Path(__file__).resolve().parents[1]
OASIS2 = REPO / ".." / "shared" / "data" / "oasis2-slices"
OASIS2_TABLE = "oasis_longitudinal_demographic.csv"

# A clinic's export: one row per visit, its own names, MMSE with decimals.
HEADER = ["Subject ID", "Exam", "Visit", "Date", "MMSE", "nWBV"]
VISITS = [
    ["S01", "S01_A", "V1", "15/01/2001", "28.5", "0.71"],
    ["S01", "S01_B", "V2", "20/02/2002", "26", "0.70"],
    ["S01", "S01_C", "V10", "03/03/2004", "22", "0.68"],
    ["S02", "S02_A", "V1", "01/12/2000", "30", "0.75"],
    ["S02", "S02_B", "V2", "31/12/2001", "", "0.74"],
    ["S03", "S03_A", "V1", "05/05/2005", "29", "0.72"],
    ["S03", "S03_B", "V2", "06/06/2006", "27", "0.71"],
]
COLUMNS = "patient_id=Subject ID,visit=Visit,score=MMSE"


def _scans(folder: Path, views: tuple[str, ...] = ("axl",), skip: tuple[str, ...] = ()) -> None:
    for view in views:
        (folder / view).mkdir(parents=True, exist_ok=True)
        for row in VISITS:
            if row[1] not in skip:
                np.save(folder / view / f"{row[1]}_{view}.npy", np.zeros(4, dtype=np.float32))


def _table(
    folder: Path, *, sep: str = ",", decimal: str = ".", ending: str = "\n", rows=None
) -> Path:
    lines = [HEADER, *(rows if rows is not None else VISITS)]
    cells = [
        [cell.replace(".", decimal) if _number(cell) else cell for cell in row] for row in lines
    ]
    path = folder / "clinic.csv"
    path.write_bytes("".join(sep.join(row) + ending for row in cells).encode("utf-8"))
    return path


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _manifest(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["manifest", *args])
    return result.exit_code, result.stdout, result.stderr


def _validate(path: Path, *args: str) -> None:
    result = runner.invoke(app, ["validate", str(path), *args])
    assert result.exit_code == 0, result.output


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize(
    ("sep", "decimal", "ending"),
    [(",", ".", "\n"), (";", ",", "\n"), (";", ",", "\r"), ("\t", ".", "\r\n"), (";", ",", "\r\n")],
)
def test_separators_decimals_and_line_endings(
    tmp_path: Path, sep: str, decimal: str, ending: str
) -> None:
    _scans(tmp_path)
    table = _table(tmp_path, sep=sep, decimal=decimal, ending=ending)
    out = tmp_path / "manifest.csv"
    code, stdout, stderr = _manifest(
        "--table", str(table), "--out", str(out), "--columns", COLUMNS,
        "--path", "axl/{Exam}_axl.npy", "--keep", "nWBV",
    )  # fmt: skip
    assert code == 0, stderr
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["patient_id", "visit", "path", "score", "nWBV"]
    # V1, V2, V10 are ordered by their number; the scans inside the manifest's folder are
    # written relative to it; decimal commas become points.
    assert frame["visit"].tolist() == ["1", "2", "10", "1", "2", "1", "2"]
    assert frame["path"].iloc[0] == "axl/S01_A_axl.npy"
    assert frame["score"].tolist() == ["28.5", "26", "22", "30", "", "29", "27"]
    assert frame["nWBV"].iloc[0] == "0.71"
    assert "visits: column 'Visit', visit labels" not in stdout
    assert "labels V1, V2, V10 -> 1, 2, 10" in stdout
    assert "wrote" in stdout and "7 scans from 7 of 7 table rows" in stdout
    assert "pairs total" in stdout  # the manifest summary
    assert "nWBV" not in stderr  # kept on purpose: no "not used" warning
    _validate(out)


def test_dates_in_a_given_format(tmp_path: Path) -> None:
    _scans(tmp_path)
    table = _table(tmp_path, sep=";", decimal=",")
    out = tmp_path / "out" / "manifest.csv"
    args = ["--table", str(table), "--out", str(out), "--path", "axl/{Exam}_axl.npy"]
    columns = "patient_id=Subject ID,visit=Date,score=MMSE"
    code, _, stderr = _manifest(*args, "--columns", columns)
    assert code == 3
    assert _errors(stderr)[0] == (
        "error: clinic.csv row 2, column Date: '15/01/2001' is not a number, an ISO date or a "
        "visit label; give the dates' format, e.g. --date-format %d/%m/%Y (or %m/%d/%Y)"
    )
    code, stdout, stderr = _manifest(*args, "--columns", columns, "--date-format", "%d/%m/%Y")
    assert code == 0, stderr
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame["visit"].iloc[:3].tolist() == ["2001-01-15", "2002-02-20", "2004-03-03"]
    # The scans lie outside the manifest's folder: absolute paths.
    assert frame["path"].iloc[0] == str(tmp_path / "axl" / "S01_A_axl.npy")
    assert "dates in the format %d/%m/%Y -> ISO dates" in stdout
    _validate(out)


def test_missing_files_skipped_and_reported(tmp_path: Path) -> None:
    _scans(tmp_path, views=("axl", "cor"), skip=("S01_B", "S03_A"))
    (tmp_path / "cor" / "S02_A_cor.npy").unlink()
    table = _table(tmp_path, sep=";", decimal=",", ending="\r")
    out = tmp_path / "manifest.csv"
    args = ["--table", str(table), "--out", str(out), "--columns", COLUMNS]
    args += ["--path", "axl=axl/{Exam}_axl.npy", "--path", "cor=cor/{Exam}_cor.npy"]
    code, stdout, stderr = _manifest(*args)
    assert code == 3 and not out.exists()
    assert _errors(stderr) == [
        f"error: clinic.csv row 3: file not found: {tmp_path / 'axl' / 'S01_B_axl.npy'} (zone "
        "axl); 5 of 14 files are missing: fix --path or the files, or pass --missing skip to "
        "leave them out"
    ]
    code, stdout, stderr = _manifest(*args, "--missing", "skip")
    assert code == 0, stderr
    assert (
        "skipped 5 file(s) that do not exist (axl 2, cor 3); 2 of 7 table rows gave no manifest row"
    ) in stdout
    assert f"  row 3 (axl): {tmp_path / 'axl' / 'S01_B_axl.npy'}: file not found" in stdout
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(frame) == 9 and set(frame["zone"]) == {"axl", "cor"}
    assert "S01_B" not in "".join(frame["path"])
    _validate(out)


def test_bad_options_name_the_fix(tmp_path: Path) -> None:
    _scans(tmp_path)
    table = _table(tmp_path)
    base = ["--table", str(table), "--out", str(tmp_path / "m.csv")]
    cases = [
        (
            ["--columns", "patient_id=subject id,visit=Visit", "--path", "axl/{Exam}_axl.npy"],
            2,
            "error: --columns patient_id=subject id: clinic.csv has no column 'subject id' "
            "(did you mean 'Subject ID'?); its columns are: Subject ID, Exam, Visit, Date, "
            "MMSE, nWBV",
        ),
        (
            ["--columns", COLUMNS, "--path", "axl/{exam}_axl.npy"],
            2,
            "error: --path 'axl/{exam}_axl.npy': {exam} is not a column of clinic.csv (did you "
            "mean 'Exam'?); its columns are: Subject ID, Exam, Visit, Date, MMSE, nWBV",
        ),
        (
            ["--columns", COLUMNS, "--path", "axl/{Exam}.npy", "--path", "cor/{Exam}.npy"],
            2,
            "error: several --path templates: name the zone or view of each, e.g. --path "
            '"axl=axl/{MRI ID}_axl.nii.gz" --path "cor=cor/{MRI ID}_cor.nii.gz"',
        ),
        (
            ["--columns", COLUMNS],
            2,
            "error: clinic.csv has no path column: give --path with a template of the scan "
            'files, e.g. --path "scans/{Subject ID}_{Visit}.nii.gz", or map the column that '
            "holds them with --columns path=NAME",
        ),
        (
            ["--columns", "visit=Visit", "--path", "axl/{Exam}_axl.npy"],
            2,
            "error: clinic.csv has no patient_id column: map the one that holds it, e.g. "
            "--columns patient_id=NAME (its columns are: Subject ID, Exam, Visit, Date, MMSE, "
            "nWBV)",
        ),
        (
            ["--columns", COLUMNS, "--path", "axl/{Exam}_axl.npy", "--sep", ";"],
            2,
            "error: --columns patient_id=Subject ID: clinic.csv has no column 'Subject ID' (the "
            "header reads as one column: is the separator ','? give --sep ',' or leave --sep "
            "out to sniff it)",
        ),
        (
            ["--columns", COLUMNS, "--path", "axl/{Exam_axl.npy"],
            2,
            "error: --path 'axl/{Exam_axl.npy': expected a file name with {column} fields",
        ),
        (
            ["--columns", COLUMNS, "--path", "nowhere/{Exam}.npy", "--missing", "skip"],
            3,
            "error: clinic.csv: no scan file found for any row; the first expected is row 2: "
            f"{tmp_path / 'nowhere' / 'S01_A.npy'} (file not found); check --path "
            f"'nowhere/{{Exam}}.npy' against the files in {tmp_path}",
        ),
    ]
    for args, code, line in cases:
        exit_code, _, stderr = _manifest(*base, *args)
        assert exit_code == code, (args, stderr)
        assert _errors(stderr) and _errors(stderr)[0].startswith(line), (args, stderr)
        assert "Traceback" not in stderr


def test_bad_cells_name_row_and_column(tmp_path: Path) -> None:
    _scans(tmp_path)
    rows = [list(row) for row in VISITS]
    rows[1][2] = "m12"  # a label of another kind among V1, V2 ...
    rows[3][4] = "n/a"
    rows[5][0] = ""
    table = _table(tmp_path, rows=rows)
    args = ["--table", str(table), "--out", str(tmp_path / "m.csv"), "--columns", COLUMNS]
    code, _, stderr = _manifest(*args, "--path", "axl/{Exam}_axl.npy")
    assert code == 3
    assert _errors(stderr) == [
        "error: clinic.csv row 3, column Visit: 'm12' is numbered differently from the "
        "column's other labels ('v'...), so the two cannot be ordered; use one kind of label "
        "(V1, V2 ... or bl, m06, m12 ...)",
        "error: clinic.csv row 5, column MMSE: 'n/a' is not a number; write the score, or "
        "leave the cell empty for an unlabelled scan (a decimal comma? give --decimal ,)",
        "error: clinic.csv row 7, column Subject ID: is empty; write the patient's identifier",
    ]
    assert not (tmp_path / "m.csv").exists()


def test_baseline_and_month_labels_and_a_path_column(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        np.save(tmp_path / f"{name}.npy", np.zeros(3, dtype=np.float32))
    text = "RID|VISCODE|file|ADAS\nr1|m12|a.npy|10\nr1|bl|b.npy|12\nr2|sc|c.npy|9\nr2|m06|d.npy|7\n"
    (tmp_path / "adni.txt").write_text(text)
    out = tmp_path / "manifest.csv"
    columns = "patient_id=RID,visit=VISCODE,path=file,score=ADAS"
    code, stdout, stderr = _manifest(
        "--table", str(tmp_path / "adni.txt"), "--out", str(out), "--columns", columns
    )
    assert code == 0, stderr
    frame = pd.read_csv(out, dtype=str)
    assert frame["visit"].tolist() == ["12", "0", "-1", "6"]
    assert "labels sc, bl, m06 ... -> -1, 0, 6 ..." in stdout
    _validate(out, "--lower-is-better")


def test_validate_reads_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    _scans(tmp_path)
    text = (
        "patient_id;visit;path;score\r"
        "S01;1;axl/S01_A_axl.npy;27,5\r"
        "S01;2,5;axl/S01_B_axl.npy;26\r"  # a visit with a decimal comma too
    )
    (tmp_path / "manifest.csv").write_text(text, newline="")
    result = runner.invoke(app, ["validate", str(tmp_path / "manifest.csv"), "--no-decode"])
    assert result.exit_code == 0, result.output
    assert "26 / 26.75 / 27.5" in result.stdout  # score min / mean / max
    assert "pairs total" in result.stdout


def test_help_has_an_example() -> None:
    result = runner.invoke(app, ["manifest", "--help"])
    assert result.exit_code == 0
    assert "Example: learner manifest --table" in " ".join(result.stdout.split())


def test_oasis2_as_published(tmp_path: Path) -> None:
    """The published OASIS-2 table (semicolons, decimal commas, CR line endings) and its
    slices, one command; `validate` accepts the result."""
    if not (OASIS2 / OASIS2_TABLE).is_file():
        pytest.skip(f"{OASIS2} is absent: the OASIS-2 table and slices are in ../shared/data")
    out = tmp_path / "manifest.csv"
    args = ["--table", str(OASIS2 / OASIS2_TABLE), "--out", str(out)]
    args += ["--columns", "patient_id=Subject ID,visit=MR Delay,score=MMSE"]
    for view in ("axl", "cor", "sag"):
        args += ["--path", f"{view}={view}/{{MRI ID}}_{view}.nii.gz"]
    code, stdout, stderr = _manifest(*args, "--missing", "skip", "--keep", "nWBV,CDR")
    assert code == 0, stderr
    assert "separator ';' (sniffed), decimal ',' (sniffed); 373 rows" in stdout
    frame = pd.read_csv(out)
    # The slices of subjects whose number is divisible by 3 are held back upstream.
    subjects = frame["patient_id"].str.slice(5).astype(int)
    assert frame["patient_id"].nunique() > 90 and not (subjects % 3 == 0).any()
    assert set(frame["zone"]) == {"axl", "cor", "sag"}
    assert frame["nWBV"].between(0.6, 0.9).all()  # decimal commas read
    _validate(out, "--delta", "2")
