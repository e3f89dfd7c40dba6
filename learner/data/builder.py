"""Build a manifest from a clinic's table and the scan files (``learner manifest``).

A clinic exports one row per visit (or per scan) with its own column names, its own separator
and decimal mark, visits written as it writes them, and scan files named from its ids. This
module turns such a table into a manifest that :func:`learner.data.manifest.load_manifest`
accepts, without a pandas script:

- the table is read by :func:`learner.data.table.read_text_table` (separator and decimal mark
  sniffed or given; LF, CRLF or CR line endings);
- ``columns`` maps the standard names to the table's (``{"patient_id": "Subject ID"}``), as
  ``--columns`` does everywhere;
- each path template (``"axl/{MRI ID}_axl.nii.gz"``) is filled from the row's cells: ``{NAME}``
  is the cell of column NAME as written. A relative result starts at the table's folder. A
  template may name its zone (``"axl=axl/{MRI ID}_axl.nii.gz"``): several templates give one
  manifest row per zone and file. Instead of templates, a ``path`` column may be mapped;
- visits are read by :func:`learner.data.visits.read_visits` (numbers, ISO dates, dates in
  a given format, or labels such as ``V1`` / ``baseline`` / ``m12``);
- files that do not exist stop the build (``missing="stop"``) or are left out and reported
  (``missing="skip"``).

Example:
    >>> import numpy as np
    >>> for name in ("P1_V1", "P1_V2", "P2_V1"):
    ...     np.save(f"{name}.npy", np.zeros(3))
    >>> _ = open("clinic.csv", "w").write(
    ...     "Subject;Visit;MMSE\\nP1;V1;28,5\\nP1;V2;27\\nP2;V1;30\\nP2;V2;29\\n")
    >>> built = build_manifest(
    ...     "clinic.csv", "manifest.csv", templates=["{Subject}_{Visit}.npy"],
    ...     columns={"patient_id": "Subject", "visit": "Visit", "score": "MMSE"},
    ...     missing="skip")
    >>> print(open("manifest.csv").read())
    patient_id,visit,path,score
    P1,1,P1_V1.npy,28.5
    P1,2,P1_V2.npy,27
    P2,1,P2_V1.npy,30
    <BLANKLINE>
    >>> [(s.row, Path(s.path).name, s.reason) for s in built.skipped]
    [(5, 'P2_V2.npy', 'file not found')]
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from learner.data.manifest import Manifest, check_column_map, load_manifest
from learner.data.pairs import CHANGE_LABEL
from learner.data.table import TextTable, read_text_table
from learner.data.visits import read_visits
from learner.errors import ConfigError, DataError
from learner.io import atomic_write_text

MISSING_CHOICES = ("stop", "skip")
_FIELD = re.compile(r"\{([^{}]*)\}")
# A zone before "=": a plain name (no braces, no path separators).
_ZONE = re.compile(r"([\w.-]+)=(.+)")
_SHOWN = 5


@dataclass(frozen=True)
class PathTemplate:
    """A scan path with ``{column}`` fields, and the zone its files belong to.

    Example:
        >>> t = PathTemplate.parse("axl=axl/{MRI ID}_axl.nii.gz")
        >>> t.zone, t.fields, t.fill({"MRI ID": "OAS2_0001_MR1"})
        ('axl', ('MRI ID',), 'axl/OAS2_0001_MR1_axl.nii.gz')
    """

    template: str
    zone: str | None = None

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """``"TEMPLATE"`` or ``"ZONE=TEMPLATE"`` (ZONE: letters, digits, ``_ . -``).

        Raises:
            ConfigError: an empty template, an empty ``{}`` field or an unmatched brace.
        """
        text = text.strip()
        zone = None
        match = _ZONE.fullmatch(text)
        if match:
            zone, text = match.group(1), match.group(2).strip()
        rest = _FIELD.sub("", text)
        if not text or "{" in rest or "}" in rest or "{}" in text:
            raise ConfigError(
                f"--path {text!r}: expected a file name with {{column}} fields, e.g. "
                '--path "axl/{Subject ID}_{MRI ID}_axl.nii.gz" (or ZONE=TEMPLATE); every "{" '
                'needs its "}" around a column name'
            )
        return cls(text, zone)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name.strip() for name in _FIELD.findall(self.template)))

    def fill(self, cells: Mapping[str, str]) -> str:
        return _FIELD.sub(lambda m: cells[m.group(1).strip()], self.template)

    def shown(self) -> str:
        return f"{self.zone}={self.template}" if self.zone else self.template


@dataclass(frozen=True)
class Skipped:
    """A file left out: the table row, its zone, the path as filled and why."""

    row: int
    zone: str | None
    path: str
    reason: str

    def line(self) -> str:
        zone = f" ({self.zone})" if self.zone else ""
        return f"row {self.row}{zone}: {self.path}: {self.reason}"


@dataclass
class BuiltManifest:
    """What :func:`build_manifest` wrote.

    Attributes:
        path: the manifest written.
        manifest: that manifest, loaded and validated.
        table: how the table was read (``"separator ';' (sniffed), decimal ','..."``).
        table_rows: the table's non-blank rows.
        rows_used: table rows that gave at least one manifest row.
        visits: how the visit column was read (``"column 'Visit', labels V1, V2 -> 1, 2"``).
        skipped: the files left out (``missing="skip"``), in table order.
        notes: one-line remarks (no score column, say).
    """

    path: Path
    manifest: Manifest
    table: str
    table_rows: int
    rows_used: int
    visits: str
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skipped_lines(self, shown: int = _SHOWN) -> list[str]:
        """The report of the files left out: a count per zone, then the first ``shown``."""
        if not self.skipped:
            return []
        per_zone = Counter(s.zone for s in self.skipped)
        zones = (
            " (" + ", ".join(f"{zone} {n}" for zone, n in sorted(per_zone.items())) + ")"
            if any(zone is not None for zone in per_zone)
            else ""
        )
        dropped = self.table_rows - self.rows_used
        lines = [
            f"skipped {len(self.skipped)} file(s) that do not exist{zones}; {dropped} of "
            f"{self.table_rows} table rows gave no manifest row"
        ]
        lines += [f"  {s.line()}" for s in self.skipped[:shown]]
        if len(self.skipped) > shown:
            lines.append(f"  ... and {len(self.skipped) - shown} more")
        return lines


def build_manifest(
    table: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    templates: Sequence[str | PathTemplate] = (),
    columns: Mapping[str, str] | None = None,
    sep: str | None = None,
    decimal: str | None = None,
    date_format: str | None = None,
    missing: str = "stop",
    keep: Sequence[str] = (),
) -> BuiltManifest:
    """Write a manifest (CSV) built from a table and the scan files, then load it.

    Args:
        table: the clinic's table (delimited text: CSV, ``;``-separated, TSV ...).
        out: the manifest to write (``.csv``); written atomically. Scan paths in it are
            relative to its folder when the scans lie inside that folder, else absolute.
        templates: path templates, ``"axl/{MRI ID}_axl.nii.gz"`` or ``"ZONE=TEMPLATE"``;
            none: the table's ``path`` column (or the column ``columns`` maps to ``path``).
        columns: standard name -> the table's column (``patient_id``, ``visit``, ``score``,
            ``path``, ``zone``, ``split``, ``change_label``); a standard name the table
            already uses needs none.
        sep: the table's separator (None: sniffed).
        decimal: the table's decimal mark, ``.`` or ``,`` (None: sniffed).
        date_format: the visits' date format for :meth:`datetime.strptime`, e.g.
            ``"%d/%m/%Y"``; they are written as ISO dates.
        missing: ``"stop"``: a file that does not exist is an error; ``"skip"``: it is left out
            and reported in :attr:`BuiltManifest.skipped`.
        keep: more table columns copied into the manifest (a finer measurement such as
            ``nWBV`` for ``eval.target``, say).

    Returns:
        The :class:`BuiltManifest`.

    Raises:
        ConfigError: bad options (an unknown column, unnamed zones, a bad ``--out``).
        DataError: the table cannot be read, a cell is bad (one line per problem naming the
            table, row and column), a file is missing under ``missing="stop"``, or no file
            exists at all.
    """
    source, target = Path(table), Path(out)
    if missing not in MISSING_CHOICES:
        raise ConfigError(f"--missing {missing!r}: use stop or skip")
    if target.suffix.lower() != ".csv":
        raise ConfigError(f"--out {target}: the manifest is written as CSV; name it *.csv")
    if source.exists() and target.exists() and source.resolve() == target.resolve():
        raise ConfigError(f"--out {target} is the table itself; write the manifest elsewhere")
    text = _read(source, sep, decimal)
    header = [cell.strip() for cell in text.header]
    used = _Columns.resolve(source.name, header, dict(columns or {}), templates, keep)
    records = [(row, cells) for row, cells in text.records if any(c.strip() for c in cells)]
    if not records:
        raise DataError(f"{source.name}: has a header but no rows; add one row per visit")
    problems = _Problems(source.name)
    rows = _cells_by_name(records, header, text.sep, problems)

    base = Path(os.path.abspath(source)).parent
    found: list[tuple[int, dict[str, str], PathTemplate, str]] = []
    skipped: list[Skipped] = []
    for row, cells in rows:
        for template in used.templates:
            empty = [name for name in template.fields if not cells[name]]
            filled = template.fill(cells)
            if empty:
                skipped.append(Skipped(row, template.zone, filled, f"column {empty[0]} is empty"))
                continue
            candidate = Path(filled).expanduser()
            resolved = os.path.abspath(candidate if candidate.is_absolute() else base / candidate)
            if os.path.exists(resolved):
                found.append((row, cells, template, resolved))
            else:
                skipped.append(Skipped(row, template.zone, resolved, "file not found"))
    _check_missing(source.name, skipped, found, missing, used.templates, base)

    with_files = {row for row, *_ in found}
    kept = [(row, cells) for row, cells in rows if row in with_files]
    visits, how, bad = read_visits([(row, cells[used.visit]) for row, cells in kept], date_format)
    for row, why in bad:
        problems.cell(row, used.visit, why)
    entries = _manifest_rows(found, used, visits, target, problems)
    problems.raise_any()

    atomic_write_text(target, _csv_text(entries))
    loaded = load_manifest(target, kept_columns=keep)
    notes = []
    if used.score is None:
        notes.append(
            f"{source.name} has no score column: every scan is unlabelled (fine for `learner "
            "predict`; map one with --columns score=NAME to train)"
        )
    return BuiltManifest(
        path=target,
        manifest=loaded,
        table=f"{source.name}: {text.describe()}",
        table_rows=len(rows),
        rows_used=len(kept),
        visits=f"column {used.visit!r}, {how}",
        skipped=skipped,
        notes=notes,
    )


class _Problems:
    """One-line problems naming the table, row and column, reported in row order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: list[tuple[int, int, str]] = []

    def cell(self, row: int, column: str, text: str) -> None:
        line = f"{self.name} row {row}, column {column}: {text}"
        self._entries.append((row, len(self._entries), line))

    def raise_any(self) -> None:
        lines = [line for _, _, line in sorted(self._entries)]
        if lines:
            raise DataError(lines[0], problems=lines)


