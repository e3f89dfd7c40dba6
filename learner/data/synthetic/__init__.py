"""Synthetic longitudinal cohorts written as real files (docs/synthetic.md).

``write_cohort`` simulates the latent trajectories and scores (``common.py``), renders each
scan (``lus.py`` clips as mp4, ``mri.py`` volumes as NIfTI), and writes ``manifest.csv`` (the
contract columns only) and ``truth.csv`` (the latent ground truth, for analysis).

Example:
    >>> from pathlib import Path
    >>> from learner.data.synthetic import write_cohort
    >>> files = write_cohort("lus", Path("cohort"), patients=12, seed=0, preset="tiny")
    >>> files.manifest.name
    'manifest.csv'
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from learner.data.synthetic import lus, mri
from learner.data.synthetic.common import (
    PRESETS,
    SCORE_MODELS,
    check_modality,
    check_nuisance,
    cohort_table,
    resolve_preset,
    with_pool,
)
from learner.data.synthetic.video_io import write_mp4
from learner.errors import ConfigError
from learner.io import atomic_write_bytes

__all__ = ["PRESETS", "CohortFiles", "cohort_table", "write_cohort"]

_PREVIEW_PATIENTS = 4


@dataclass(frozen=True)
class CohortFiles:
    """What :func:`write_cohort` wrote.

    Attributes:
        manifest: ``out/manifest.csv`` (patient_id, visit, path, score[, zone]).
        preview: ``out/preview.png`` or ``None`` when not asked for.
        truth: ``out/truth.csv``, the latent ground truth per scan.
        patients: Number of patients.
        scans: Number of scan files (manifest rows).
    """

    manifest: Path
    preview: Path | None
    truth: Path
    patients: int
    scans: int


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n", float_format="%.6g")
    return buffer.getvalue().encode("utf-8")


def _preview_patients(table: pd.DataFrame) -> list[int]:
    """Patients to show: the ones with most visits, spread over the severity range."""
    per = table.groupby("patient_index").agg(
        visits=("visit", "nunique"), severity=("patient_mean_severity", "first")
    )
    most = per[per["visits"] == per["visits"].max()].sort_values("severity")
    if len(most) < _PREVIEW_PATIENTS:
        most = (
            per.sort_values(["visits", "severity"], ascending=[False, True])
            .head(_PREVIEW_PATIENTS)
            .sort_values("severity")
        )
    picks = np.linspace(0, len(most) - 1, min(_PREVIEW_PATIENTS, len(most))).round().astype(int)
    return [int(i) for i in most.index.to_numpy()[np.unique(picks)]]


def _preview_image(array: np.ndarray, modality: str) -> np.ndarray:
    """The 2D picture of a scan shown in the preview (mid frame / coronal mid-hippocampus)."""
    if modality == "lus":
        return array[len(array) // 2]
    # Coronal slice through the hippocampi, displayed with the top of the head up.
    j = round((1.0 - 0.12) / 2.0 * array.shape[1] - 0.5)
    return array[:, j, :].T


def _write_preview(
    path: Path, images: dict[tuple[int, int], np.ndarray], table: pd.DataFrame, modality: str
) -> None:
    """Grid of patients (rows) x visits (columns), the score in each title."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = sorted({p for p, _ in images})
    cols = max(v for _, v in images) + 1
    score_name = SCORE_MODELS[modality].name
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.35 * len(rows)), squeeze=False)
    for r, p in enumerate(rows):
        visits = table[table["patient_index"] == p].groupby("visit").first()
        for v in range(cols):
            ax = axes[r, v]
            ax.axis("off")
            if (p, v) not in images:
                continue
            origin = "upper" if modality == "lus" else "lower"
            vmax = 255 if modality == "lus" else float(np.percentile(images[p, v], 99.5))
            ax.imshow(
                images[p, v], cmap="gray", vmin=0, vmax=vmax, origin=origin, interpolation="nearest"
            )
            row = visits.loc[v]
            ax.set_title(
                f"{row['patient_id']} v{v}  {score_name} {row['score']:g}\n"
                f"severity {row['severity']:.2f}",
                fontsize=7,
            )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_cohort(
    modality: str,
    out: str | Path,
    *,
    patients: int | None = None,
    seed: int = 0,
    preset: str = "demo",
    null: bool = False,
    preview: bool = False,
    pool: int = 0,
    nuisance: float = 1.0,
    score_quantum: float | None = None,
) -> CohortFiles:
    """Simulate a longitudinal cohort and write it as real files plus a manifest.

    Layout: ``out/scans/<patient>/<patient>_v<visit>[_<zone>].mp4|.nii.gz``,
    ``out/manifest.csv`` (columns ``patient_id, visit, path, score`` and ``zone`` for LUS;
    ``path`` relative to ``out``), ``out/truth.csv`` (latent severity and the rest of the
    ground truth per scan) and, if asked, ``out/preview.png``. Each file is written atomically;
    files of an earlier cohort with the same names are overwritten, other files are left alone.
    The same arguments give identical manifests and identical decoded arrays.

    Args:
        modality: ``"lus"`` (mp4 clips, several zones per visit) or ``"mri"`` (NIfTI volumes).
        out: Output folder (created if missing).
        patients: Number of patients (>= 2); ``None`` uses the preset's.
        seed: Random seed (>= 0).
        preset: ``"tiny"`` (tests), ``"demo"`` or ``"bench"``: sizes and default patients.
        null: Control cohort whose images carry no within-patient change (see
            :func:`learner.data.synthetic.common.cohort_table`).
        preview: Also write ``out/preview.png``.
        pool: Add this many single-visit patients (``Q000`` ...) marked ``split = pretrain``
            in the manifest: a cross-sectional pool that only ever enters pretraining (see
            :func:`learner.data.synthetic.common.with_pool`).
        nuisance: Strength of the between-patient nuisance in [0, 1]: 1 (default) is the
            standard cohort, bit for bit; lower values shrink every patient's (and zone's)
            anatomy and acquisition settings toward the typical ones, leaving severity,
            scores and the per-visit acquisition as they are
            (:class:`~learner.data.synthetic.common.ShrunkNuisance`). Recorded in truth.csv.
        score_quantum: The step the scores are rounded to (``None``: the modality's own); a
            coarser score for the same latent cohort and images (a positive control of
            judging change against the truth).

    Returns:
        The paths written and the patient and scan counts.

    Raises:
        ConfigError: Bad modality, preset, patient count, seed or nuisance, or ``out`` is a
            file.
    """
    check_modality(modality)
    nuisance = check_nuisance(nuisance)
    spec = resolve_preset(preset)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the cohort")
    table = with_pool(
        modality,
        patients=patients,
        pool=pool,
        seed=seed,
        preset=preset,
        null=null,
        score_quantum=score_quantum,
    )

    preview_rows = set(_preview_patients(table)) if preview else set()
    images: dict[tuple[int, int], np.ndarray] = {}
    paths: list[str] = []
    for row in table.to_dict("records"):
        pid, visit, p = str(row["patient_id"]), int(row["visit"]), int(row["patient_index"])
        folder = out / "scans" / pid
        folder.mkdir(parents=True, exist_ok=True)
        if modality == "lus":
            zone_index = int(row["zone_index"])
            rel = f"scans/{pid}/{pid}_v{visit}_{row['zone']}.mp4"
            clip = lus.render_scan(
                seed=seed,
                patient_index=p,
                visit=visit,
                zone_index=zone_index,
                severity=float(row["render_severity"]),
                preset=spec,
                nuisance=nuisance,
            )
            write_mp4(out / rel, clip, fps=spec.fps)
            if p in preview_rows and zone_index == 0:
                images[p, visit] = _preview_image(clip, modality)
        else:
            rel = f"scans/{pid}/{pid}_v{visit}.nii.gz"
            volume = mri.render_scan(
                seed=seed,
                patient_index=p,
                visit=visit,
                severity=float(row["render_severity"]),
                preset=spec,
                nuisance=nuisance,
            )
            mri.write_nifti(out / rel, volume, voxel_mm=spec.voxel_mm)
            if p in preview_rows:
                images[p, visit] = _preview_image(volume, modality)
        paths.append(rel)

    quantum = SCORE_MODELS[modality].quantum if score_quantum is None else score_quantum
    table = table.assign(path=paths, null=null, nuisance=nuisance, score_quantum=quantum)
    columns = ["patient_id", "visit", "path", "score"] + (["zone"] if modality == "lus" else [])
    columns += ["split"] if pool else []
    manifest = out / "manifest.csv"
    truth = out / "truth.csv"
    atomic_write_bytes(manifest, _csv_bytes(table[columns]))
    truth_columns = columns + [c for c in table.columns if c not in columns]
    atomic_write_bytes(truth, _csv_bytes(table[truth_columns]))
    preview_path = None
    if preview:
        preview_path = out / "preview.png"
        _write_preview(preview_path, images, table, modality)
    return CohortFiles(
        manifest=manifest,
        preview=preview_path,
        truth=truth,
        patients=int(table["patient_id"].nunique()),
        scans=len(table),
    )
