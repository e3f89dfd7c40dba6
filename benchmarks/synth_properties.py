"""Measure the synthetic cohorts' properties reported in docs/synthetic.md.

1. Scores and trajectories per modality and preset, averaged over seeds (no rendering):
   visits per patient, consecutive-visit score changes against the between-patient spread,
   and the class balance of change pairs under the usual stable bands.
2. Images (demo preset, zone R1 for LUS): mean absolute pixel difference between consecutive
   visits of a patient (as written, fresh acquisition each visit), the same in the null
   cohort, the part due to the disease alone (both visits rendered with one acquisition), and
   between two patients.
3. Wall time of ``learner synth`` per preset and for the acceptance cohort (40 patients).

Usage:
    .venv/bin/python benchmarks/synth_properties.py            # everything (minutes)
    .venv/bin/python benchmarks/synth_properties.py --no-timing --seeds 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from learner.data.synthetic import lus, mri
from learner.data.synthetic.common import (
    PRESETS,
    STREAM_ACQUISITION,
    STREAM_NUISANCE,
    STREAM_ZONE,
    cohort_table,
    consecutive_changes,
    keyed_rng,
    visit_scores,
)

LABELS = ("worsen", "stable", "improve")


def label(changes: np.ndarray, band: float) -> np.ndarray:
    """worsen / stable / improve for later-minus-earlier changes; higher score is better."""
    return np.where(changes > band, "improve", np.where(changes < -band, "worsen", "stable"))


def score_properties(modality: str, preset: str, seeds: int) -> dict[str, str]:
    """Averages over seeds of the score and trajectory properties of one cohort kind."""
    rows = []
    for seed in range(seeds):
        table = cohort_table(modality, seed=seed, preset=preset)
        visits = visit_scores(table)
        changes = consecutive_changes(table, "score")
        per_patient = visits.groupby("patient_id")[["score", "severity"]].mean()
        row = {
            "visits": len(visits) / len(per_patient),
            "pairs": len(changes),
            "change_sd": changes.std(ddof=1),
            "between_sd": per_patient["score"].std(ddof=1),
            "sev_ratio": consecutive_changes(table, "severity").std(ddof=1)
            / per_patient["severity"].std(ddof=1),
        }
        row["ratio"] = row["change_sd"] / row["between_sd"]
        bands = (
            {"2 pts": 2.0}
            if modality == "mri"
            else {"tertiles": float(np.quantile(np.abs(changes), 1 / 3)), "25 S/F": 25.0}
        )
        for name, band in bands.items():
            labels = label(changes, band)
            for cls in LABELS:
                row[f"{name}:{cls}"] = float(np.mean(labels == cls))
            row[f"{name}:all3"] = float(len(set(labels.tolist())) == 3)
            if name == "tertiles":
                row["tertile_band"] = band
        rows.append(row)
    frame = pd.DataFrame(rows)
    mean = frame.mean()
    out = {
        "modality": modality,
        "preset": preset,
        "patients": str(PRESETS[preset].patients),
        "visits/patient": f"{mean['visits']:.2f}",
        "pairs": f"{mean['pairs']:.0f}",
        "sd(change)": f"{mean['change_sd']:.1f}",
        "sd(between)": f"{mean['between_sd']:.1f}",
        "score ratio": f"{mean['ratio']:.2f} ± {frame['ratio'].std():.2f}",
        "severity ratio": f"{mean['sev_ratio']:.2f}",
    }
    if "tertile_band" in mean:
        out["tertile band"] = f"{mean['tertile_band']:.1f}"
    for name in [c.split(":")[0] for c in frame.columns if c.endswith(":all3")]:
        shares = "/".join(f"{100 * mean[f'{name}:{cls}']:.0f}" for cls in LABELS)
        out[f"W/S/I % ({name})"] = shares
        out[f"all 3 classes ({name})"] = f"{100 * mean[f'{name}:all3']:.0f}% of seeds"
    return out


def _render(modality: str, row: pd.Series, *, acquisition_visit: int | None) -> np.ndarray:
    """Render one cohort row; ``acquisition_visit`` forces that visit's acquisition draws."""
    spec = PRESETS["demo"]
    p = int(row["patient_index"])
    visit = int(row["visit"]) if acquisition_visit is None else acquisition_visit
    sev = float(row["render_severity"])
    if modality == "lus":
        patient = lus.draw_patient(keyed_rng(0, "lus", p, STREAM_NUISANCE))
        zone = lus.draw_zone(keyed_rng(0, "lus", p, STREAM_ZONE, 0), patient)
        rng = keyed_rng(0, "lus", p, STREAM_ACQUISITION, visit, 0)
        clip = lus.render_clip(
            sev, patient, zone, frames=spec.frames, size=spec.frame_size, rng=rng
        )
        return clip.astype(np.float32)
    anatomy = mri.draw_anatomy(keyed_rng(0, "mri", p, STREAM_NUISANCE))
    volume = mri.render_volume(
        sev, anatomy, size=spec.volume_size, rng=keyed_rng(0, "mri", p, STREAM_ACQUISITION, visit)
    )
    return np.round(volume)  # as stored (int16)


