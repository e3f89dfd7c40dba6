"""Manifest builders for the quality benchmarks (issue #6): real and synthetic data sets.

Every builder reads the public data under ``<repo>/../shared/data`` (or a folder given), writes
a learner manifest into ``benchmarks/work/<name>/`` (git-ignored) and returns its path. The
source data are never modified. The choices each builder makes, in one place:

- ``parkinsons``: UCI Parkinson's Telemonitoring. One row per subject-week: recordings are
  grouped by ``week = floor(max(test_time, 0) / 7)`` (the few recordings a day or four before
  the baseline fall into week 0), and each row holds the weekly means of the 16 voice
  features and of ``total_UPDRS``; ``visit`` is the week index. Column names are made
  identifier-like (``Jitter(%)`` -> ``jitter_pct``) so that configs can list them plainly.
- ``covid-blues-severity``: COVID-BLUES, one row per clip, ``score`` = the clip's severity
  (0-3) from ``severity.csv``, ``zone`` = the BLUE point (L1..R3), one visit (0) per patient.
- ``covid-blues-sf``: the same clips, ``score`` = the patient's S/F-like ratio, room-air
  SpO2 / 0.21 (``oxygen_saturation_without_ox`` of ``clinical_variables.csv``); patients whose
  value is -99 (missing) or empty are dropped.
- ``pocus``: the POCUS clips as an external set, ``score`` = "Lung Severity Score" of
  ``metadata.csv`` (empty = unlabelled). ``patient_id`` = ``<Source ID>-<Patient ID>`` (ids
  of different sources could collide). Patient 35 of source 2 (``Cov-Atlas-Day+N``) is one
  patient with four visits (visit = N); every other patient has one visit (0).
- ``synth-lus`` / ``synth-lus-null`` / ``synth-mri``: :func:`learner.data.synthetic.write_cohort`.
- ``oasis2-slices``: OASIS-2 brain MRI, one axial / coronal / sagittal 2-D slice per visit
  (:func:`build_oasis2_slices`). ``patient_id`` = the OASIS subject (``OAS2_0001``), ``visit``
  = ``MR Delay`` (days since the subject's first scan, so visits sort in time), ``score`` =
  MMSE (empty for the two visits without one: unlabelled). Only visits with at least one
  slice on disk enter, so any subset of subjects works (a third are held back upstream).
  Three layouts of the views, one manifest each: ``manifest-zones.csv`` (a row per view,
  ``zone`` = axl / cor / sag: zone-matched change pairs), ``manifest-channels.csv`` (one RGB
  PNG per visit whose channels are the three views) and ``manifest-frames.csv`` (one
  ``(3, 256, 256)`` uint8 ``.npy`` per visit: the views as a 3-frame clip). Each view is
  padded to 256 x 256 with 0 (the background) and centred; a missing view (five visits lack
  the axial slice) is all zero in the channels / frames layouts and simply absent in the
  zones layout. ``manifest.csv`` is the layout the config uses by default (measured on
  validation subjects: benchmarks/reports/oasis2.md). ``visits.csv`` holds per visit MMSE,
  CDR, group and nWBV from the OASIS table (CDR change is the benchmark's second target).

Example:
    >>> from benchmarks.datasets import build  # doctest: +SKIP
    >>> manifest = build("parkinsons")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from learner.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
WORK = REPO / "benchmarks" / "work"

# SpO2 on room air is read against the FiO2 of room air, 0.21, giving an S/F-like ratio.
ROOM_AIR_FIO2 = 0.21
MISSING_CODE = -99.0
POCUS_TRAJECTORY = "2-35"  # Source ID 2, patient 35: Cov-Atlas-Day+1..+4
PARKINSONS_SCORE = "total_UPDRS"
# Columns of the UCI file that are not voice features.
_PARKINSONS_META = ("subject#", "age", "sex", "test_time", "motor_UPDRS", "total_UPDRS")


def data_root(root: Path | None = None) -> Path:
    """The shared data folder; raises ``DataError`` naming it when absent."""
    folder = Path(root) if root is not None else SHARED_DATA
    if not folder.is_dir():
        raise DataError(
            f"{folder}: shared data folder not found; put the public data sets there "
            "(see ../shared/data/README.md) or pass --data-root"
        )
    return folder.resolve()


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: not found; the shared data set is incomplete")
    return path


def feature_name(column: str) -> str:
    """``Jitter(%)`` -> ``jitter_pct``, ``Shimmer:APQ3`` -> ``shimmer_apq3``."""
    text = column.replace("%", "pct")
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")
    return text.lower()


def parkinsons_features(root: Path | None = None) -> list[str]:
    """The 16 voice feature names as they appear in the built manifest."""
    raw = pd.read_csv(_require(data_root(root) / "parkinsons-telemonitoring/parkinsons_updrs.data"))
    return [feature_name(c) for c in raw.columns if c not in _PARKINSONS_META]


def build_parkinsons(out: Path, root: Path | None = None) -> Path:
    """Weekly means per subject of the 16 voice features and total_UPDRS.

    Returns:
        ``out/manifest.csv``: columns patient_id (``S01``..), visit (week index), score
        (mean total_UPDRS of the week), the 16 feature columns; one row per subject-week.
    """
    source = _require(data_root(root) / "parkinsons-telemonitoring/parkinsons_updrs.data")
    raw = pd.read_csv(source)
    features = [c for c in raw.columns if c not in _PARKINSONS_META]
    frame = raw[["subject#", "test_time", PARKINSONS_SCORE, *features]].copy()
    frame["week"] = np.floor(frame["test_time"].clip(lower=0.0) / 7.0).astype(int)
    weekly = frame.groupby(["subject#", "week"], sort=True)[[PARKINSONS_SCORE, *features]].mean()
    weekly = weekly.reset_index()
    table = pd.DataFrame(
        {
            "patient_id": [f"S{int(s):02d}" for s in weekly["subject#"]],
            "visit": weekly["week"].astype(int),
            "score": weekly[PARKINSONS_SCORE].round(4),
        }
    )
    for column in features:
        table[feature_name(column)] = weekly[column]
    return _write(table, out)


def _covid_clips(root: Path) -> pd.DataFrame:
    base = root / "covid-blues"
    severity = pd.read_csv(_require(base / "severity.csv"))
    videos = _require(base / "lus_videos")
    rows = []
    for name, score in zip(severity["video_file"], severity["Severity Score"], strict=True):
        match = re.fullmatch(r"patient_(\d+)_([LR][1-3])(?:_\d+)?", str(name).strip())
        if match is None:
            raise DataError(
                f"{base / 'severity.csv'}: video_file {name!r} is not patient_<id>_<zone>[_n]"
            )
        clip = videos / f"{name}.mp4"
        if not clip.is_file():
            continue  # a severity row without its clip cannot be trained on
        rows.append(
            {
                "patient_id": f"B{int(match.group(1)):02d}",
                "visit": 0,
                "path": str(clip),
                "score": float(score) if pd.notna(score) else math.nan,
                "zone": match.group(2),
            }
        )
    return pd.DataFrame(rows)


def build_covid_severity(out: Path, root: Path | None = None) -> Path:
    """COVID-BLUES clips with their own severity (0-3) as the score."""
    return _write(_covid_clips(data_root(root)), out)


def covid_sf_scores(root: Path | None = None) -> dict[str, float]:
    """Patient (``Bnn``) -> room-air SpO2 / 0.21 for patients with a recorded value."""
    table = pd.read_csv(_require(data_root(root) / "covid-blues/clinical_variables.csv"))
    spo2 = pd.to_numeric(table["oxygen_saturation_without_ox"], errors="coerce")
    scores: dict[str, float] = {}
    for pid, value in zip(table["patient_id"], spo2, strict=True):
        if pd.isna(value) or value == MISSING_CODE or value <= 0:
            continue
        scores[f"B{int(pid):02d}"] = round(float(value) / ROOM_AIR_FIO2, 2)
    return scores


def build_covid_sf(out: Path, root: Path | None = None) -> Path:
    """COVID-BLUES clips scored with the patient's S/F-like ratio (patients without one dropped)."""
    folder = data_root(root)
    clips = _covid_clips(folder)
    scores = covid_sf_scores(folder)
    clips = clips[clips["patient_id"].isin(list(scores))].copy()
    clips["score"] = clips["patient_id"].map(scores)
    return _write(clips, out)


