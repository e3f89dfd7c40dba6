"""Property test of the manifest validator (issue #7): whatever a manifest holds, the
`validate` path (load, summarise, decode) returns a result or raises the documented
``DataError`` whose problems are one line each; nothing else escapes.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from learner.data.manifest import Manifest, check_scans, load_manifest
from learner.data.summary import summarize_manifest, summary_warnings
from learner.errors import DataError

COLUMNS = ("patient_id", "visit", "path", "score", "zone", "split", "site")
REQUIRED = ("patient_id", "visit", "path", "score")

garbage = st.text(max_size=6)
# Cells a well-formed manifest holds ...
SPLIT_OF = {"p1": "train", "p2": "val", "p3": "test", "p4": "train", "007": "test"}
VISITS = {
    "integers": st.integers(0, 30).map(str),
    "dates": st.dates().map(str) | st.datetimes().map(lambda d: d.isoformat()),
}
VALID = {
    "patient_id": st.sampled_from(sorted(SPLIT_OF)),
    "path": st.sampled_from(["a.npy", "b.npy", "sub/c.npy"]),
    "score": st.one_of(st.floats(-1e6, 1e6).map(repr), st.just("")),
    "zone": st.sampled_from(["L1", "R1"]),
    "site": garbage,
}
# ... and the ones users write by mistake.
INVALID = {
    "patient_id": st.one_of(st.just(""), garbage),
    "visit": st.one_of(
        st.sampled_from(["01", "baseline", "1.5", "", "2021-13-40", "2021-01-05"]), garbage
    ),
    "path": st.one_of(
        st.sampled_from(
            [
                "missing.npy",
                "folder",
                "empty",
                "loop.npy",
                "notes.txt",
                "flat.npy",
                "../outside.npy",
                "",
            ]
        ),
        garbage,
    ),
    "score": st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["nan", "NaN", "inf", "-inf", "abc", "1e400", "0x10", " 3 ", "1,5"]),
        garbage,
    ),
    "zone": st.sampled_from(["", "L1 "]),
    "split": st.sampled_from(["TRAIN", "", "dev", "val"]),
    "site": garbage,
}


@st.composite
def manifests(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, file bytes) of a manifest: CSV (mostly) or Parquet tables of valid cells
    with a few mistakes, header and encoding accidents; sometimes raw bytes."""
    kind = draw(st.sampled_from(["csv", "csv", "csv", "parquet", "bytes"]))
    if kind == "bytes":
        return ".csv", draw(st.binary(max_size=200))
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=7, unique=True))
    if draw(st.integers(0, 9)) > 0:
        # Usually keep the required columns so that rows get checked, not just the header.
        columns = list(dict.fromkeys([*REQUIRED, *columns]))
    # Valid visits are all integers or all dates: mixing them within a patient is a mistake.
    visits = VISITS[draw(st.sampled_from(sorted(VISITS)))]
    rows: list[dict[str, str]] = []
    for _ in range(draw(st.integers(0, 8))):
        row = {c: draw(VALID[c]) for c in COLUMNS if c not in ("visit", "split")}
        row["visit"] = draw(visits)
        row["split"] = SPLIT_OF[row["patient_id"]]  # a patient stays in one split
        rows.append(row)
    # A few mistakes (often none: hypothesis favours small counts) in drawn cells.
    for _ in range(draw(st.integers(0, 4)) if rows and columns else 0):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        column = draw(st.sampled_from(columns))
        row[column] = draw(INVALID[column])
    table = [[row[c] for c in columns] for row in rows]
    if kind == "parquet":
        buffer = io.BytesIO()
        pd.DataFrame(table, columns=columns, dtype=object).to_parquet(buffer)
        return ".parquet", buffer.getvalue()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(table)
    lines = text.getvalue().splitlines(keepends=True)
    accident = draw(
        st.sampled_from(["none", "none", "blank", "extra_cell", "semicolons", "bom", "latin1"])
    )
    if accident == "blank" and lines:
        lines.insert(draw(st.integers(1, len(lines))), "\n")
    elif accident == "extra_cell":
        lines.append(",".join(["x"] * (len(columns) + 2)) + "\n")
    elif accident == "semicolons" and lines:
        lines[0] = lines[0].replace(",", ";")
    data = "".join(lines).encode("utf-8")
    if accident == "bom":
        data = b"\xef\xbb\xbf" + data
    elif accident == "latin1":
        data += "p1,1,a.npy,3,Zon\u00e9\n".encode("latin-1")
    return ".csv", data


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the generated paths point at: good vectors, a bad shape, a folder, a loop."""
    root = tmp_path_factory.mktemp("property")
    (root / "sub").mkdir()
    for name in ("a.npy", "b.npy", "sub/c.npy"):
        np.save(root / name, np.arange(3, dtype=np.float32))
    np.save(root / "flat.npy", np.zeros((2, 3), dtype=np.float32))
    (root / "folder").mkdir()
    (root / "folder" / "notes.txt").write_text("no DICOM here")
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a scan")
    os.symlink("loop.npy", root / "loop.npy")
    return root


def check_manifest(manifest: Manifest) -> None:
    """What every successfully loaded manifest guarantees."""
    frame = manifest.frame
    assert {"patient_id", "visit", "visit_order", "path", "score", "row"} <= set(frame.columns)
    assert len(frame) > 0
    assert frame["visit_order"].dtype == np.int64 and (frame["visit_order"] >= 0).all()
    for _, orders in frame.groupby("patient_id")["visit_order"]:
        assert sorted(orders.unique()) == list(range(orders.nunique()))
    assert frame["row"].is_unique and (frame["row"] >= 2).all()
    scores = frame["score"].to_numpy(dtype=np.float64)
    assert all(math.isnan(s) or math.isfinite(s) for s in scores)
    assert all(Path(p).is_absolute() for p in frame["path"])
    assert (frame["patient_id"] != "").all()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(manifest=manifests())
def test_validator_returns_a_report_or_raises_data_error(
    manifest: tuple[str, bytes], scan_folder: Path
) -> None:
    suffix, data = manifest
    path = scan_folder / f"manifest{suffix}"
    path.write_bytes(data)
    try:
        loaded = load_manifest(path)
        check_manifest(loaded)
        summary = summarize_manifest(loaded, delta="tertiles", higher_is_better=True)
        assert summary.scans == len(loaded.frame)
        assert all("\n" not in line for line in summary_warnings(summary) + loaded.warnings)
        assert check_scans(loaded) == loaded.frame["path"].nunique()
        event("accepted")
    except DataError as exc:
        event("refused")
        assert exc.problems, "a DataError must say what is wrong"
        for line in exc.problems:
            assert line.strip() and "\n" not in line, exc.problems
            assert line.startswith(path.name) or line.startswith(str(scan_folder)), line


def test_a_path_with_a_newline_is_reported_on_one_line(tmp_path: Path) -> None:
    """Found by the property test above: a Parquet path cell holding a line break made the
    'file not found' problem two lines; it is now escaped."""
    manifest = tmp_path / "manifest.parquet"
    row = {"patient_id": "P0", "visit": "0", "score": "1.0", "path": "scan\n0.mp4"}
    pd.DataFrame([row], dtype=object).to_parquet(manifest)
    with pytest.raises(DataError) as info:
        load_manifest(manifest)
    [line] = [p for p in info.value.problems if "column path" in p]
    assert "\n" not in line and "scan\\n0.mp4; fix the path" in line
