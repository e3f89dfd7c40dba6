"""Cohort-level latent model shared by the synthetic LUS and MRI cohorts (docs/synthetic.md).

Every patient has a latent disease severity in [0, 1] (0 healthy, 1 severe) that drifts over
1-4 visits. The severity drives the clinical score through a noisy, coarse mapping (patient
offset, label noise, quantisation) and, in ``lus.py`` / ``mri.py``, the images through subtle
features. Everything here is rendering-free: :func:`cohort_table` gives the whole cohort's
trajectories and scores as a table in milliseconds.

Randomness is keyed, not sequential: each patient (and each of its zones and visits) draws
from its own ``numpy`` generator seeded by ``(seed, modality, patient, stream, ...)``, so a
cohort is deterministic from the seed, a larger cohort extends a smaller one with the same
seed, and the ``--null`` control cohort shares every nuisance and acquisition draw with the
ordinary cohort of the same seed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from learner.errors import ConfigError

Modality = Literal["lus", "mri"]

MODALITIES: tuple[str, ...] = ("lus", "mri")

# Lung zones in visit order; a preset with n zones uses the first n (BLUE-protocol-like names).
ZONE_NAMES: tuple[str, ...] = ("R1", "L1", "R2", "L2", "R3", "L3")


@dataclass(frozen=True)
class Preset:
    """Size of a synthetic cohort.

    Attributes:
        name: Preset name.
        patients: Default number of patients.
        zones: LUS zones (clips) per visit.
        frames: LUS frames per clip.
        frame_size: LUS clip height = width in pixels (even, as H.264 4:2:0 needs).
        volume_size: MRI volume side in voxels (D = H = W).
        voxel_mm: MRI isotropic voxel spacing written in the NIfTI affine.
        fps: LUS clip frame rate.
    """

    name: str
    patients: int
    zones: int
    frames: int
    frame_size: int
    volume_size: int
    voxel_mm: float
    fps: int = 20


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny", patients=12, zones=2, frames=8, frame_size=64, volume_size=32, voxel_mm=2.0
    ),
    "demo": Preset(
        "demo", patients=60, zones=4, frames=16, frame_size=96, volume_size=48, voxel_mm=2.0
    ),
    "bench": Preset(
        "bench", patients=150, zones=4, frames=16, frame_size=112, volume_size=64, voxel_mm=2.0
    ),
}


@dataclass(frozen=True)
class ScoreModel:
    """Noisy coarse mapping from latent severity to a clinical score (higher is better).

    ``score = clip(round_to(intercept + slope * severity + patient_offset + noise, quantum))``
    with ``patient_offset ~ N(0, patient_sd)`` fixed per patient and ``noise ~ N(0, noise_sd)``
    fresh at every visit.
    """

    name: str
    intercept: float
    slope: float
    patient_sd: float
    noise_sd: float
    quantum: float
    low: float
    high: float


SCORE_MODELS: dict[str, ScoreModel] = {
    # S/F = SpO2 / FiO2: ~470 on room air when healthy, ~120 in severe ARDS; reported in steps
    # of 5 because SpO2 is read in whole percent.
    "lus": ScoreModel(
        "S/F",
        intercept=470.0,
        slope=-350.0,
        patient_sd=20.0,
        noise_sd=12.0,
        quantum=5.0,
        low=0.0,
        high=500.0,
    ),
    # MMSE 0-30 integer points; ceiling at 30 for the healthiest patients. The label noise
    # stands for test-retest variation (a point or two); the slope puts ~1/3 of consecutive
    # changes outside the usual 2-point stable band.
    "mri": ScoreModel(
        "MMSE",
        intercept=30.0,
        slope=-26.0,
        patient_sd=1.2,
        noise_sd=1.3,
        quantum=1.0,
        low=0.0,
        high=30.0,
    ),
}


@dataclass(frozen=True)
class LatentModel:
    """Parameters of the severity trajectories (shared by both modalities).

    Baseline severity ``s0 = lo + (hi - lo) * Beta(a, a)`` (between-patient std ~0.19). Each
    patient follows a trend (improving / stable / worsening) with a per-visit drift; the
    severity at the next visit is ``s + drift + N(0, step_sd)``, clipped to [0, 1]. The
    resulting consecutive-visit changes have a std of ~0.3x the between-patient std.
    """

    baseline_beta: float = 2.2
    baseline_low: float = 0.05
    baseline_high: float = 0.95
    visit_probs: tuple[float, float, float, float] = (0.15, 0.35, 0.30, 0.20)
    trend_probs: tuple[float, float, float] = (0.3, 0.4, 0.3)  # improving, stable, worsening
    drift_low: float = 0.04
    drift_high: float = 0.09
    stable_drift_sd: float = 0.01
    step_sd: float = 0.035
    # LUS only: each zone sits at its own offset from the patient's severity, plus a small
    # zone-local change per visit (zones do not move in lockstep).
    zone_offset_sd: float = 0.08
    zone_step_sd: float = 0.02


LATENT = LatentModel()
TRENDS: tuple[str, ...] = ("improving", "stable", "worsening")

# Stream keys for the keyed generators (never reorder: they define the cohorts).
_MODALITY_KEY = {"lus": 1, "mri": 2}
STREAM_LATENT = 0
STREAM_NUISANCE = 1
STREAM_ZONE = 2
STREAM_ACQUISITION = 3
STREAM_POOL = 4  # which visit a pretraining-pool patient keeps


def keyed_rng(
    seed: int, modality: str, patient: int, stream: int, *keys: int
) -> np.random.Generator:
    """A generator that depends only on its keys (not on how many draws came before).

    Args:
        seed: Cohort seed (>= 0).
        modality: ``"lus"`` or ``"mri"``.
        patient: Patient index (0-based).
        stream: One of the ``STREAM_*`` constants.
        *keys: Further keys, e.g. visit and zone indices.

    Returns:
        A fresh ``numpy.random.Generator``.
    """
    entropy = [seed, _MODALITY_KEY[modality], patient, stream, *keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


class ShrunkNuisance:
    """A generator whose continuous draws are pulled toward their centre by ``strength``.

    The nuisance of a synthetic patient (anatomy, gain, speckle, probe placement, ...) is
    drawn as ``uniform(low, high)`` and ``normal(mean, sd)`` values; scaling each draw's
    distance from the middle of its range (``(low + high) / 2``, ``mean``) by ``strength``
    keeps every patient's draws in the same order and shrinks their spread between
    patients: 0 gives every patient the same nuisance, 1 the cohort as it is. Integer draws
    (how many fascia lines, ...) and permutations pass through unchanged. Severity, scores
    and the per-visit acquisition are never drawn through this wrapper.

    Use :func:`nuisance_rng`, which returns the plain generator at strength 1 so that the
    default cohort stays bit-identical.
    """

    def __init__(self, rng: np.random.Generator, strength: float) -> None:
        self.raw = rng
        self.strength = float(strength)

    def pull(self, value: float, centre: float) -> float:
        """``value`` (a raw draw) moved toward ``centre`` as this wrapper's draws are."""
        return float(centre + self.strength * (value - centre))

    def uniform(self, low: float = 0.0, high: float = 1.0, size: int | None = None) -> Any:
        draw = self.raw.uniform(low, high, size)
        centre = (np.asarray(low) + np.asarray(high)) / 2.0
        return centre + self.strength * (draw - centre)

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: int | None = None) -> Any:
        draw = self.raw.normal(loc, scale, size)
        return np.asarray(loc) + self.strength * (draw - np.asarray(loc))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def nuisance_rng(rng: np.random.Generator, strength: float) -> np.random.Generator:
    """``rng`` with its nuisance draws shrunk by ``strength`` (see :class:`ShrunkNuisance`);
    ``rng`` itself at strength 1."""
    if strength == 1.0:
        return rng
    return ShrunkNuisance(rng, strength)  # type: ignore[return-value]


