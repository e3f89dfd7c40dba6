"""Manifest loading and validation: the frame contract and one clear line per problem."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from learner.data.manifest import load_manifest, parse_column_map
from learner.errors import ConfigError, DataError

HEADER = "patient_id,visit,path,score\n"


def _problems(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(DataError) as info:
        load_manifest(path, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == info.value.problems[0]
    return info.value.problems


def test_valid_manifest_frame_contract(write_manifest) -> None:
    text = (
        "patient_id,visit,path,score,zone,split\n"
        "007,2,scans/a.npy,5.5,L,train\n"
        "007,10,scans/b.npy,,L,train\n"
        "\n"  # a blank line must not shift the row numbers below it
        "007,1,scans/c.npy,3,R,train\n"
        "8,2021-03-01,scans/d.npy,1e1,L,Test\n"
        "8,2020-12-31T23:00:00,scans/e.npy,2,L,test\n"
    )
    files = ("scans/a.npy", "scans/b.npy", "scans/c.npy", "scans/d.npy", "scans/e.npy")
    path = write_manifest(text, files=files)
    manifest = load_manifest(path)
    frame = manifest.frame
    assert list(frame.columns) == [
        "patient_id",
        "visit",
        "visit_order",
        "path",
        "score",
        "zone",
        "split",
        "row",
    ]
    assert frame["patient_id"].tolist() == ["007", "007", "007", "8", "8"]
    # Integers order numerically (10 after 2), dates chronologically.
    assert frame["visit_order"].tolist() == [1, 2, 0, 1, 0]
    assert frame["visit_order"].dtype == np.int64
    assert frame["visit"].tolist() == ["2", "10", "1", "2021-03-01", "2020-12-31T23:00:00"]
    assert frame["row"].tolist() == [2, 3, 5, 6, 7]
    assert frame["path"].iloc[0] == str(path.parent / "scans" / "a.npy")
    assert Path(frame["path"].iloc[0]).is_absolute()
    np.testing.assert_array_equal(frame["score"].to_numpy(), [5.5, np.nan, 3.0, 10.0, 2.0])
    assert frame["split"].tolist() == ["train", "train", "train", "test", "test"]
    assert manifest.warnings == []
    assert manifest.feature_columns is None


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_matches_csv(write_manifest, suffix: str) -> None:
    text = HEADER + "007,1,a.npy,1\n007,2,b.npy,\n009,3,a.npy,2.25\n"
    csv = write_manifest(text, files=("a.npy", "b.npy"))
    typed = pd.DataFrame(
        {
            "patient_id": ["007", "007", "009"],
            "visit": [1, 2, 3],
            "path": ["a.npy", "b.npy", "a.npy"],
            "score": [1.0, np.nan, 2.25],
        }
    )
    parquet = csv.with_suffix(suffix)
    typed.to_parquet(parquet)
    pd.testing.assert_frame_equal(load_manifest(parquet).frame, load_manifest(csv).frame)


def test_absolute_path_and_dicom_series_folder(write_manifest, tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\0" * 8)
    outside = tmp_path / "elsewhere" / "x.nii.gz"
    outside.parent.mkdir()
    outside.write_bytes(b"\0" * 8)
    text = HEADER + f"p,1,series,1\np,2,{outside},2\n"
    frame = load_manifest(write_manifest(text)).frame
    assert frame["path"].tolist() == [str(series), str(outside)]


def test_missing_file_names_row_and_column(write_manifest) -> None:
    path = write_manifest(HEADER + "p,1,a.npy,1\np,2,gone.npy,2\n", files=("a.npy",))
    (line,) = _problems(path)
    assert line.startswith("manifest.csv row 3, column path: file not found")
    assert "gone.npy" in line


def test_missing_file_is_fine_without_file_checks(write_manifest) -> None:
    path = write_manifest(HEADER + "p,1,gone.npy,1\np,2,gone2.npy,2\n")
    assert len(load_manifest(path, check_files=False).frame) == 2
    bad = write_manifest(HEADER + "p,1,notes.txt,1\n", name="bad.csv")
    (line,) = _problems(bad, check_files=False)
    assert "row 2, column path" in line and "unknown extension" in line


def test_skip_bad_files_leaves_rows_out_and_lists_them(write_manifest) -> None:
    text = (
        HEADER
        + "p,1,a.npy,1\n"
        + "p,2,gone.npy,2\n"  # row 3: missing
        + "p,3,notes.txt,3\n"  # row 4: unknown type
        + "q,1,,4\n"  # row 5: no path
        + "q,2,clip.mp4,5\n"  # another kind than a.npy: checked by the reader, not here
    )
    path = write_manifest(text, files=("a.npy", "notes.txt", "clip.mp4"))
    problems = _problems(path)  # by default every one of them fails the load
    assert len(problems) == 3 and "mixes scan kinds" not in " ".join(problems)
    manifest = load_manifest(path, skip_bad_files=True)
    assert manifest.frame["row"].tolist() == [2, 6]
    # Visits keep their order among all of the patient's rows.
    assert manifest.frame["visit_order"].tolist() == [0, 1]
    rows = {s.row: s for s in manifest.skipped}
    assert sorted(rows) == [3, 4, 5]
    assert rows[3].path == str(path.parent / "gone.npy") and "file not found" in rows[3].reason
    assert "unknown extension" in rows[4].reason
    assert rows[5].path == "" and "is empty" in rows[5].reason
    assert rows[3].to_json() == {"row": 3, "path": rows[3].path, "reason": rows[3].reason}
    # Other problems still fail: skipping is for scan files only.
    bad = write_manifest(HEADER + "p,1,a.npy,abc\np,2,gone.npy,2\n", name="bad.csv")
    (line,) = _problems(bad, skip_bad_files=True)
    assert "row 2, column score" in line


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("nan", "is a NaN literal"),
        ("NaN", "is a NaN literal"),
        ("abc", "is not a number"),
        ("inf", "is infinite"),
        ("-Infinity", "is infinite"),
    ],
)
def test_bad_score_names_row_and_column(write_manifest, cell: str, reason: str) -> None:
    path = write_manifest(HEADER + f"p,1,a.npy,1\np,2,a.npy,{cell}\n", files=("a.npy",))
    (line,) = _problems(path)
    assert line.startswith(f"manifest.csv row 3, column score: {cell!r} {reason}")
    assert "leave the cell empty" in line


def test_duplicate_row_names_both_rows(write_manifest) -> None:
    # './a.npy' is the same file and '01' the same visit: still a duplicate.
    text = HEADER + "p,1,a.npy,1\np,2,a.npy,2\np,01,./a.npy,3\n"
    (line,) = _problems(write_manifest(text, files=("a.npy",)))
    assert line.startswith("manifest.csv row 4, column path: duplicate of row 2")


def test_same_file_in_two_zones_is_not_a_duplicate(write_manifest) -> None:
    text = "patient_id,visit,path,score,zone\np,1,a.npy,1,L\np,1,a.npy,1,R\n"
    assert len(load_manifest(write_manifest(text, files=("a.npy",))).frame) == 2


@pytest.mark.parametrize("visit", ["abc", "1.5.2", "2020-13-45", "v2", "nan"])
def test_unorderable_visit_names_row_and_column(write_manifest, visit: str) -> None:
    path = write_manifest(HEADER + f"p,1,a.npy,1\np,{visit},a.npy,2\n", files=("a.npy",))
    (line,) = _problems(path)
    assert line.startswith(f"manifest.csv row 3, column visit: {visit!r} is neither a number")


def test_mixed_visit_kinds_within_a_patient(write_manifest) -> None:
    text = HEADER + "p,1,a.npy,1\np,2020-01-02,b.npy,2\nq,1,a.npy,1\nr,2020-01-02,a.npy,1\n"
    (line,) = _problems(write_manifest(text, files=("a.npy", "b.npy")))
    assert line.startswith("manifest.csv row 3, column visit: patient 'p' mixes numeric visits")


def test_timezone_aware_visits_order_on_one_clock(write_manifest) -> None:
    # 10:00+02:00 is 08:00 UTC, before 09:00 naive (read as UTC).
    text = HEADER + "p,2020-01-01T09:00,a.npy,1\np,2020-01-01T10:00+02:00,b.npy,2\n"
    frame = load_manifest(write_manifest(text, files=("a.npy", "b.npy"))).frame
    assert frame["visit_order"].tolist() == [1, 0]


def test_decimal_visits_order_numerically(write_manifest) -> None:
    # Days since baseline, as in the Parkinson's telemonitoring table: 12.5 < 100.25.
    text = HEADER + "p,100.25,a.npy,1\np,12.5,b.npy,2\np,7,c.npy,3\n"
    frame = load_manifest(write_manifest(text, files=("a.npy", "b.npy", "c.npy"))).frame
    assert frame["visit_order"].tolist() == [2, 1, 0]


def test_columns_map_user_names_and_score_may_be_absent(write_manifest) -> None:
    text = "subject#,test_time,path\np,1.5,a.npy\np,3,b.npy\n"
    path = write_manifest(text, files=("a.npy", "b.npy"))
    columns = {"patient_id": "subject#", "visit": "test_time"}
    frame = load_manifest(path, columns=columns, require_score=False).frame
    assert frame["patient_id"].tolist() == ["p", "p"] and frame["score"].isna().all()
    with pytest.raises(DataError) as caught:
        load_manifest(path, columns={"patient_id": "subject", "visit": "test_time"})
    first, *rest = caught.value.problems
    assert first.startswith("manifest.csv row 1, column subject: is not in the header")
    assert any("column score" in line for line in rest)  # score is required by default
    # A saved mapping names the training table's score column; new data to predict on may
    # lack it (issue 28 item 7). Training data may not.
    saved = {**columns, "score": "MMSE"}
    frame = load_manifest(path, columns=saved, require_score=False).frame
    assert frame["score"].isna().all()
    with pytest.raises(DataError, match="column MMSE: is not in the header"):
        load_manifest(path, columns=saved)


def test_every_problem_is_reported_in_row_order(write_manifest) -> None:
    text = (
        HEADER
        + "p,1,a.npy,1\n"
        + "p,x,a.npy,nan\n"  # row 3: visit and score
        + "p,2,missing.npy,2\n"  # row 4: file
        + "p,1,a.npy,1\n"  # row 5: duplicate of row 2
        + ",3,a.npy,1\n"  # row 6: empty patient
    )
    lines = _problems(write_manifest(text, files=("a.npy",)))
    assert [line.split(":")[0] for line in lines] == [
        "manifest.csv row 3, column visit",
        "manifest.csv row 3, column score",
        "manifest.csv row 4, column path",
        "manifest.csv row 5, column path",
        "manifest.csv row 6, column patient_id",
    ]


def test_missing_required_columns(write_manifest) -> None:
    lines = _problems(write_manifest("patient_id,path\np,a.npy\n", files=("a.npy",)))
    assert lines == [
        "manifest.csv row 1, column visit: required column is missing; add a 'visit' column "
        "to the header",
        "manifest.csv row 1, column score: required column is missing; add a 'score' column "
        "to the header",
    ]


def test_semicolons_and_decimal_commas_are_read(write_manifest) -> None:
    path = write_manifest(
        "patient_id;visit;path;score\rp;1;a.npy;1,5\rp;2;a.npy;2\r", files=("a.npy",)
    )
    assert load_manifest(path).frame["score"].tolist() == [1.5, 2.0]


def test_missing_path_column_names_learner_manifest(write_manifest) -> None:
    lines = _problems(write_manifest("patient_id;visit;score;MRI ID\rp;1;2;p_mr1\r"))
    assert lines == [
        "manifest.csv row 1, column path: required column is missing; add a 'path' column to "
        "the header (`learner manifest --path TEMPLATE` fills it from columns such as the scan "
        "ids; or name numeric feature columns with --features for tabular data)"
    ]


def test_semicolon_header_over_comma_rows_gets_a_hint(write_manifest) -> None:
    text = "patient_id;visit;path;score\np,1,a.npy,1\np,2,a.npy,1\nq,1,a.npy,2\n"
    lines = _problems(write_manifest(text, files=("a.npy",)))
    assert lines[0].endswith(
        "the header seems to use semicolons but the rows do not: use one separator in the "
        "whole file"
    )


def test_split_values_and_patient_in_two_splits(write_manifest) -> None:
    text = (
        "patient_id,visit,path,score,split\n"
        "p,1,a.npy,1,train\n"
        "p,2,a.npy,1,test\n"
        "q,1,a.npy,1,validation\n"
        "r,1,a.npy,1,\n"
    )
    lines = _problems(write_manifest(text, files=("a.npy",)))
    assert len(lines) == 3
    assert lines[0].startswith("manifest.csv row 3, column split: patient 'p' is in 'test' here")
    assert "row 2" in lines[0]
    assert lines[1].startswith("manifest.csv row 4, column split: 'validation' is not a split")
    assert lines[2].startswith("manifest.csv row 5, column split: empty is not a split")


def test_unknown_extension_and_empty_folder(write_manifest, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    lines = _problems(write_manifest(HEADER + "p,1,notes.txt,1\np,2,empty,1\n"))
    assert "row 2, column path: 'notes.txt' has an unknown extension" in lines[0]
    assert "row 3, column path: folder" in lines[1] and "DICOM series" in lines[1]


def test_uppercase_extensions_are_known(write_manifest) -> None:
    # One kind of scan per manifest: clips and volumes each in their own.
    path = write_manifest(HEADER + "p,1,A.MP4,1\np,2,b.MP4,1\n", files=("A.MP4", "b.MP4"))
    assert len(load_manifest(path).frame) == 2
    volumes = ("a.NII.GZ", "b.NII.GZ")
    path = write_manifest(HEADER + "p,1,a.NII.GZ,1\np,2,b.NII.GZ,1\n", files=volumes)
    assert len(load_manifest(path).frame) == 2


def test_unreadable_file(write_manifest, tmp_path: Path, monkeypatch) -> None:
    path = write_manifest(HEADER + "p,1,a.npy,1\np,2,b.npy,1\n", files=("a.npy", "b.npy"))
    locked = str(tmp_path / "b.npy")
    real_access = os.access
    # chmod cannot lock out root, so deny access the way the OS would report it.
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != locked and real_access(p, mode))
    (line,) = _problems(path)
    assert line.startswith("manifest.csv row 3, column path: file ")
    assert "permission denied" in line


def test_empty_manifests(write_manifest) -> None:
    assert _problems(write_manifest("", name="empty.csv")) == [
        "empty.csv: is empty; write a header row and one row per scan"
    ]
    (line,) = _problems(write_manifest(HEADER, name="header.csv"))
    assert line.startswith("header.csv: has no data rows")
    (line,) = _problems(write_manifest(HEADER + ",,,\n\n", name="blank.csv"))
    assert line.startswith("blank.csv: has no data rows")


def test_non_utf8_csv(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes((HEADER + "José,1,a.npy,1\n").encode("latin-1"))
    (line,) = _problems(path)
    assert line.startswith("latin.csv: is not UTF-8") and "UTF-8" in line.split(";")[1]


def test_utf8_bom_is_accepted(write_manifest, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + HEADER + "José,1,a.npy,1\n").encode("utf-8"))
    write_manifest("", files=("a.npy",), name="unused.csv")
    assert load_manifest(path).frame["patient_id"].tolist() == ["José"]


def test_garbled_and_unknown_manifest_files(tmp_path: Path) -> None:
    garbled = tmp_path / "m.parquet"
    garbled.write_bytes(b"not parquet at all" * 4)
    (line,) = _problems(garbled)
    assert line.startswith("m.parquet: cannot be read as Parquet")
    (line,) = _problems(tmp_path / "m.xlsx")
    assert "unknown manifest type '.xlsx'" in line
    (line,) = _problems(tmp_path / "absent.csv")
    assert "manifest not found" in line
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(HEADER + "p,1,a.npy,1,extra,more\n")
    (line,) = _problems(ragged)
    assert line.startswith("ragged.csv row 2, column 5 (no header): the row has 6 cells")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    (line,) = _problems(binary)
    assert line.startswith("binary.csv: is not UTF-8 text")


def test_warnings_for_unknown_columns_and_single_visits(write_manifest) -> None:
    text = "patient_id,visit,path,score,site\np,1,a.npy,1,x\np,2,a.npy,1,x\nq,1,a.npy,1,y\n"
    manifest = load_manifest(write_manifest(text, files=("a.npy",)))
    assert len(manifest.warnings) == 2
    assert "1 column is not used and ignored: 'site' (known columns:" in manifest.warnings[0]
    assert "1 patient(s) have a single visit" in manifest.warnings[1]
    assert "'q'" in manifest.warnings[1]
    assert "site" not in manifest.frame.columns


def test_unused_columns_are_one_line_with_a_capped_list(write_manifest) -> None:
    # A clinic's table (OASIS-2) has a dozen columns nothing reads: one line, not twelve.
    extra = [f"c{i}" for i in range(12)]
    text = ",".join(["patient_id", "visit", "path", "score", *extra]) + "\n"
    text += "p,1,a.npy,1," + ",".join("x" * 12) + "\n"
    text += "p,2,a.npy,2," + ",".join("x" * 12) + "\n"
    manifest = load_manifest(write_manifest(text, files=("a.npy",)))
    (line,) = manifest.warnings
    assert line.startswith("manifest.csv: 12 columns are not used and ignored: 'c0', 'c1',")
    assert "'c7' and 4 more (known columns:" in line and "'c8'" not in line


def test_column_names_get_case_and_typo_suggestions(write_manifest) -> None:
    text = "Subject ID,Visit,path,MMSE\np,1,a.npy,29\np,2,a.npy,27\n"
    path = write_manifest(text, files=("a.npy",))
    columns = {"patient_id": "Subject ID", "visit": "Visit", "score": "mmse"}
    with pytest.raises(DataError) as caught:
        load_manifest(path, columns=columns)
    line = caught.value.problems[0]
    assert "column mmse: is not in the header" in line and "did you mean 'MMSE'?" in line
    # A typo in the user's name, and a standard column the header has in another case.
    columns = {"patient_id": "Subject ID", "visit": "Visti", "score": "MMSE"}
    with pytest.raises(DataError, match="did you mean 'Visit'"):
        load_manifest(path, columns=columns)
    with pytest.raises(DataError) as caught:
        load_manifest(path, columns={"patient_id": "Subject ID", "score": "MMSE"})
    assert "map it: --columns visit=Visit" in caught.value.problems[0]
    # A standard name mistyped on our side of the mapping.
    with pytest.raises(ConfigError, match="'patient' is not a manifest column; did you mean "):
        parse_column_map("patient=Subject ID")
    # Nothing close: no suggestion, the header is listed as before.
    with pytest.raises(DataError) as caught:
        load_manifest(path, columns={"patient_id": "Subject ID", "visit": "Visit", "score": "x"})
    assert "column x: is not in the header" in caught.value.problems[0]
    assert not any("did you mean" in line for line in caught.value.problems)


def test_tabular_features_replace_path(write_manifest) -> None:
    text = "patient_id,visit,score,f1,f2\np,1,1,0.5,2\np,2,,1e-3,-4\n"
    manifest = load_manifest(write_manifest(text), feature_columns=["f1", "f2"])
    frame = manifest.frame
    assert "path" not in frame.columns
    assert manifest.feature_columns == ["f1", "f2"]
    np.testing.assert_array_equal(frame[["f1", "f2"]].to_numpy(), [[0.5, 2.0], [1e-3, -4.0]])
    assert frame["f1"].dtype == np.float64


def test_tabular_features_must_exist_and_be_numbers(write_manifest) -> None:
    text = "patient_id,visit,score,f1\np,1,1,\np,2,1,abc\n"
    lines = _problems(write_manifest(text), feature_columns=["f1", "f2"])
    assert [line.split(":")[0] for line in lines] == [
        "manifest.csv row 1, column f2",
        "manifest.csv row 2, column f1",
        "manifest.csv row 3, column f1",
    ]
    assert "is empty" in lines[1] and "'abc' is not a number" in lines[2]