def build_pocus(out: Path, root: Path | None = None) -> Path:
    """POCUS clips with their 0-3 severity; patient 35 (source 2) as four daily visits."""
    base = data_root(root) / "pocus"
    meta = pd.read_csv(_require(base / "metadata.csv"), dtype=str, keep_default_na=False)
    videos = {p.stem: p for p in _require(base / "videos").iterdir() if p.is_file()}
    rows = []
    for _, item in meta.iterrows():
        stem = item["Filename"].strip()
        clip = videos.get(stem)
        if clip is None:
            raise DataError(f"{base / 'metadata.csv'}: Filename {stem!r} has no file in videos/")
        pid = f"{item['Source ID'].strip()}-{item['Patient ID / Name'].strip()}"
        day = re.fullmatch(r"Cov-Atlas-Day\+(\d)", stem)
        visit = int(day.group(1)) if day and pid == POCUS_TRAJECTORY else 0
        text = item["Lung Severity Score"].strip()
        rows.append(
            {
                "patient_id": pid,
                "visit": visit,
                "path": str(clip.resolve()),
                "score": float(text) if text else math.nan,
            }
        )
    return _write(pd.DataFrame(rows), out)


def build_synthetic(
    out: Path,
    *,
    modality: str,
    preset: str,
    null: bool = False,
    seed: int = 0,
    pool: int = 0,
    nuisance: float = 1.0,
) -> Path:
    """A synthetic cohort (written once: an existing manifest is reused); ``pool`` adds that
    many single-visit pretraining-only patients (`learner synth --pool`), ``nuisance`` sets
    the between-patient nuisance strength (`learner synth --nuisance`)."""
    manifest = out / "manifest.csv"
    if manifest.is_file():
        return manifest
    from learner.data.synthetic import write_cohort

    return write_cohort(
        modality, out, seed=seed, preset=preset, null=null, pool=pool, nuisance=nuisance
    ).manifest


