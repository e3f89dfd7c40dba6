"""A clinician's ``change_label`` in the manifest: parsed on the later visit of a consecutive
pair, checked (unknown values, disagreeing rows of a visit, a first visit), and preferred over
the score's label where a pair has one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.cli import app
from learner.data.builder import build_manifest
from learner.data.manifest import load_manifest
from learner.data.pairs import consecutive_pairs, pair_labels, visit_table
from learner.errors import DataError

runner = CliRunner()


def _write(folder: Path, text: str) -> Path:
    for name in ("a.npy", "b.npy"):
        np.save(folder / name, np.zeros(2, dtype=np.float32))
    path = folder / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return path


ZONED = (
    "patient_id,visit,path,score,zone,change_label\n"
    "p1,1,a.npy,10,L,\n"
    "p1,1,b.npy,10,R,\n"
    "p1,2,a.npy,20,L, Worse \n"  # the score rose by 10: the clinician says worse
    "p1,2,b.npy,20,R,\n"  # blank: takes the visit's label
    "p1,3,a.npy,,L,BETTER\n"  # no score: the clinician's label still makes a pair
    "p1,3,b.npy,,R,improved\n"
    "p2,1,a.npy,5,L,\n"
    "p2,2,a.npy,15,L,\n"  # no label: the score's (+10, improve)
)


def _problems(path: Path) -> list[str]:
    with pytest.raises(DataError) as caught:
        load_manifest(path)
    return caught.value.problems


def test_labels_are_read_case_and_space_tolerant_and_fill_the_visit(tmp_path: Path) -> None:
    frame = load_manifest(_write(tmp_path, ZONED)).frame
    labels = frame["change_label"].tolist()
    assert labels[:2] == [None, None]  # a first visit has none
    assert labels[2:6] == ["worsen", "worsen", "improve", "improve"]
    assert labels[6:] == [None, None]


def test_pairs_take_the_clinician_label_where_given_and_the_score_elsewhere(
    tmp_path: Path,
) -> None:
    frame = load_manifest(_write(tmp_path, ZONED)).frame
    pairs = consecutive_pairs(visit_table(frame))
    labels, sources = pair_labels(pairs, 2.0)
    table = pairs.assign(label=labels, source=sources)
    got = {(r.patient_id, r.zone, r.visit_to): (r.label, r.source) for r in table.itertuples()}
    assert got == {
        ("p1", "L", 1): ("worsen", "clinician"),  # the score alone would say improve
        ("p1", "R", 1): ("worsen", "clinician"),
        ("p1", "L", 2): ("improve", "clinician"),  # kept although visit 3 has no score
        ("p1", "R", 2): ("improve", "clinician"),
        ("p2", "L", 1): ("improve", "score"),
    }
    assert np.isnan(table.loc[table["visit_to"] == 2, "change"]).all()


def test_a_label_does_not_jump_a_missing_visit() -> None:
    # Visit 1's scans were all left out (a skipped row): pair 0 -> 2 is not the pair the
    # clinician labelled 1 -> 2, so the score labels it.
    visits = pd.DataFrame(
        {
            "patient_id": ["a", "a"],
            "visit_order": [0, 2],
            "score": [10.0, 20.0],
            "change_label": [None, "worsen"],
        }
    )
    pairs = consecutive_pairs(visits)
    assert pair_labels(pairs, 2.0)[0].tolist() == ["improve"]
    assert pair_labels(pairs, 2.0)[1].tolist() == ["score"]


def test_without_the_column_pairs_are_as_before(tmp_path: Path) -> None:
    text = "patient_id,visit,path,score\np1,1,a.npy,10\np1,2,a.npy,\np1,3,a.npy,5\n"
    pairs = consecutive_pairs(visit_table(load_manifest(_write(tmp_path, text)).frame))
    assert len(pairs) == 0 and "change_label" not in pairs.columns


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            "p1,1,a.npy,10,\np1,2,a.npy,12,maybe\n",
            "manifest.csv row 3, column change_label: 'maybe' is not a change label; write "
            "worsen, stable, improve",
        ),
        (
            "p1,1,a.npy,10,stable\np1,2,a.npy,12,\n",
            "manifest.csv row 2, column change_label: 'stable' is on the first visit ('1') of "
            "patient 'p1', which has no previous visit",
        ),
    ],
)
def test_bad_labels_are_one_line_errors_naming_row_and_fix(
    tmp_path: Path, rows: str, expected: str
) -> None:
    path = _write(tmp_path, "patient_id,visit,path,score,change_label\n" + rows)
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    assert "\n" not in problems[0]


def test_rows_of_one_visit_must_agree(tmp_path: Path) -> None:
    text = (
        "patient_id,visit,path,score,zone,change_label\n"
        "p1,1,a.npy,10,L,\np1,2,a.npy,12,L,worsen\np1,2,b.npy,12,R,improve\n"
    )
    problems = _problems(_write(tmp_path, text))
    assert problems == [
        "manifest.csv row 4, column change_label: patient 'p1' visit '2' is labelled "
        "'improve' here but 'worsen' at row 3; give every row of a visit the same "
        "change_label (or leave the others empty)"
    ]


def test_validate_counts_clinician_pairs_and_exits_3_on_a_bad_label(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(_write(tmp_path, ZONED)), "--delta", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("pairs with a clinician label" in line and "4 of 5" in line for line in lines)
    # Pairs per class count the label each pair is trained on: 2 worsen (clinician), 3
    # improve (2 clinician, 1 score).
    assert any("pairs worsen" in line and line.rstrip(" │").endswith("2") for line in lines)
    assert any("pairs improve" in line and line.rstrip(" │").endswith("3") for line in lines)

    bad = ZONED.replace(" Worse ", "worst")
    result = runner.invoke(app, ["validate", str(_write(tmp_path, bad))])
    assert result.exit_code == 3
    assert "row 4, column change_label: 'worst' is not a change label" in result.output
    assert "Traceback" not in result.output


def test_a_clinic_column_maps_to_change_label(tmp_path: Path) -> None:
    path = _write(tmp_path, ZONED.replace(",change_label\n", ",Clinician call\n", 1))
    frame = load_manifest(path, columns={"change_label": "Clinician call"}).frame
    assert frame["change_label"].tolist()[2] == "worsen"
    result = runner.invoke(
        app, ["validate", str(path), "--delta", "2", "--columns", "change_label=Clinician call"]
    )
    assert result.exit_code == 0, result.output
    assert any("4 of 5" in line for line in result.stdout.splitlines())


def test_learner_manifest_carries_a_mapped_clinician_column(tmp_path: Path) -> None:
    for name in ("s1_a", "s1_b", "s1_c"):
        np.save(tmp_path / f"{name}.npy", np.zeros(2, dtype=np.float32))
    table = tmp_path / "clinic.csv"
    table.write_text(
        "Subject;Visit;Score;Clinical change;File\n"
        "s1;1;10,5;;s1_a.npy\ns1;2;12;Improved;s1_b.npy\ns1;3;11;stable;s1_c.npy\n",
        encoding="utf-8",
    )
    built = build_manifest(
        table,
        tmp_path / "manifest.csv",
        templates=["{File}"],
        columns={
            "patient_id": "Subject",
            "visit": "Visit",
            "score": "Score",
            "change_label": "Clinical change",
        },
    )
    written = pd.read_csv(tmp_path / "manifest.csv", keep_default_na=False)
    assert written["change_label"].tolist() == ["", "Improved", "stable"]
    frame = load_manifest(tmp_path / "manifest.csv").frame
    assert frame["change_label"].tolist() == [None, "improve", "stable"]
    assert built.manifest.frame["change_label"].tolist() == [None, "improve", "stable"]