def image_properties(modality: str, patients: int) -> dict[str, str]:
    """Mean |difference| within and between patients, seed 0, demo preset."""
    tables = {
        null: cohort_table(modality, seed=0, preset="demo", patients=patients, null=null)
        for null in (False, True)
    }
    if modality == "lus":
        tables = {k: t[t["zone_index"] == 0] for k, t in tables.items()}
    within: dict[str, list[float]] = {"real": [], "null": [], "signal": [], "null signal": []}
    between: list[float] = []
    first_visits: list[np.ndarray] = []
    for p, visits in tables[False].groupby("patient_index"):
        null_visits = tables[True][tables[True]["patient_index"] == p]
        real = [_render(modality, r, acquisition_visit=None) for _, r in visits.iterrows()]
        first_visits.append(real[0])
        if len(real) < 2:
            continue
        null = [_render(modality, r, acquisition_visit=None) for _, r in null_visits.iterrows()]
        signal = [_render(modality, r, acquisition_visit=0) for _, r in visits.iterrows()]
        null_signal = [_render(modality, r, acquisition_visit=0) for _, r in null_visits.iterrows()]
        for key, images in (
            ("real", real),
            ("null", null),
            ("signal", signal),
            ("null signal", null_signal),
        ):
            within[key] += [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(images)]
    for a, b in itertools.pairwise(first_visits):
        between.append(float(np.abs(b - a).mean()))
    unit = "grey levels" if modality == "lus" else "scanner units"
    return {
        "modality": modality,
        "within patient, as written": f"{np.mean(within['real']):.2f}",
        "within patient, null cohort": f"{np.mean(within['null']):.2f}",
        "disease only (same acquisition)": f"{np.mean(within['signal']):.2f}",
        "disease only, null cohort": f"{np.mean(within['null signal']):.2f}",
        "between patients (visit 0)": f"{np.mean(between):.2f}",
        "unit": unit,
        "pairs": str(len(within["real"])),
    }


def synth_time(modality: str, args: list[str]) -> dict[str, str]:
    """Wall time of one ``learner synth`` run in a fresh folder."""
    learner = Path(sys.executable).with_name("learner")
    out = Path(tempfile.mkdtemp(prefix="synth-"))
    try:
        start = time.perf_counter()
        result = subprocess.run(
            [str(learner), "synth", modality, "--out", str(out), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - start
        manifest = pd.read_csv(out / "manifest.csv")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    del result
    return {
        "modality": modality,
        "args": " ".join(args),
        "patients": str(manifest["patient_id"].nunique()),
        "scans": str(len(manifest)),
        "visits/patient": f"{manifest.groupby('patient_id')['visit'].nunique().mean():.2f}",
        "wall s": f"{wall:.1f}",
        "MB": f"{size / 1e6:.1f}",
    }


def markdown(rows: list[dict[str, str]]) -> str:
    """A GitHub table of dict rows sharing their keys."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r.get(k, "") for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds for the score properties")
    parser.add_argument("--image-patients", type=int, default=24)
    parser.add_argument("--no-timing", action="store_true", help="skip the `learner synth` runs")
    args = parser.parse_args()

    print(f"# Synthetic cohort properties ({args.seeds} seeds)\n")
    for modality in ("lus", "mri"):
        rows = [score_properties(modality, preset, args.seeds) for preset in PRESETS]
        print(markdown(rows), "\n")
    print(f"## Images (demo preset, seed 0, first {args.image_patients} patients)\n")
    print(markdown([image_properties(m, args.image_patients) for m in ("lus", "mri")]), "\n")
    if args.no_timing:
        return
    print(
        f"## `learner synth` wall time (os.cpu_count()={os.cpu_count()}, "
        f"load average at start {os.getloadavg()[0]:.1f})\n"
    )
    rows = []
    for modality in ("lus", "mri"):
        rows.append(synth_time(modality, ["--patients", "40"]))
        for preset in PRESETS:
            rows.append(synth_time(modality, ["--preset", preset]))
    print(markdown(rows))


if __name__ == "__main__":
    main()