def build_fixed_test(
    out: Path,
    *,
    modality: str,
    preset: str,
    drawn: int,
    test: int,
    pool: int,
    null: bool = False,
) -> Path:
    """A synthetic cohort of ``drawn + test`` longitudinal patients (plus ``pool``
    single-visit pretraining patients) whose last ``test`` patients (by id) are marked
    ``test`` in the manifest: a fixed test set every seed evaluates, while the other
    ``drawn`` patients are split into train and val from each seed. Test patients cost only
    embedding time, so this buys test pairs by the hundred at the training cost of a
    ``drawn``-patient cohort (issue 27, item 5). Written once; an existing marked manifest is
    reused."""
    manifest = out / "manifest.csv"
    if manifest.is_file():
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        if (table["split"] == "test").any():
            return manifest
    from learner.data.synthetic import write_cohort

    files = write_cohort(
        modality, out, seed=0, preset=preset, null=null, pool=pool, patients=drawn + test
    )
    table = pd.read_csv(files.manifest, dtype=str, keep_default_na=False)
    if "split" not in table.columns:
        table["split"] = ""
    longitudinal = sorted(set(table.loc[table["split"] != "pretrain", "patient_id"]))
    fixed = set(longitudinal[drawn:])
    table.loc[table["patient_id"].isin(fixed), "split"] = "test"
    return _write(table, out)