@dataclass(frozen=True)
class _Columns:
    """The table's columns for each standard name, and the path templates."""

    patient_id: str
    visit: str
    score: str | None
    zone: str | None
    split: str | None
    templates: tuple[PathTemplate, ...]
    keep: tuple[str, ...]
    change_label: str | None = None

    @classmethod
    def resolve(
        cls,
        name: str,
        header: list[str],
        columns: dict[str, str],
        templates: Sequence[str | PathTemplate],
        keep: Sequence[str],
    ) -> _Columns:
        check_column_map(columns)
        repeated = sorted({c for c in header if c and header.count(c) > 1})
        if repeated:
            raise DataError(
                f"{name} row 1, column {repeated[0]}: appears more than once in the header; "
                "rename or delete the extra ones"
            )
        for ours, theirs in columns.items():
            if theirs not in header:
                raise ConfigError(
                    f"--columns {ours}={theirs}: {name} has no column {theirs!r}"
                    f"{_suggest(theirs, header)}; its columns are: {', '.join(header)}"
                )

        def column(ours: str) -> str | None:
            return columns.get(ours) or (ours if ours in header else None)

        parsed = tuple(
            t if isinstance(t, PathTemplate) else PathTemplate.parse(t) for t in templates
        )
        path, zone = column("path"), column("zone")
        if parsed and "path" in columns:
            raise ConfigError(
                "give either --path templates or a path column (--columns path=...), not both"
            )
        if not parsed:
            if path is None:
                raise ConfigError(
                    f"{name} has no path column: give --path with a template of the scan "
                    'files, e.g. --path "scans/{Subject ID}_{Visit}.nii.gz", or map the '
                    "column that holds them with --columns path=NAME"
                )
            parsed = (PathTemplate("{" + path + "}"),)
        named = [t.zone for t in parsed if t.zone]
        if len(parsed) > 1 and len(named) < len(parsed):
            raise ConfigError(
                "several --path templates: name the zone or view of each, e.g. "
                '--path "axl=axl/{MRI ID}_axl.nii.gz" --path "cor=cor/{MRI ID}_cor.nii.gz"'
            )
        if len(set(named)) < len(named):
            twice = next(z for z in named if named.count(z) > 1)
            raise ConfigError(f"--path: zone {twice!r} is named twice; name each zone once")
        if named and zone is not None:
            raise ConfigError(
                f"{name} has a zone column ({zone}) and the --path templates name zones too; "
                "use one of the two"
            )
        for template in parsed:
            for field_name in template.fields:
                if field_name not in header:
                    raise ConfigError(
                        f"--path {template.shown()!r}: {{{field_name}}} is not a column of "
                        f"{name}{_suggest(field_name, header)}; its columns are: "
                        f"{', '.join(header)}"
                    )
        for extra in keep:
            if extra not in header:
                raise ConfigError(
                    f"--keep {extra}: {name} has no column {extra!r}{_suggest(extra, header)}; "
                    f"its columns are: {', '.join(header)}"
                )
        standard = {"patient_id", "visit", "path", "score", "zone", "split", CHANGE_LABEL}
        clash = [c for c in keep if c in standard or c in columns.values()]
        if clash:
            raise ConfigError(
                f"--keep {clash[0]}: it is already a manifest column; keep only other columns"
            )
        missing = [ours for ours in ("patient_id", "visit") if column(ours) is None]
        if missing:
            raise ConfigError(
                f"{name} has no {missing[0]} column: map the one that holds it, e.g. "
                f"--columns {missing[0]}=NAME (its columns are: {', '.join(header)})"
            )
        return cls(
            patient_id=column("patient_id") or "",
            visit=column("visit") or "",
            score=column("score"),
            zone=None if named else zone,
            split=column("split"),
            change_label=column(CHANGE_LABEL),
            templates=parsed,
            keep=tuple(dict.fromkeys(keep)),
        )


