"""Load and validate a manifest: one row per scan (``patient_id``, ``visit``, ``path``,
``score``, optional ``zone``, ``split`` and ``change_label``).

The loader reads every cell as text, checks the whole file and reports every problem at once,
one line each, naming the manifest, the spreadsheet row (header = row 1), the column and the fix.
Scan files are checked for existence, readability and extension only; decoding them is the
readers' job (:mod:`learner.data.readers`), which :func:`check_scans` runs over every file.

Why one long module: it is one concern, the manifest contract, and most of its length is that
contract's rules (columns, visits, dates, scores, zones, splits, paths, duplicates), each check
beside the one-line error that names its fix; splitting it would separate a rule from its
message.

Example:
    >>> pd.DataFrame({
    ...     "patient_id": ["P1", "P1", "P2", "P2"],
    ...     "visit": ["2024-01-10", "2024-03-02", "2024-05-30", "2024-02-11"],
    ...     "path": ["p1_jan.mp4", "p1_mar.mp4", "p2_may.mp4", "p2_feb.mp4"],
    ...     "score": [12, 15, 14, 19]}).to_csv("manifest.csv", index=False)
    >>> manifest = load_manifest("manifest.csv", check_files=False)  # no scan files here
    >>> manifest.frame[["patient_id", "visit", "visit_order", "score"]]
      patient_id       visit  visit_order  score
    0         P1  2024-01-10            0   12.0
    1         P1  2024-03-02            1   15.0
    2         P2  2024-05-30            1   14.0
    3         P2  2024-02-11            0   19.0
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from learner.data.pairs import CHANGE_LABEL, LABELS
from learner.data.splits import PRETRAIN
from learner.data.table import read_text_table
from learner.errors import ConfigError, DataError, closest

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
SCAN_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mov",
    ".mpeg",
    ".mpg",
    ".gif",
    ".png",
    ".jpg",
    ".jpeg",
    ".dcm",
    ".nii",
    ".nii.gz",
    ".npy",
)
SPLITS = ("train", "val", "test", "pretrain")
OPTIONAL_COLUMNS = ("zone", "split", CHANGE_LABEL)
# What a clinician may write in change_label (case and surrounding spaces ignored): the three
# labels and the few everyday words for them; anything else is an error, never a guess.
CHANGE_WORDS = {
    "worsen": "worsen",
    "worse": "worsen",
    "worsened": "worsen",
    "stable": "stable",
    "unchanged": "stable",
    "improve": "improve",
    "improved": "improve",
    "better": "improve",
}
STANDARD_COLUMNS = ("patient_id", "visit", "path", "score", *OPTIONAL_COLUMNS)

_INTEGER = re.compile(r"[+-]?\d+")
# Days since baseline and the like: 0, 12.5, .5, 1e2.
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Excel and friends write a header cell they leave blank as "Unnamed: N" once pandas reads it.
_UNNAMED = re.compile(r"Unnamed: (\d+)")
_SHOWN_IDS = 5
_SHOWN_COLUMNS = 8


# The warning about patients without a pair; `predict` words its own (no pretraining there).
SINGLE_VISIT = "have a single visit and give no change pairs"


@dataclass
class Manifest:
    """A validated manifest.

    Attributes:
        frame: one row per scan, in file order, with columns ``patient_id`` (str), ``visit``
            (str, as written), ``visit_order`` (int, 0-based rank of the visit within its
            patient), ``path`` (absolute str; absent for tabular data), ``score`` (float, NaN =
            unlabelled), ``zone`` (str, only if present), ``split`` (str, only if present),
            ``change_label`` (only if present: the clinician's label of the change from the
            patient's previous visit to this one, one of ``worsen`` / ``stable`` /
            ``improve`` on every row of a labelled visit, None elsewhere), the feature
            columns (float, tabular only) and ``row`` (1-based spreadsheet row).
        source: the manifest file.
        warnings: one line each; problems that do not stop loading.
        feature_columns: the numeric columns used instead of ``path``, or ``None``.
    """

    frame: pd.DataFrame
    source: Path
    warnings: list[str] = field(default_factory=list)
    feature_columns: list[str] | None = None
    skipped: list[SkippedRow] = field(default_factory=list)


@dataclass(frozen=True)
class SkippedRow:
    """A manifest row left out because its scan cannot be used (``--on-error skip``).

    Attributes:
        row: the spreadsheet row (header = row 1).
        path: the scan path as resolved (as written when it could not be resolved).
        reason: one line: what is wrong and the fix.
    """

    row: int
    path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class _VisitKey:
    """A parsed visit: integers and datetimes order separately, so the kind travels along."""

    kind: str  # "number" or "date"
    value: int | float | datetime


class _Problems:
    """Collects one-line problems that name the manifest file, row and column.

    Lines come out in row order (file-level problems first), the order a user fixes them in.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: list[tuple[int, int, str]] = []

    def file(self, text: str) -> None:
        self._entries.append((0, len(self._entries), f"{self.name}: {text}"))

    def cell(self, row: int | np.integer, column: str, text: str) -> None:
        line = f"{self.name} row {row}, column {column}: {text}"
        self._entries.append((int(row), len(self._entries), line))

    @property
    def lines(self) -> list[str]:
        return [_escaped(line) for _, _, line in sorted(self._entries)]