# Pool sizes of the pretraining-pool learning curve (issue 12): the same 60 longitudinal
# patients (and test splits) as synth-lus, plus N single-visit patients for pretraining.
POOL_SIZES = (100, 300, 600)
# Nuisance strengths of the dose-response (issue 15, item 6), on the pool-300 cohort: the
# same patients, scores and splits, only the between-patient nuisance shrunk.
NUISANCE_LEVELS = (0.25, 0.5)


OASIS2_FOLDER = "oasis2-slices"
OASIS2_TABLE = "oasis_longitudinal_demographic.csv"
OASIS2_VIEWS = ("axl", "cor", "sag")
# Every view of the prepared slices fits in 256 x 256 (the largest edge of the source grid).
OASIS2_EDGE = 256
OASIS2_LAYOUTS = ("zones", "channels", "frames")
# The layout manifest.csv holds (the config's default); chosen on validation subjects.
OASIS2_DEFAULT_LAYOUT = "zones"


def read_oasis2_table(root: Path | None = None) -> pd.DataFrame:
    """The published OASIS-2 table: semicolons, decimal commas, CR line endings."""
    source = _require(data_root(root) / OASIS2_FOLDER / OASIS2_TABLE)
    table = pd.read_csv(source, sep=";", decimal=",", lineterminator="\r")
    table.columns = [str(c).strip() for c in table.columns]
    needed = ("Subject ID", "MRI ID", "Group", "MR Delay", "MMSE", "CDR", "nWBV")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(
            f"{source}: column {missing[0]!r} not found; expected the published OASIS-2 table "
            "(semicolon-separated, decimal commas)"
        )
    table = table.dropna(subset=["Subject ID", "MRI ID"])
    for column in ("Subject ID", "MRI ID", "Group"):
        table[column] = table[column].astype(str).str.strip()
    return table.reset_index(drop=True)


def _oasis2_views(folder: Path, mri_id: str) -> dict[str, Path]:
    """The view files of one visit that exist: view -> path."""
    found = {}
    for view in OASIS2_VIEWS:
        path = folder / view / f"{mri_id}_{view}.nii.gz"
        if path.is_file():
            found[view] = path.resolve()
    return found


def _oasis2_stack(views: dict[str, Path]) -> np.ndarray:
    """uint8 ``(3, 256, 256)``: the views in OASIS2_VIEWS order, each centred on a zero
    background; a missing view stays all zero."""
    from learner.data.readers import read_scan

    stack = np.zeros((len(OASIS2_VIEWS), OASIS2_EDGE, OASIS2_EDGE), dtype=np.uint8)
    for i, view in enumerate(OASIS2_VIEWS):
        if view not in views:
            continue
        image = read_scan(views[view]).array
        if image.ndim != 2 or max(image.shape) > OASIS2_EDGE:
            raise DataError(
                f"{views[view]}: slice of shape {image.shape} is not a grey image of at most "
                f"{OASIS2_EDGE} x {OASIS2_EDGE}; the shared OASIS-2 slices are incomplete"
            )
        top = (OASIS2_EDGE - image.shape[0]) // 2
        left = (OASIS2_EDGE - image.shape[1]) // 2
        stack[i, top : top + image.shape[0], left : left + image.shape[1]] = image
    return stack


def _write_once(path: Path, write: Callable[[Path], None]) -> None:
    """Write a derived file unless it exists (the source slices never change)."""
    if path.is_file():
        return
    # The suffixes stay last (``x.nii.gz`` -> ``.tmp-x.nii.gz``): writers read the format there.
    tmp = path.with_name(".tmp-" + path.name)
    write(tmp)
    tmp.replace(path)