def _suggest(wanted: str, header: Iterable[str]) -> str:
    """`` (did you mean 'Subject ID'?)`` for a close or differently-cased column name, or a
    hint at the separator when the header reads as one column that holds another one."""
    names = list(header)
    same_case = [c for c in names if c.lower() == wanted.lower()]
    close = same_case or difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if len(names) == 1:
        other = next((c for c in ",;\t|" if c in names[0]), None)
        if other is not None:
            return (
                f" (the header reads as one column: is the separator {other!r}? give --sep "
                f"{'tab' if other == chr(9) else other!r} or leave --sep out to sniff it)"
            )
    return ""


def _read(source: Path, sep: str | None, decimal: str | None) -> TextTable:
    if not source.is_file():
        what = "is a folder; pass the table file inside it" if source.is_dir() else "not found"
        raise DataError(f"{source}: {what}; check the path of --table")
    try:
        return read_text_table(source, sep=sep, decimal=decimal, unit="visit")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source.name}: is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8"
        ) from None
    except PermissionError:
        raise DataError(f"{source.name}: cannot be read (permission denied)") from None
    except csv.Error as exc:
        raise DataError(
            f"{source.name}: cannot be read as a table ({exc}); check its quotes"
        ) from None


def _cells_by_name(
    records: list[tuple[int, list[str]]], header: list[str], sep: str, problems: _Problems
) -> list[tuple[int, dict[str, str]]]:
    """Each record as ``{column: stripped cell}``; a record with more cells than the header
    is reported and left out."""
    width = len(header)
    rows = []
    for row, record in records:
        if len(record) > width and any(cell.strip() for cell in record[width:]):
            problems.cell(
                row,
                f"{width + 1} (no header)",
                f"the row has {len(record)} cells but the header has {width}; check the "
                f"separators ({sep!r}) and quotes of this row, or give --sep",
            )
            continue
        cells = [cell.strip() for cell in (record + [""] * width)[:width]]
        rows.append((row, dict(zip(header, cells, strict=True))))
    return rows