def _escaped(text: str) -> str:
    """``text`` with its unprintable characters escaped (a path holding a newline, say), so
    that every problem stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def load_manifest(
    path: str | os.PathLike[str],
    *,
    feature_columns: Sequence[str] | None = None,
    check_files: bool = True,
    columns: Mapping[str, str] | None = None,
    require_score: bool = True,
    measurement_columns: Sequence[str] = (),
    skip_bad_files: bool = False,
    kept_columns: Sequence[str] = (),
) -> Manifest:
    """Read and validate a manifest (CSV, or Parquet with ``.parquet`` / ``.pq``).

    Args:
        path: the manifest file. Relative scan paths inside it start at its folder.
        feature_columns: numeric columns to use instead of ``path`` (tabular data); when given
            they are required, ``path`` is not.
        check_files: check that every scan file exists, is readable and has a known extension.
        columns: the manifest's names for the standard columns, e.g.
            ``{"patient_id": "subject#", "score": "total_UPDRS", "visit": "test_time"}``.
        require_score: False for data to predict on: a missing ``score`` column then means
            every scan is unlabelled.
        measurement_columns: numeric per-scan measurements kept in the frame (an empty cell
            is NaN), e.g. a finer reference of change (``eval.target: {column: nWBV}``).
        skip_bad_files: rows whose scan path is empty, missing, unreadable or of an unknown
            type are left out of ``frame`` and listed in ``Manifest.skipped`` instead of
            failing the load, and scans of several kinds may share the manifest (whoever
            reads the scans checks each one's kind). Every other problem still fails.
        kept_columns: extra columns meant to be there (``learner manifest --keep``): not
            reported as unused.

    Returns:
        The :class:`Manifest`; ``frame`` has one row per scan (n_rows, n_columns).

    Raises:
        DataError: one problem per line in ``.problems`` (unreadable file, missing column,
            duplicate row, missing scan file, bad score / visit / split, empty manifest).
    """
    source = Path(path)
    name = source.name
    features = _clean_feature_columns(feature_columns)
    problems = _Problems(name)
    raw = _read_table(source, problems)
    warnings: list[str] = []
    raw = _drop_unnamed_columns(raw, warnings, name)
    mapping = dict(columns or {})
    if not require_score and mapping.get("score") not in (None, *raw.columns):
        # Data to predict on need no score: a saved mapping's score column may be absent.
        del mapping["score"]
    raw = _rename_columns(raw, mapping, problems)
    if not require_score and "score" not in raw.columns:
        raw = raw.assign(score="")
    measured = [c for c in measurement_columns if c not in ("patient_id", "visit", "score")]
    required = ["patient_id", "visit", "score"] + (features if features else ["path"])
    required += [c for c in measured if c not in required]
    missing = [column for column in required if column not in raw.columns]
    for column in missing:
        problems.cell(1, column, _missing_column_text(column, raw.columns, features is not None))

    known = set(required) | set(OPTIONAL_COLUMNS) | set(kept_columns)
    if "path" in raw.columns and features:
        warnings.append(
            f"{name}: column path is ignored because feature columns are used; "
            "delete it or drop --features to read scans"
        )
    unused = [str(c) for c in raw.columns if c not in known and c != "path"]
    if unused:
        warnings.append(_unused_columns_text(name, unused, required))

    # Rows whose cells are all empty (blank lines) carry nothing; dropping them keeps the
    # spreadsheet row numbers of the others intact.
    raw = raw[(raw != "").any(axis=1)]
    if raw.empty:
        if not problems.lines:
            problems.file("has no data rows; add one row per scan below the header")
        raise DataError(problems.lines[0], problems=problems.lines)

    rows = raw.index.to_numpy().astype(np.int64)
    frame = pd.DataFrame({"row": rows})
    present = set(raw.columns)

    if "patient_id" in present:
        frame["patient_id"] = raw["patient_id"].to_numpy(dtype=object)
        for row, value in zip(rows, frame["patient_id"], strict=True):
            if value == "":
                problems.cell(row, "patient_id", "is empty; write the patient's identifier")
    if "visit" in present:
        frame["visit"] = raw["visit"].to_numpy(dtype=object)
    if "visit" in present and "patient_id" in present:
        frame["visit_order"] = _visit_order(frame, problems)
    if "score" in present:
        frame["score"] = _numbers(raw["score"], rows, "score", problems, allow_empty=True)
    skipped: dict[int, SkippedRow] | None = {} if skip_bad_files else None
    if features is None and "path" in present:
        frame["path"] = _scan_paths(
            raw["path"], rows, source, problems, check_files=check_files, skipped=skipped
        )
    for column in features or []:
        if column in present:
            frame[column] = _numbers(raw[column], rows, column, problems, allow_empty=False)
    for column in measured:
        if column in present and column not in frame.columns:
            frame[column] = _numbers(raw[column], rows, column, problems, allow_empty=True)
    if "zone" in present:
        frame["zone"] = raw["zone"].to_numpy(dtype=object)
        for row, value in zip(rows, frame["zone"], strict=True):
            if value == "":
                problems.cell(
                    row,
                    "zone",
                    "is empty; write the zone or view of this scan, or delete "
                    "the zone column to pair whole visits",
                )
    if "split" in present:
        frame["split"] = _splits(raw["split"], rows, frame, problems)
    if CHANGE_LABEL in present and "visit_order" in frame.columns:
        labels = _change_labels(raw[CHANGE_LABEL], rows, frame, problems)
        # object, not pandas' text dtype: a visit without a label holds None, not NaN.
        frame[CHANGE_LABEL] = pd.Series(labels, index=frame.index, dtype=object)

    if not missing:
        _check_duplicates(frame, features, problems)
    if "path" in frame.columns and check_files and not problems.lines and not skip_bad_files:
        _check_one_kind(frame, problems)
    if problems.lines:
        raise DataError(problems.lines[0], problems=problems.lines)
    if skipped:
        frame = frame[~frame["row"].isin(list(skipped))]

    single = _single_visit_patients(frame)
    if single:
        shown = ", ".join(repr(p) for p in single[:_SHOWN_IDS])
        more = f" and {len(single) - _SHOWN_IDS} more" if len(single) > _SHOWN_IDS else ""
        warnings.append(
            f"{name}: {len(single)} patient(s) {SINGLE_VISIT} "
            f"(they still count for pretraining): {shown}{more}"
        )

    order = ["patient_id", "visit", "visit_order"]
    order += [] if features else ["path"]
    order += ["score"]
    order += [c for c in OPTIONAL_COLUMNS if c in frame.columns]
    order += features or []
    order += [c for c in measured if c not in order]
    order += ["row"]
    frame = frame[order].reset_index(drop=True)
    frame["visit_order"] = frame["visit_order"].astype(np.int64)
    return Manifest(
        frame=frame,
        source=source,
        warnings=warnings,
        feature_columns=features,
        skipped=list((skipped or {}).values()),
    )


def check_scans(manifest: Manifest, kinds: Counter[tuple[str, str]] | None = None) -> int:
    """Decode every distinct scan file of a manifest once, as training would.

    The loader checks that files exist; this finds those that do not decode (truncated or
    corrupt clips, a DICOM without pixels, an array of the wrong shape, a header claiming a
    huge size), so that ``learner validate`` reports them before a training run does.

    Args:
        manifest: from :func:`load_manifest`; tabular manifests have nothing to decode.
        kinds: when given, counts every decoded file by ``(kind, shape)``, e.g.
            ``("image", "256x207")`` (what ``learner validate`` reports).

    Returns:
        The number of distinct scan files decoded.

    Raises:
        DataError: one line per manifest row whose scan cannot be read, naming the row, the
            file and the fix.
    """
    from learner.data.readers import read_scan  # heavy (PyAV, pydicom): only when decoding

    frame = manifest.frame
    if "path" not in frame.columns:
        return 0
    problems = _Problems(manifest.source.name)
    verdicts: dict[str, str | None] = {}
    for row, path in zip(frame["row"], frame["path"], strict=True):
        if path not in verdicts:
            try:
                scan = read_scan(path)
                verdicts[path] = None
                if kinds is not None:
                    kinds[(scan.kind, "x".join(str(n) for n in scan.array.shape))] += 1
            except DataError as exc:
                verdicts[path] = exc.problems[0]
        if verdicts[path] is not None:
            problems.cell(row, "path", str(verdicts[path]))
    if problems.lines:
        raise DataError(problems.lines[0], problems=problems.lines)
    return len(verdicts)


def parse_column_map(text: str | None) -> dict[str, str]:
    """``"patient_id=subject#,score=total_UPDRS"`` -> ``{"patient_id": "subject#", ...}``.

    Raises:
        ConfigError: an item without ``=``, or a standard name that is not a manifest column.
    """
    mapping: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        ours, sep, theirs = (part.strip() for part in item.partition("="))
        if not sep or not ours or not theirs:
            raise ConfigError(
                f"--columns {item.strip()!r}: expected STANDARD=YOURS, e.g. "
                "--columns patient_id=subject#,visit=test_time,score=total_UPDRS"
            )
        mapping[ours] = theirs
    check_column_map(mapping)
    return mapping


def check_column_map(mapping: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` for a key that is not a standard manifest column."""
    for ours in mapping:
        if ours not in STANDARD_COLUMNS:
            close = closest(ours, STANDARD_COLUMNS)
            hint = f"did you mean {close!r}? " if close else ""
            raise ConfigError(
                f"--columns: {ours!r} is not a manifest column; {hint}map one of "
                f"{', '.join(STANDARD_COLUMNS)} (feature columns are named as they are)"
            )


def _rename_columns(
    raw: pd.DataFrame, columns: Mapping[str, str], problems: _Problems
) -> pd.DataFrame:
    """Rename the user's columns to the standard names (``columns``: standard -> theirs)."""
    renames: dict[str, str] = {}
    for ours, theirs in columns.items():
        if theirs not in raw.columns:
            close = closest(theirs, map(str, raw.columns))
            hint = f"did you mean {close!r}? " if close else ""
            problems.cell(
                1,
                theirs,
                f"is not in the header (mapped to {ours} by --columns / data.columns); "
                f"{hint}the columns are: {', '.join(map(str, raw.columns))}",
            )
        elif ours != theirs:
            renames[theirs] = ours
    clash = [ours for ours in renames.values() if ours in raw.columns]
    for ours in clash:
        problems.cell(
            1,
            ours,
            f"exists and is also mapped from another column by --columns; map only one "
            f"column to {ours}",
        )
    return raw.rename(columns=renames)


def _clean_feature_columns(feature_columns: Sequence[str] | None) -> list[str] | None:
    if feature_columns is None:
        return None
    if isinstance(feature_columns, str):
        feature_columns = [feature_columns]
    columns = [str(c).strip() for c in feature_columns if str(c).strip()]
    if not columns:
        raise DataError(
            "no feature columns given; name at least one numeric column, e.g. --features a,b"
        )
    return list(dict.fromkeys(columns))


def _read_table(source: Path, problems: _Problems) -> pd.DataFrame:
    """Read the manifest with every cell as stripped text ('' = empty) and stripped names.

    The index holds each row's spreadsheet row number (header = row 1). Blank header cells
    become ``Unnamed: <0-based column>``; CSV rows with more non-empty cells than the header
    are reported to ``problems`` and left out.
    """
    name = source.name
    suffix = source.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise DataError(
            f"{source}: unknown manifest type {source.suffix or '(no extension)'!r}; "
            "save it as .csv or .parquet"
        )
    if not source.exists():
        raise DataError(f"{source}: manifest not found; check the path")
    if source.is_dir():
        raise DataError(f"{source}: is a folder; pass the manifest file inside it")
    try:
        if suffix == ".csv":
            table = _read_csv(source, problems)
        else:
            table = pd.read_parquet(source)
            table.index = pd.RangeIndex(2, len(table) + 2)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8"
        ) from None
    except PermissionError:
        raise DataError(f"{name}: cannot be read (permission denied); make it readable") from None
    except Exception as exc:  # csv, pyarrow and the OS raise many types for a garbled file
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise DataError(
            f"{name}: cannot be read as {kind} ({type(exc).__name__}: {_one_line(exc)}); "
            f"check that it is a valid {kind} file"
        ) from None
    names = [str(c).strip() or f"Unnamed: {i}" for i, c in enumerate(table.columns)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        lines = [
            f"{name} row 1, column {column}: appears more than once in the header; "
            "rename or delete the extra ones"
            for column in repeated
        ]
        raise DataError(lines[0], problems=lines)
    return pd.DataFrame(
        {column: _as_text(table.iloc[:, i]) for i, column in enumerate(names)},
        index=table.index,
    )


def _read_csv(source: Path, problems: _Problems) -> pd.DataFrame:
    """CSV as text cells; the csv module counts records, so rows match a spreadsheet's even
    with blank lines or line breaks inside quoted cells. The separator (``,`` ``;`` tab ``|``)
    and the decimal mark are sniffed (:mod:`learner.data.table`): a spreadsheet saved as
    ``;``-separated with decimal commas reads as it is."""
    table = read_text_table(source, unit="scan")
    header = table.header
    width = len(header)
    separators = "commas" if table.sep == "," else f"separators ({table.sep!r})"
    kept: list[list[str]] = []
    rows: list[int] = []
    for row, record in table.records:
        if len(record) > width and any(cell.strip() for cell in record[width:]):
            problems.cell(
                row,
                f"{width + 1} (no header)",
                f"the row has {len(record)} cells but the header has {width}; check the "
                f"{separators} and quotes of this row",
            )
            continue
        kept.append((record + [""] * width)[:width])
        rows.append(row)
    return pd.DataFrame(kept, columns=header, index=rows, dtype=object)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else "no detail"


def _as_text(column: pd.Series) -> list[str]:
    """Cells as stripped text; Parquet numbers and dates get the text a CSV would hold."""
    return [_cell_text(value) for value in column.tolist()]


def _cell_text(value: Any) -> str:
    if value is None or value is pd.NaT or value is pd.NA:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return ""
        # Integer columns with gaps come back from Parquet as floats (1.0): keep them integers.
        if number.is_integer() and abs(number) < 2**53:
            return str(int(number))
        return repr(number)
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return str(value).strip()


def _drop_unnamed_columns(raw: pd.DataFrame, warnings: list[str], name: str) -> pd.DataFrame:
    keep = []
    for column in raw.columns:
        match = _UNNAMED.fullmatch(column)
        if match is None:
            keep.append(column)
        elif (raw[column] != "").any():
            warnings.append(
                f"{name}: column {int(match.group(1)) + 1} has values but no header and is "
                "ignored; give it a name or delete it"
            )
    return raw[keep]


def _unused_columns_text(name: str, unused: Sequence[str], required: Sequence[str]) -> str:
    """One line for every column the manifest has but nothing reads (a clinic's table has
    many): how many, the first :data:`_SHOWN_COLUMNS` names, and the known ones."""
    shown = ", ".join(repr(c) for c in unused[:_SHOWN_COLUMNS])
    more = f" and {len(unused) - _SHOWN_COLUMNS} more" if len(unused) > _SHOWN_COLUMNS else ""
    counted = "1 column is" if len(unused) == 1 else f"{len(unused)} columns are"
    return (
        f"{name}: {counted} not used and ignored: {shown}{more} (known columns: "
        f"{', '.join([*required, *OPTIONAL_COLUMNS])}; map yours with --columns)"
    )


def _missing_column_text(column: str, present: pd.Index, tabular: bool) -> str:
    text = f"required column is missing; add a {column!r} column to the header"
    close = closest(column, map(str, present))
    if close is not None and column in STANDARD_COLUMNS:
        text += f"; or, if {close!r} is it, map it: --columns {column}={close}"
    elif close is not None:
        text += f"; did you mean {close!r}?"
    if column == "path" and not tabular:
        text += (
            " (`learner manifest --path TEMPLATE` fills it from columns such as the scan ids; "
            "or name numeric feature columns with --features for tabular data)"
        )
    header = ",".join(present)
    for separator, label in ((";", "semicolons"), ("\t", "tabs")):
        if len(present) == 1 and separator in header:
            # Separators are sniffed: here the header and the rows disagree.
            text += (
                f"; the header seems to use {label} but the rows do not: use one separator "
                "in the whole file"
            )
    return text


def _parse_number(text: str) -> float | str:
    """A finite float, or the reason the text is not one."""
    try:
        number = float(text)
    except ValueError:
        return "is not a number"
    if math.isnan(number):
        return "is a NaN literal"
    if math.isinf(number):
        return "is infinite"
    return number


def _numbers(
    column: pd.Series,
    rows: np.ndarray,
    name: str,
    problems: _Problems,
    *,
    allow_empty: bool,
) -> np.ndarray:
    """Parse a numeric column (n_rows,) float64; empty cells are NaN where allowed."""
    values = np.full(len(column), np.nan, dtype=np.float64)
    for i, (row, text) in enumerate(zip(rows, column.tolist(), strict=True)):
        if text == "":
            if not allow_empty:
                problems.cell(row, name, "is empty; every feature column needs a number")
            continue
        parsed = _parse_number(text)
        if isinstance(parsed, float):
            values[i] = parsed
            continue
        fix = "write a finite number"
        fix += " or leave the cell empty for an unlabelled scan" if allow_empty else ""
        problems.cell(row, name, f"{text!r} {parsed}; {fix}")
    return values


def _parse_visit(text: str) -> _VisitKey | None:
    if _INTEGER.fullmatch(text):
        return _VisitKey("number", int(text))
    if _DECIMAL.fullmatch(text):
        value = float(text)
        return _VisitKey("number", value) if math.isfinite(value) else None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        # Compare zone-aware times on one clock so they also order against naive ones.
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return _VisitKey("date", moment)


def visit_time(text: Any) -> float:
    """A visit's position in time: a number as written (visit number, or days since
    baseline), an ISO date as days since 1970-01-01; NaN for anything else."""
    key = _parse_visit(str(text).strip())
    if key is None:
        return math.nan
    if isinstance(key.value, datetime):
        return (key.value - datetime(1970, 1, 1)).total_seconds() / 86400.0
    return float(key.value)


def _visit_order(frame: pd.DataFrame, problems: _Problems) -> np.ndarray:
    """0-based rank of each row's visit among its patient's distinct visits, (n_rows,) int64.

    Each patient's visits must be all integers or all ISO dates; rows that break this are
    reported and get rank -1 (the frame is not returned then).
    """
    order = np.full(len(frame), -1, dtype=np.int64)
    first_of_kind: dict[tuple[str, str], int] = {}
    keys: dict[str, list[tuple[int, _VisitKey]]] = {}
    for i, (row, patient, text) in enumerate(
        zip(frame["row"], frame["patient_id"], frame["visit"], strict=True)
    ):
        if text == "":
            problems.cell(
                row, "visit", "is empty; write the visit number (1, 2, ...) or date (YYYY-MM-DD)"
            )
            continue
        key = _parse_visit(text)
        if key is None:
            problems.cell(
                row,
                "visit",
                f"{text!r} is neither a number nor an ISO date; write visit numbers "
                "(1, 2, ... or days since baseline such as 12.5) or dates (YYYY-MM-DD) so "
                "that visits can be ordered",
            )
            continue
        first_of_kind.setdefault((patient, key.kind), row)
        keys.setdefault(patient, []).append((i, key))
    for patient, entries in keys.items():
        kinds = {key.kind for _, key in entries}
        if len(kinds) > 1:
            int_row = first_of_kind[(patient, "number")]
            date_row = first_of_kind[(patient, "date")]
            problems.cell(
                max(int_row, date_row),
                "visit",
                f"patient {patient!r} mixes numeric visits (row {int_row}) and dates "
                f"(row {date_row}), which cannot be ordered; use one kind per patient",
            )
            continue
        distinct = sorted({key.value for _, key in entries})
        rank = {value: r for r, value in enumerate(distinct)}
        for i, key in entries:
            order[i] = rank[key.value]
    return order


def _scan_paths(
    column: pd.Series,
    rows: np.ndarray,
    source: Path,
    problems: _Problems,
    *,
    check_files: bool,
    skipped: dict[int, SkippedRow] | None = None,
) -> np.ndarray:
    """Absolute scan paths (n_rows,) as str; each checked once for extension and access.

    With ``skipped`` (a dict), a row whose scan cannot be used goes there instead of into
    ``problems``."""
    base = Path(os.path.abspath(source)).parent
    paths = np.empty(len(column), dtype=object)
    verdicts: dict[str, str | None] = {}
    for i, (row, text) in enumerate(zip(rows, column.tolist(), strict=True)):
        if text == "":
            paths[i] = ""
            empty = "is empty; write the scan file's path"
            if skipped is not None:
                skipped[int(row)] = SkippedRow(int(row), "", f"the path {empty}")
            else:
                problems.cell(row, "path", empty)
            continue
        candidate = Path(text).expanduser()
        resolved = os.path.abspath(candidate if candidate.is_absolute() else base / candidate)
        paths[i] = resolved
        if resolved not in verdicts:
            verdicts[resolved] = _check_scan(resolved, text, check_files=check_files)
        verdict = verdicts[resolved]
        if verdict is not None:
            if skipped is not None:
                skipped[int(row)] = SkippedRow(int(row), resolved, _escaped(verdict))
            else:
                problems.cell(row, "path", verdict)
    return paths


def _has_scan_extension(name: str) -> bool:
    return name.lower().endswith(SCAN_EXTENSIONS)


def _check_scan(resolved: str, text: str, *, check_files: bool) -> str | None:
    """Why the scan at ``resolved`` cannot be used, or None when it can."""
    known = _has_scan_extension(resolved)
    allowed = " ".join(SCAN_EXTENSIONS)
    if not check_files:
        if known or Path(resolved).suffix == "":  # no suffix: may be a DICOM series folder
            return None
        return f"{text!r} has an unknown extension; use one of {allowed} or a DICOM series folder"
    if not os.path.lexists(resolved):
        return (
            f"file not found: {resolved}; fix the path (relative paths start at the "
            "manifest's folder) or delete the row"
        )
    if os.path.isdir(resolved):
        try:
            entries = [entry for entry in os.scandir(resolved) if entry.is_file()]
        except OSError:
            return f"folder {resolved} cannot be read; make it readable"
        if not entries:
            return (
                f"folder {resolved} holds no files; a folder is allowed only as a DICOM "
                "series folder: point to the series files or to a scan file"
            )
        if not os.access(resolved, os.R_OK | os.X_OK):
            return f"folder {resolved} cannot be read; make it readable"
        return None
    if not os.path.isfile(resolved):
        return f"{resolved} is not a regular file (a broken link?); point to the scan file"
    if not known:
        return f"{text!r} has an unknown extension; use one of {allowed} or a DICOM series folder"
    if not os.access(resolved, os.R_OK):
        return f"file {resolved} cannot be read (permission denied); make it readable"
    return None


# Scan kinds that cannot share a manifest (one encoder and one input spec read them all).
# DICOM and (T,H,W)/(D,H,W) arrays can hold clips or volumes, so they mix with either.
_KIND_CLIP, _KIND_NIFTI, _KIND_VECTOR = "video clip", "NIfTI image", "feature vector (1-D .npy)"


def _scan_kind(path: str) -> str | None:
    """The kind of a scan file from its name (and a .npy file's header), or None when the
    file may hold any kind."""
    lower = path.lower()
    if lower.endswith((".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif")):
        return _KIND_CLIP
    if lower.endswith((".nii", ".nii.gz")):
        return _KIND_NIFTI
    if lower.endswith(".npy"):
        try:  # a memory map reads only the header
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError):
            return None  # an unreadable array is reported when it is decoded
        return _KIND_VECTOR if len(shape) == 1 else None
    return None