def build_oasis2_slices(out: Path, root: Path | None = None) -> Path:
    """OASIS-2 slices: one manifest per view layout, ``manifest.csv`` = the default layout.

    Args:
        out: folder for the manifests, ``visits.csv`` and the derived per-visit stacks
            (``views/<MRI ID>.png`` and ``.npy``).
        root: a data folder laid out like ``../shared/data`` (default: that folder).

    Returns:
        ``out/manifest.csv``.

    Raises:
        DataError: the table or the slice folder is missing, or no subject has a slice.
    """
    folder = data_root(root) / OASIS2_FOLDER
    table = read_oasis2_table(root)
    stacks = out / "views"
    stacks.mkdir(parents=True, exist_ok=True)
    zones, channels, frames, visits = [], [], [], []
    for item in table.to_dict(orient="records"):
        mri_id = item["MRI ID"]
        views = _oasis2_views(folder, mri_id)
        if not views:
            continue  # a subject whose images are held back, or a visit without slices
        base = {
            "patient_id": item["Subject ID"],
            "visit": int(item["MR Delay"]),  # days since the subject's first scan
            "score": float(item["MMSE"]) if pd.notna(item["MMSE"]) else math.nan,
            # Normalised whole-brain volume from the visit's full 3-D scan: a finer reference
            # of change than MMSE (`--set "eval.target={column: nWBV}"`).
            "nWBV": float(item["nWBV"]) if pd.notna(item["nWBV"]) else math.nan,
        }
        for view, path in views.items():
            zones.append({**base, "path": str(path), "zone": view})
        stack = _oasis2_stack(views)
        png, npy = stacks / f"{mri_id}.png", stacks / f"{mri_id}.npy"
        _write_once(npy, lambda p, a=stack: np.save(p, a))
        _write_once(png, lambda p, a=stack: _write_png(p, a))
        channels.append({**base, "path": str(png.resolve())})
        frames.append({**base, "path": str(npy.resolve())})
        visits.append(
            {
                "patient_id": base["patient_id"],
                "visit": base["visit"],
                "mri_id": mri_id,
                "group": item["Group"],
                "mmse": base["score"],
                "cdr": float(item["CDR"]),
                "nwbv": float(item["nWBV"]),
                "views": "+".join(v for v in OASIS2_VIEWS if v in views),
            }
        )
    if not visits:
        raise DataError(
            f"{folder}: no slice of any subject listed in {OASIS2_TABLE} was found under "
            f"{'/, '.join(OASIS2_VIEWS)}/; check the shared data folder"
        )
    layouts = {
        "zones": pd.DataFrame(zones),
        "channels": pd.DataFrame(channels),
        "frames": pd.DataFrame(frames),
    }
    for name, frame in layouts.items():
        _write(frame, out, f"manifest-{name}.csv")
    _write(pd.DataFrame(visits), out, "visits.csv")
    return _write(layouts[OASIS2_DEFAULT_LAYOUT], out)