def check_nuisance(strength: float) -> float:
    """``strength`` in [0, 1], else :class:`ConfigError` naming the option."""
    if not (0.0 <= float(strength) <= 1.0):
        raise ConfigError(
            f"--nuisance {strength}: use a strength in [0, 1] (1 = the standard cohort, "
            "0 = every patient with the same anatomy and acquisition settings)"
        )
    return float(strength)


def resolve_preset(preset: str) -> Preset:
    """Return the named preset or raise :class:`ConfigError` listing the valid names."""
    if preset not in PRESETS:
        raise ConfigError(f"preset '{preset}' is unknown; use one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def check_modality(modality: str) -> None:
    """Raise :class:`ConfigError` unless ``modality`` is ``lus`` or ``mri``."""
    if modality not in MODALITIES:
        raise ConfigError(f"modality '{modality}' is unknown; use one of {', '.join(MODALITIES)}")


def with_pool(
    modality: str,
    *,
    patients: int | None = None,
    pool: int = 0,
    seed: int = 0,
    preset: str = "demo",
    null: bool = False,
    score_quantum: float | None = None,
) -> pd.DataFrame:
    """:func:`cohort_table` plus a cross-sectional pretraining pool of ``pool`` patients.

    The pool comes from the same generator: patients ``n .. n + pool - 1`` of the same seed
    (latents are keyed by patient index, so the ``n`` longitudinal patients are identical with
    and without a pool). Each pool patient keeps one visit, drawn at random, and is named
    ``Q000, Q001, ...``; a ``split`` column marks the pool ``pretrain`` and is empty for the
    longitudinal patients (drawn from the run's seed later). Without a pool the table is
    exactly :func:`cohort_table`'s.
    """
    if pool < 0:
        raise ConfigError(f"--pool {pool}: the pool size must be 0 or larger")
    n = resolve_preset(preset).patients if patients is None else int(patients)
    if pool == 0:
        return cohort_table(
            modality,
            patients=n,
            seed=seed,
            preset=preset,
            null=null,
            score_quantum=score_quantum,
        )
    table = cohort_table(
        modality,
        patients=n + pool,
        seed=seed,
        preset=preset,
        null=null,
        score_quantum=score_quantum,
    )
    longitudinal = table[table["patient_index"] < n].copy()
    longitudinal["patient_id"] = longitudinal["patient_index"].map(dict(enumerate(patient_ids(n))))
    rest = table[table["patient_index"] >= n]
    rng = keyed_rng(seed, modality, n, STREAM_POOL)
    visits = rest.groupby("patient_index")["visit"].max()
    chosen = {
        int(i): int(rng.integers(0, int(last) + 1))
        for i, last in zip(visits.index.to_numpy(), visits.to_numpy(), strict=True)
    }
    keep = rest["visit"].to_numpy() == rest["patient_index"].map(chosen).to_numpy()
    pooled = rest[keep].copy()
    width = max(3, len(str(pool - 1)))
    pooled["patient_id"] = [f"Q{i - n:0{width}d}" for i in pooled["patient_index"]]
    pooled["visit"] = 0  # their one visit
    longitudinal["split"] = ""
    pooled["split"] = "pretrain"
    return pd.concat([longitudinal, pooled], ignore_index=True)


def patient_ids(n: int) -> list[str]:
    """Zero-padded patient ids ``P000, P001, ...`` (wider when ``n`` > 1000)."""
    width = max(3, len(str(n - 1)))
    return [f"P{i:0{width}d}" for i in range(n)]


def _trajectory(rng: np.random.Generator, lat: LatentModel) -> tuple[np.ndarray, str, float]:
    """One patient's visit severities, trend name and drift per visit."""
    s0 = lat.baseline_low + (lat.baseline_high - lat.baseline_low) * rng.beta(
        lat.baseline_beta, lat.baseline_beta
    )
    n_visits = int(rng.choice(4, p=lat.visit_probs)) + 1
    trend = TRENDS[int(rng.choice(3, p=lat.trend_probs))]
    if trend == "stable":
        drift = float(rng.normal(0.0, lat.stable_drift_sd))
    else:
        sign = -1.0 if trend == "improving" else 1.0
        drift = sign * float(rng.uniform(lat.drift_low, lat.drift_high))
    steps = drift + rng.normal(0.0, lat.step_sd, size=n_visits - 1)
    # Clip after every step (not once at the end) so a patient at the floor stays plausible.
    sev = np.empty(n_visits)
    sev[0] = s0
    for v in range(1, n_visits):
        sev[v] = np.clip(sev[v - 1] + steps[v - 1], 0.0, 1.0)
    return sev, trend, drift


def _score(severity: np.ndarray, offset: float, noise: np.ndarray, model: ScoreModel) -> np.ndarray:
    """Apply the score mapping; returns quantised, clipped scores."""
    raw = model.intercept + model.slope * severity + offset + noise
    quantised = np.round(raw / model.quantum) * model.quantum
    return np.clip(quantised, model.low, model.high)


def cohort_table(
    modality: str,
    *,
    patients: int | None = None,
    seed: int = 0,
    preset: str = "demo",
    null: bool = False,
    latent: LatentModel = LATENT,
    score_quantum: float | None = None,
) -> pd.DataFrame:
    """Simulate the cohort's latent trajectories and scores without rendering any image.

    Args:
        modality: ``"lus"`` (one row per clip: several zones per visit) or ``"mri"`` (one row
            per volume).
        patients: Number of patients (>= 2); ``None`` uses the preset's.
        seed: Cohort seed (>= 0).
        preset: ``"tiny"``, ``"demo"`` or ``"bench"``.
        null: Control cohort: ``render_severity`` is the patient's (zone's) mean severity over
            its visits, so images carry no within-patient change; scores are unchanged.
        latent: Trajectory parameters.
        score_quantum: The step scores are rounded to (``None``: the modality's own, S/F 5,
            MMSE 1). A coarser step makes the score coarser and nothing else: every random
            draw, and so the latent trajectories and the images, stay those of the seed.

    Returns:
        One row per scan, ordered by patient, visit, zone, with columns ``patient_id``,
        ``patient_index``, ``visit`` (0-based int), ``zone`` / ``zone_index`` (LUS only),
        ``severity`` (visit-level latent), ``zone_severity`` (severity where the scan looks;
        equals ``severity`` for MRI), ``render_severity`` (what drives the image),
        ``patient_mean_severity``, ``trend``, ``drift``, ``score_offset``, ``score_clean``
        (mapping without offset, noise or quantisation) and ``score``.

    Raises:
        ConfigError: Unknown modality / preset, fewer than 2 patients or a negative seed.
    """
    check_modality(modality)
    spec = resolve_preset(preset)
    n = spec.patients if patients is None else int(patients)
    if n < 2:
        raise ConfigError(
            f"--patients {n}: a cohort needs at least 2 patients; pass --patients 2 or more"
        )
    if seed < 0:
        raise ConfigError(f"--seed {seed}: the seed must be 0 or larger")
    model = SCORE_MODELS[modality]
    if score_quantum is not None:
        if not (math.isfinite(score_quantum) and score_quantum > 0):
            raise ConfigError(f"--score-quantum {score_quantum}: give a step > 0")
        model = dataclasses.replace(model, quantum=float(score_quantum))
    zones = spec.zones if modality == "lus" else 1
    ids = patient_ids(n)
    columns: dict[str, list[object]] = {
        key: []
        for key in (
            "patient_id",
            "patient_index",
            "visit",
            "zone",
            "zone_index",
            "severity",
            "zone_severity",
            "render_severity",
            "patient_mean_severity",
            "trend",
            "drift",
            "score_offset",
            "score_clean",
            "score",
        )
    }
    for p in range(n):
        rng = keyed_rng(seed, modality, p, STREAM_LATENT)
        sev, trend, drift = _trajectory(rng, latent)
        n_visits = len(sev)
        offset = float(rng.normal(0.0, model.patient_sd))
        scores = _score(sev, offset, rng.normal(0.0, model.noise_sd, size=n_visits), model)
        clean = model.intercept + model.slope * sev
        if modality == "lus":
            zone_off = rng.normal(0.0, latent.zone_offset_sd, size=zones)
            zone_walk = np.cumsum(
                rng.normal(0.0, latent.zone_step_sd, size=(n_visits, zones)), axis=0
            )
            zone_walk -= zone_walk[0]  # the offset alone defines the zone at the first visit
            zone_sev = np.clip(sev[:, None] + zone_off[None, :] + zone_walk, 0.0, 1.0)
        else:
            zone_sev = sev[:, None]
        # Null: the image sees only the patient's (zone's) average state, never its change.
        render = np.broadcast_to(zone_sev.mean(axis=0), zone_sev.shape) if null else zone_sev
        for v in range(n_visits):
            for z in range(zones):
                columns["patient_id"].append(ids[p])
                columns["patient_index"].append(p)
                columns["visit"].append(v)
                columns["zone"].append(ZONE_NAMES[z] if modality == "lus" else None)
                columns["zone_index"].append(z)
                columns["severity"].append(float(sev[v]))
                columns["zone_severity"].append(float(zone_sev[v, z]))
                columns["render_severity"].append(float(render[v, z]))
                columns["patient_mean_severity"].append(float(sev.mean()))
                columns["trend"].append(trend)
                columns["drift"].append(drift)
                columns["score_offset"].append(offset)
                columns["score_clean"].append(float(clean[v]))
                columns["score"].append(float(scores[v]))
    table = pd.DataFrame(columns)
    if modality != "lus":
        table = table.drop(columns=["zone", "zone_index"])
    return table


def visit_scores(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (patient, visit) with its score and severity (zones collapsed).

    Args:
        table: Output of :func:`cohort_table`.

    Returns:
        Columns ``patient_id``, ``visit``, ``score``, ``severity``, ordered by patient, visit.
    """
    return (
        table.groupby(["patient_id", "visit"], sort=True)[["score", "severity"]]
        .first()
        .reset_index()
    )


def consecutive_changes(table: pd.DataFrame, column: str = "score") -> np.ndarray:
    """Later-minus-earlier change of ``column`` over every pair of consecutive visits.

    Args:
        table: Output of :func:`cohort_table` (or :func:`visit_scores`).
        column: ``"score"`` or ``"severity"``.

    Returns:
        (n_pairs,) float array.
    """
    visits = visit_scores(table)
    diffs = visits.groupby("patient_id", sort=True)[column].diff()
    return diffs.dropna().to_numpy(dtype=float)