def _check_one_kind(frame: pd.DataFrame, problems: _Problems) -> None:
    """One kind of scan per manifest: name the rows of the less common kinds."""
    kinds = pd.Series([_scan_kind(str(p)) for p in frame["path"]], index=frame.index)
    counts = kinds.value_counts()
    if len(counts) < 2:
        return
    major = str(counts.index[0])
    summary = ", ".join(f"{kind}: {n} rows" for kind, n in counts.items())
    for kind in counts.index[1:]:
        rows = frame.loc[kinds == kind, "row"].tolist()
        shown = ", ".join(str(r) for r in rows[:_SHOWN_IDS])
        more = f" and {len(rows) - _SHOWN_IDS} more" if len(rows) > _SHOWN_IDS else ""
        which = f"row {shown}" if len(rows) == 1 else f"rows {shown}{more}"
        problems.file(
            f"mixes scan kinds ({summary}); {which}: {kind} among {major}s; one manifest "
            "holds one kind of scan, so move those rows to a manifest of their own"
        )


def _splits(
    column: pd.Series, rows: np.ndarray, frame: pd.DataFrame, problems: _Problems
) -> np.ndarray:
    """Lower-cased split names (n_rows,); each patient must stay in one split."""
    values = np.array([text.lower() for text in column.tolist()], dtype=object)
    seen: dict[str, tuple[str, int]] = {}
    patients = frame["patient_id"].tolist() if "patient_id" in frame else [None] * len(values)
    marks_only = all(v in ("", "pretrain", "test") for v in values)
    for row, value, patient in zip(rows, values, patients, strict=True):
        if value == "" and marks_only:
            continue  # beside a pool or a fixed test set, other patients are drawn from the seed
        if value not in SPLITS:
            shown = repr(value) if value else "empty"
            problems.cell(
                row,
                "split",
                f"{shown} is not a split; write train, val or test in every row (pretrain "
                "for a pretraining pool and test for a fixed test set, the other rows then "
                "may stay empty), or delete the split column to assign splits by patient "
                "from the seed",
            )
            continue
        if patient is None or patient == "":
            continue
        first = seen.setdefault(patient, (value, row))
        if first[0] != value:
            problems.cell(
                row,
                "split",
                f"patient {patient!r} is in {value!r} here but in {first[0]!r} at row "
                f"{first[1]}; put all of a patient's scans in one split",
            )
    return values