def _check_missing(
    name: str,
    skipped: list[Skipped],
    found: list[tuple[int, dict[str, str], PathTemplate, str]],
    missing: str,
    templates: Sequence[PathTemplate],
    base: Path,
) -> None:
    if not found:
        first = skipped[0]
        relative = " (relative templates start at the table's folder)"
        raise DataError(
            f"{name}: no scan file found for any row; the first expected is row {first.row}: "
            f"{first.path} ({first.reason}); check --path "
            f"{' '.join(repr(t.shown()) for t in templates)} against the files in {base}"
            f"{relative}"
        )
    if skipped and missing == "stop":
        first = skipped[0]
        total = len(found) + len(skipped)
        raise DataError(
            f"{name} row {first.row}: {first.reason}: {first.path}"
            + (f" (zone {first.zone})" if first.zone else "")
            + f"; {len(skipped)} of {total} files are missing: fix --path or the files, or "
            "pass --missing skip to leave them out"
        )


def _manifest_rows(
    found: list[tuple[int, dict[str, str], PathTemplate, str]],
    used: _Columns,
    visits: dict[int, str],
    target: Path,
    problems: _Problems,
) -> list[dict[str, str]]:
    """One manifest row per file found, in table order (then template order)."""
    folder = Path(os.path.abspath(target)).parent
    rows: list[dict[str, str]] = []
    seen: dict[tuple[str, ...], int] = {}
    checked: set[int] = set()
    for row, cells, template, resolved in found:
        first = row not in checked
        checked.add(row)
        patient = cells[used.patient_id]
        if not patient:
            if first:
                problems.cell(row, used.patient_id, "is empty; write the patient's identifier")
            continue
        score = cells[used.score] if used.score else ""
        if used.score and score and first:
            try:
                value = float(score)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                problems.cell(
                    row,
                    used.score,
                    f"{score!r} is not a number; write the score, or leave the cell empty for "
                    "an unlabelled scan (a decimal comma? give --decimal ,)",
                )
        if row not in visits:
            continue  # reported by read_visits
        zone = template.zone or (cells[used.zone] if used.zone else None)
        key = (patient, visits[row], zone or "", resolved)
        if key in seen:
            problems.cell(
                row,
                "path",
                f"{resolved} is the file of row {seen[key]} too (same patient, visit and "
                "zone); delete one of the two rows or fix --path",
            )
            continue
        seen[key] = row
        path = Path(resolved)
        written = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else resolved
        entry = {"patient_id": patient, "visit": visits[row], "path": written, "score": score}
        if zone is not None:
            entry["zone"] = zone
        if used.split:
            entry["split"] = cells[used.split]
        if used.change_label:
            # The clinician's judgement of the change to this visit: every scan row of the
            # visit carries it, and load_manifest checks it.
            entry[CHANGE_LABEL] = cells[used.change_label]
        for extra in used.keep:
            entry[extra] = cells[extra]
        rows.append(entry)
    return rows


def _csv_text(rows: list[dict[str, str]]) -> str:
    names = list(dict.fromkeys(name for row in rows for name in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