def build_synth_mri_views(out: Path, source: Path | None = None) -> Path:
    """A synthetic MRI cohort (``source``, a manifest; default synth-mri-pool300) in
    OASIS-2's layout, for transfer (issue 15 item 5): each volume's middle axial, coronal and
    sagittal slice as a 2-D NIfTI, one manifest row per view (``zone`` = axl / cor / sag, as
    oasis2-slices), same patients, scores and pool. The slices' orientations were matched to
    OASIS-2's by eye (ventricles, midline)."""
    import nibabel as nib

    manifest = out / "manifest.csv"
    if manifest.is_file():
        return manifest
    src = source if source is not None else build("synth-mri-pool300", out.parent)
    table = pd.read_csv(src, dtype={"patient_id": str})
    rows = []
    for row in table.itertuples(index=False):
        folder = out / "scans" / str(row.patient_id)
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(str(row.path)).name.removesuffix(".nii.gz")
        paths = [folder / f"{stem}_{view}.nii.gz" for view in OASIS2_VIEWS]
        if not all(path.is_file() for path in paths):  # decode a volume only when needed
            volume = np.asarray(nib.load(src.parent / str(row.path)).get_fdata(), np.float32)
            for axis, path in enumerate(paths):
                still = np.take(volume, volume.shape[axis] // 2, axis=axis)
                _write_once(path, lambda p, a=still: nib.save(nib.Nifti1Image(a, np.eye(4)), p))
        rows += [
            {**row._asdict(), "path": str(path.resolve()), "zone": view}
            for view, path in zip(OASIS2_VIEWS, paths, strict=True)
        ]
    return _write(pd.DataFrame(rows), out)


def _write_png(path: Path, stack: np.ndarray) -> None:
    """``(3, H, W)`` uint8 -> an RGB PNG (views as channels), written by PyAV's encoder."""
    import av

    rgb = np.ascontiguousarray(stack.transpose(1, 2, 0))
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height = rgb.shape[1], rgb.shape[0]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write(table: pd.DataFrame, out: Path, name: str = "manifest.csv") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "parkinsons": build_parkinsons,
    "covid-blues-severity": build_covid_severity,
    "covid-blues-sf": build_covid_sf,
    "pocus": build_pocus,
    "synth-lus": lambda out: build_synthetic(out, modality="lus", preset="demo"),
    **{
        f"synth-lus-pool{n}": (
            lambda out, n=n: build_synthetic(out, modality="lus", preset="demo", pool=n)
        )
        for n in POOL_SIZES
    },
    **{
        f"synth-lus-pool300-nuisance{s:g}": (
            lambda out, s=s: build_synthetic(
                out, modality="lus", preset="demo", pool=300, nuisance=s
            )
        )
        for s in NUISANCE_LEVELS
    },
    "synth-lus-null": lambda out: build_synthetic(out, modality="lus", preset="demo", null=True),
    # The null control of a pool run: the pool is drawn from the null generator too.
    **{
        f"synth-lus-null-pool{n}": (
            lambda out, n=n: build_synthetic(out, modality="lus", preset="demo", null=True, pool=n)
        )
        for n in POOL_SIZES
    },
    # The pool-300 recipe's training size (48 patients drawn into train / val per seed) with
    # a fixed test set of 240 patients, and its null control (issue 27's power design).
    **{
        f"synth-lus{tag}-pool300-test240": (
            lambda out, null=null: build_fixed_test(
                out, modality="lus", preset="demo", drawn=48, test=240, pool=300, null=null
            )
        )
        for tag, null in (("", False), ("-null", True))
    },
    "synth-lus-bench": lambda out: build_synthetic(out, modality="lus", preset="bench"),
    "synth-lus-bench-null": lambda out: build_synthetic(
        out, modality="lus", preset="bench", null=True
    ),
    "synth-mri": lambda out: build_synthetic(out, modality="mri", preset="bench"),
    # The MRI cohort with the LUS recipe's pool (issue 12): the same 150 longitudinal
    # patients as synth-mri plus 300 single-visit pretraining patients, and its null control.
    # (100 and 600 are the MRI learning curve's other points.)
    **{
        f"synth-mri-pool{n}": (
            lambda out, n=n: build_synthetic(out, modality="mri", preset="bench", pool=n)
        )
        for n in POOL_SIZES
    },
    "synth-mri-null-pool300": lambda out: build_synthetic(
        out, modality="mri", preset="bench", null=True, pool=300
    ),
    # The MRI recipe's training size (128 patients drawn into train / val per seed: the
    # 105 / 23 of 150 patients at ratios 0.7 / 0.15) with a fixed test set of 240 patients.
    **{
        f"synth-mri{tag}-pool300-test240": (
            lambda out, null=null: build_fixed_test(
                out, modality="mri", preset="bench", drawn=128, test=240, pool=300, null=null
            )
        )
        for tag, null in (("", False), ("-null", True))
    },
    "oasis2-slices": build_oasis2_slices,
    "synth-mri-pool300-views": build_synth_mri_views,
}


def build(name: str, work: Path | None = None) -> Path:
    """Build data set ``name`` into ``<work>/<name>/manifest.csv`` and return the path."""
    if name not in BUILDERS:
        raise DataError(f"data set {name!r} is unknown; use one of {', '.join(BUILDERS)}")
    return BUILDERS[name]((work or WORK) / name)