def _change_labels(
    column: pd.Series, rows: np.ndarray, frame: pd.DataFrame, problems: _Problems
) -> np.ndarray:
    """The clinician's change label of each row's visit (n_rows,), object: one of
    :data:`~learner.data.pairs.LABELS`, or None for a visit without one.

    A visit's non-empty cells must agree (a zone's blank row takes the visit's label), and a
    patient's first visit has no previous visit to change from."""
    labels = np.full(len(column), None, dtype=object)
    first_seen: dict[tuple[str, int], tuple[str, int]] = {}
    patients: list[str] = [str(p) for p in frame["patient_id"].tolist()]
    orders: list[int] = [int(o) for o in frame["visit_order"].tolist()]
    visits: list[str] = [str(v) for v in frame["visit"].tolist()]
    accepted = ", ".join(sorted(CHANGE_WORDS))
    for i, (row, text) in enumerate(zip(rows, column.tolist(), strict=True)):
        if text == "":
            continue
        label = CHANGE_WORDS.get(text.strip().lower())
        if label is None:
            problems.cell(
                row,
                CHANGE_LABEL,
                f"{text!r} is not a change label; write {', '.join(LABELS)} (also accepted: "
                f"{accepted}; any case), or leave the cell empty where the clinician gave none",
            )
            continue
        patient, order, visit = patients[i], orders[i], visits[i]
        if order < 0:
            continue  # the visit itself is reported
        if order == 0:
            problems.cell(
                row,
                CHANGE_LABEL,
                f"{text!r} is on the first visit ({visit!r}) of patient {patient!r}, which "
                "has no previous visit to change from; change_label judges the change from the "
                "previous visit to this one: leave it empty on a first visit",
            )
            continue
        first = first_seen.setdefault((patient, order), (label, int(row)))
        if first[0] != label:
            problems.cell(
                row,
                CHANGE_LABEL,
                f"patient {patient!r} visit {visit!r} is labelled {label!r} here but "
                f"{first[0]!r} at row {first[1]}; give every row of a visit the same "
                "change_label (or leave the others empty)",
            )
            continue
        labels[i] = label
    # A visit's blank rows (other zones) adopt its label.
    for i, key in enumerate(zip(patients, orders, strict=True)):
        if key in first_seen:
            labels[i] = first_seen[key][0]
    return labels


def _check_duplicates(frame: pd.DataFrame, features: list[str] | None, problems: _Problems) -> None:
    """Report rows repeating an earlier row's (patient_id, visit, path[, zone]).

    For tabular data the key is the patient, visit, zone and every feature value. Visits are
    compared parsed where they parse, so '1' and '01' are the same visit.
    """
    key_columns = ["patient_id", "visit"] + (features if features else ["path"])
    key_columns += ["zone"] if "zone" in frame.columns else []
    visits = [
        str(parsed.value) if (parsed := _parse_visit(text)) is not None else text
        for text in frame["visit"].tolist()
    ]
    keyed = frame[key_columns].assign(visit=visits)
    duplicated = keyed.duplicated(keep=False)
    first_row: dict[tuple[Any, ...], int] = {}
    label = ", ".join(key_columns)
    for row, key, is_dup in zip(
        frame["row"], keyed.itertuples(index=False, name=None), duplicated, strict=True
    ):
        if not is_dup:
            continue
        if key not in first_row:
            first_row[key] = row
            continue
        problems.cell(
            row,
            "path" if not features else "patient_id",
            f"duplicate of row {first_row[key]} (same {label}); delete one of the two rows",
        )


def _single_visit_patients(frame: pd.DataFrame) -> list[str]:
    """Patients with one visit, except a pretraining pool's (``split = pretrain``): those
    are single-visit by design and need no warning."""
    if "split" in frame.columns:
        frame = frame[frame["split"].astype(str) != PRETRAIN]
    visits = frame.groupby("patient_id", sort=True)["visit_order"].nunique()
    return [str(p) for p in visits.index[visits.to_numpy() == 1]]
