"""Synthetic lung-ultrasound clips: a convex-sector B-mode look driven by a latent severity.

Geometry. Pixels are placed in image-height units (``y`` down from the skin line in [0, 1],
``x`` lateral in [-0.5, 0.5]); the convex probe has a virtual apex ``apex`` above the image,
so every pixel has a beam angle ``phi`` and a depth along the beam ``r``. Beam-aligned
features (B-lines, rib shadows, A-line reverberations) are functions of ``phi`` and ``r``;
body-aligned features (fascia, pleura) of the body-frame depth, which the probe tilt rotates.

What the severity (in [0, 1]) changes, and nothing else does:

- A-lines (reverberations of the pleura at 2, 3, 4, 5 times its depth) fade as ``(1 - s)^1.5``.
- B-lines (vertical comet tails along beams, from the pleura to the bottom, flickering):
  each zone has 10 candidate B-lines, each appearing above its own severity threshold, with
  brightness growing with severity; a confluent "white lung" haze above s ~ 0.6.
- The pleural line thickens and fragments.
- Above s = 0.55 a subpleural consolidation: a hypoechoic, tissue-like patch with an
  irregular (shred) lower border and bright air-bronchogram spots, growing with severity.

Nuisance (varies between patients far more than the disease changes between visits):
display depth, chest-wall thickness and echogenicity, fascia, convex radius, sector angle,
gain, attenuation, display gamma, speckle size, and per zone the probe tilt / lateral shift,
rib positions and widths, B-line positions. Each visit adds acquisition jitter (probe
shift and tilt, gain, respiratory phase, a fresh speckle realisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from learner.data.synthetic.common import (
    STREAM_ACQUISITION,
    STREAM_NUISANCE,
    STREAM_ZONE,
    Preset,
    keyed_rng,
    nuisance_rng,
)

N_BLINES = 10
# Angle lookup grid (radians) for the features that slide with the lung.
_GRID_HALF = 1.6
_GRID_SIZE = 2048
CONSOLIDATION_ONSET = 0.55


@dataclass(frozen=True)
class LusPatient:
    """Patient-level nuisance of the LUS cohort (shared by all zones and visits).

    Attributes:
        apex: Virtual apex distance above the image (convex radius), image heights.
        half_angle: Sector half-angle, radians.
        depth_cm: Displayed depth in cm (zoom).
        wall_cm: Skin-to-pleura depth in cm (chest-wall thickness).
        wall_echo: Chest-wall echogenicity.
        fascia: (n, 2) fascia lines as (fraction of wall depth, brightness).
        gain: Overall gain.
        attenuation: Attenuation per cm (exponential).
        gamma: Display compression exponent.
        speckle_contrast: Exponent on the speckle amplitude (log compression shrinks it).
        speckle_sigma: Speckle grain size in pixels (lateral; axial is 0.6x).
        sliding_amp: Lung-sliding amplitude, radians of beam angle.
        sliding_period: Respiratory period in frames.
    """

    apex: float
    half_angle: float
    depth_cm: float
    wall_cm: float
    wall_echo: float
    fascia: np.ndarray
    gain: float
    attenuation: float
    gamma: float
    speckle_contrast: float
    speckle_sigma: float
    sliding_amp: float
    sliding_period: float


@dataclass(frozen=True)
class LusZone:
    """Zone-level nuisance: where the probe sits and what lies under it.

    Attributes:
        tilt: Probe rotation relative to the body, radians.
        shift: Lateral probe offset, image widths.
        ribs: (n, 2) rib beam angles and angular half-widths, radians.
        rib_drop_cm: How far the rib surface sits above the pleura, cm.
        bline_phi: (N_BLINES,) candidate B-line beam angles, radians.
        bline_threshold: (N_BLINES,) severity at which each B-line appears.
        bline_width: (N_BLINES,) angular half-widths, radians.
        bline_flicker: (N_BLINES, 2) flicker period (frames) and phase.
        pleura_texture: (n, 3) Fourier terms (frequency, amplitude, phase) of the pleura's
            lateral texture.
        fragment_phase: (n, 2) Fourier terms (frequency, phase) of where the pleura breaks.
        consolidation_phi: Beam angle of the consolidation centre, radians.
        shred: (n, 3) Fourier terms of the consolidation's irregular lower border.
        bronchograms: (n, 2) air-bronchogram positions (angle fraction, depth fraction).
    """

    tilt: float
    shift: float
    ribs: np.ndarray
    rib_drop_cm: float
    bline_phi: np.ndarray
    bline_threshold: np.ndarray
    bline_width: np.ndarray
    bline_flicker: np.ndarray
    pleura_texture: np.ndarray
    fragment_phase: np.ndarray
    consolidation_phi: float
    shred: np.ndarray
    bronchograms: np.ndarray


def draw_patient(rng: np.random.Generator) -> LusPatient:
    """Draw one patient's nuisance parameters."""
    n_fascia = int(rng.integers(1, 4))
    return LusPatient(
        apex=float(rng.uniform(0.25, 0.6)),
        half_angle=float(rng.uniform(0.38, 0.62)),
        depth_cm=float(rng.uniform(7.0, 13.0)),
        wall_cm=float(rng.uniform(0.8, 2.2)),
        wall_echo=float(rng.uniform(0.15, 0.35)),
        fascia=np.column_stack(
            [rng.uniform(0.2, 0.85, n_fascia), rng.uniform(0.15, 0.6, n_fascia)]
        ),
        gain=float(np.exp(rng.normal(0.0, 0.25))),
        attenuation=float(rng.uniform(0.03, 0.12)),
        gamma=float(rng.uniform(0.7, 1.0)),
        speckle_contrast=float(rng.uniform(0.3, 0.5)),
        speckle_sigma=float(rng.uniform(0.6, 1.5)),
        sliding_amp=float(rng.uniform(0.01, 0.04)),
        sliding_period=float(rng.uniform(10.0, 30.0)),
    )


def draw_zone(rng: np.random.Generator, patient: LusPatient) -> LusZone:
    """Draw one zone's nuisance (probe placement, ribs, B-line sites) for ``patient``.

    Under a nuisance strength below 1 (:func:`~learner.data.synthetic.common.nuisance_rng`)
    the probe placement, ribs and textures shrink toward their typical values, but the
    B-line sites and thresholds and the bronchogram sites are drawn as always: they are how
    severity shows, not nuisance.
    """
    raw = getattr(rng, "raw", rng)
    half = patient.half_angle
    # The rib count comes from the layout as drawn, so that the draws after it stay in step
    # under any nuisance strength; the ribs' positions then shrink with the rest.
    spacing = float(raw.uniform(0.9, 1.6)) * half
    first = float(raw.uniform(-half - spacing, -half))
    keep = np.abs(first + spacing * np.arange(5)) < half + 0.2
    if hasattr(rng, "pull"):
        first = rng.pull(first, -half - spacing / 2.0)
        spacing = rng.pull(spacing / half, 1.25) * half
    centres = (first + spacing * np.arange(5))[keep]
    ribs = np.column_stack([centres, rng.uniform(0.08, 0.16, len(centres))])
    n_tex = 6
    return LusZone(
        tilt=float(rng.normal(0.0, 0.08)),
        shift=float(rng.uniform(-0.08, 0.08)),
        ribs=ribs,
        rib_drop_cm=float(rng.uniform(0.2, 0.5)),
        bline_phi=raw.uniform(-0.85, 0.85, N_BLINES) * half,
        # Sorted thresholds spread over the severity range: the B-line count grows steadily.
        bline_threshold=np.sort(raw.uniform(0.02, 1.0, N_BLINES)),
        bline_width=rng.uniform(0.008, 0.02, N_BLINES),
        bline_flicker=np.column_stack(
            [rng.uniform(4.0, 12.0, N_BLINES), rng.uniform(0.0, 2 * np.pi, N_BLINES)]
        ),
        pleura_texture=np.column_stack(
            [
                rng.uniform(10.0, 60.0, n_tex),
                rng.uniform(0.3, 1.0, n_tex),
                rng.uniform(0.0, 2 * np.pi, n_tex),
            ]
        ),
        fragment_phase=np.column_stack([rng.uniform(6.0, 25.0, 4), rng.uniform(0.0, 2 * np.pi, 4)]),
        consolidation_phi=float(rng.uniform(-0.5, 0.5)) * half,
        shred=np.column_stack(
            [rng.uniform(8.0, 30.0, 4), rng.uniform(0.3, 1.0, 4), rng.uniform(0.0, 2 * np.pi, 4)]
        ),
        bronchograms=np.column_stack([raw.uniform(-0.8, 0.8, 6), raw.uniform(0.2, 0.8, 6)]),
    )


def _fourier(theta: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Sum of cosines ``sum a cos(f theta + p)`` normalised to [-1, 1] (shape of ``theta``)."""
    freq, amp, phase = terms[:, 0], terms[:, 1], terms[:, 2]
    total = np.zeros_like(theta)
    for f, a, p in zip(freq, amp, phase, strict=True):
        total += a * np.cos(f * theta + p)
    return total / amp.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def render_clip(
    severity: float,
    patient: LusPatient,
    zone: LusZone,
    *,
    frames: int,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render one B-mode clip.

    Args:
        severity: Local disease severity in [0, 1].
        patient: Patient nuisance.
        zone: Zone nuisance.
        frames: Number of frames T.
        size: Height = width in pixels.
        rng: Acquisition generator (visit jitter, respiratory phase, speckle).

    Returns:
        (T, size, size) uint8 grey clip; 0 outside the sector.
    """
    s = float(np.clip(severity, 0.0, 1.0))
    px = 1.0 / size  # one pixel in image units: edges are ~1 px soft to avoid aliasing
    # Acquisition jitter of this visit: small next to the between-patient spread.
    shift = zone.shift + rng.normal(0.0, 0.015)
    tilt = zone.tilt + rng.normal(0.0, 0.02)
    gain = patient.gain * float(np.exp(rng.normal(0.0, 0.06)))
    resp_phase = float(rng.uniform(0.0, 2 * np.pi))
    flicker_jitter = rng.uniform(0.0, 2 * np.pi, N_BLINES)

    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    y = coords[:, None]
    x = coords[None, :] - 0.5 - shift
    dy = y + patient.apex
    phi = np.arctan2(x, dy)  # (H, W) beam angle in the probe frame
    rho = np.hypot(x, dy)
    r = rho - patient.apex  # depth along the beam
    sector = _sigmoid((patient.half_angle - np.abs(phi)) / (px / (1 + patient.apex)))
    depth_b = rho * np.cos(phi + tilt) - patient.apex  # body-frame depth below the skin
    wall = patient.wall_cm / patient.depth_cm
    r_pl = (patient.apex + wall) / np.cos(phi + tilt) - patient.apex  # pleura along each beam
    u = r - r_pl  # depth below the pleura along the beam
    below = _sigmoid(u / px)

    # Everything that slides with the lung depends on the beam angle only: tabulate it once on
    # a fine angle grid and look it up per frame (far cheaper than per-pixel cosines).
    t = np.arange(frames, dtype=np.float64)
    slide = patient.sliding_amp * np.sin(2 * np.pi * t / patient.sliding_period + resp_phase)
    grid = np.linspace(-_GRID_HALF, _GRID_HALF, _GRID_SIZE)
    pos = (phi[None] - slide[:, None, None] + _GRID_HALF) / (grid[1] - grid[0])
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, _GRID_SIZE - 2)
    w1 = (pos - i0).astype(np.float32)
    rows = np.arange(frames)[:, None, None] * _GRID_SIZE

    def lookup(table: np.ndarray) -> np.ndarray:
        """(G,) or (T, G) angle table -> (T, H, W), linearly interpolated at phi - slide."""
        flat = np.broadcast_to(table, (frames, _GRID_SIZE)).ravel()
        idx = rows + i0
        return flat[idx] * (1.0 - w1) + flat[idx + 1] * w1

    # Chest wall: muscle/fat echo with bright horizontal fascia.
    fascia = np.zeros_like(r)
    for frac, amp in patient.fascia:
        fascia += amp * np.exp(-0.5 * ((depth_b - frac * wall) / (1.2 * px)) ** 2)
    chest = patient.wall_echo * (1.0 + fascia)

    # Pleura: a bright line that thickens and breaks up with severity, textured so that its
    # lateral motion (lung sliding) is visible.
    pw = (0.9 + 1.6 * s) * px
    pleura_profile = np.exp(-0.5 * ((depth_b - wall) / pw) ** 2)
    texture = 0.75 + 0.25 * _fourier(grid, zone.pleura_texture)
    fragments = np.zeros_like(grid)
    for f, p in zone.fragment_phase:
        fragments += np.cos(f * grid + p) / len(zone.fragment_phase)
    # The broken fraction of the line grows with severity (none when healthy).
    gaps = _sigmoid((1.2 * s - 1.0 - fragments) / 0.1)
    pleura = 0.95 * pleura_profile[None] * lookup(texture * (1.0 - 0.75 * gaps))

    # B-lines: comet tails along beams from the pleura to the bottom, flickering.
    present = _sigmoid((s - zone.bline_threshold) / 0.03)  # (K,)
    lateral = np.exp(
        -0.5 * ((grid[None, :] - zone.bline_phi[:, None]) / zone.bline_width[:, None]) ** 2
    )  # (K, G)
    period, phase = zone.bline_flicker[:, 0], zone.bline_flicker[:, 1]
    flicker = 0.7 + 0.3 * np.sin(2 * np.pi * t[:, None] / period + phase + flicker_jitter)
    brightness = flicker * (present * (0.45 + 0.4 * s))  # (T, K)
    tail = below * (0.8 + 0.2 * np.exp(-u / 0.4))
    blines = np.minimum(lookup(brightness @ lateral), 1.1) * tail[None]
    coverage = lookup(np.clip(present @ lateral, 0.0, 1.0))

    # A-lines: reverberations of the pleura at multiples of its depth, fading with severity.
    alines = np.zeros_like(r)
    for k in range(2, 6):
        width = pw * np.sqrt(k)
        alines += 0.55 * 0.65 ** (k - 2) * np.exp(-0.5 * ((r - k * r_pl) / width) ** 2)
    alines = alines * (1.0 - s) ** 1.5

    haze = 0.15 * float(_sigmoid(np.array((s - 0.65) / 0.06))) * tail
    lung = 0.05 + (alines[None] * (1.0 - coverage)) + blines + haze[None]
    image = (1.0 - below)[None] * chest[None] + below[None] * lung + pleura

    # Subpleural consolidation: hypoechoic tissue-like patch under a broken pleura.
    amount = (s - CONSOLIDATION_ONSET) / (1.0 - CONSOLIDATION_ONSET)
    if amount > 0:
        half_width = patient.half_angle * (0.12 + 0.4 * amount)
        patch = _sigmoid((half_width - np.abs(phi - zone.consolidation_phi)) / 0.02)
        depth = (0.06 + 0.28 * amount) * (1.0 + 0.3 * _fourier(phi, zone.shred))
        inside = patch * below * _sigmoid((depth - u) / (1.5 * px))
        tissue = 0.34 + 0.06 * np.cos(40 * phi) * np.cos(60 * u)
        for a, d in zone.bronchograms:
            spot = np.exp(
                -0.5
                * (
                    ((phi - zone.consolidation_phi - a * half_width) / 0.02) ** 2
                    + ((u - d * depth) / (1.2 * px)) ** 2
                )
            )
            tissue = tissue + 0.6 * spot
        shred_edge = 0.55 * patch * np.exp(-0.5 * ((u - depth) / (1.2 * px)) ** 2)
        image = image * (1.0 - inside)[None] + (inside * tissue + shred_edge)[None]
        image = image - 0.6 * (patch * pleura_profile)[None] * pleura

    # Ribs: a bright curved surface above the pleura and an acoustic shadow below it.
    drop = zone.rib_drop_cm / patient.depth_cm
    for centre, half_width in zone.ribs:
        rel = (phi - centre) / half_width
        window = _sigmoid((1.0 - np.abs(rel)) / 0.08)
        r_rib = r_pl - drop * np.sqrt(np.clip(1.0 - rel**2, 0.0, 1.0))
        shadow = window * _sigmoid((r - r_rib) / px)
        surface = 0.9 * window * np.exp(-0.5 * ((r - r_rib) / (1.2 * px)) ** 2)
        image = image * (1.0 - 0.93 * shadow)[None] + surface[None]

    # Attenuation with depth, then multiplicative speckle (Rayleigh amplitude of a smoothed
    # complex Gaussian field; smoothing over time makes it temporally correlated).
    image = image * np.exp(-patient.attenuation * r * patient.depth_cm)[None]
    sig = patient.speckle_sigma
    field = rng.standard_normal((2, frames, size, size), dtype=np.float32)
    field = gaussian_filter(field, sigma=(0.0, 1.0, 0.6 * sig, sig), mode="wrap")
    speckle = np.hypot(field[0], field[1]) ** patient.speckle_contrast
    speckle /= speckle.mean()
    out = np.clip(gain * image * speckle * sector[None], 0.0, 1.0) ** patient.gamma
    return np.round(out * 255.0).astype(np.uint8)


def render_scan(
    *,
    seed: int,
    patient_index: int,
    visit: int,
    zone_index: int,
    severity: float,
    preset: Preset,
    nuisance: float = 1.0,
) -> np.ndarray:
    """Render the clip of one cohort row, drawing its nuisance from the keyed generators.

    The nuisance depends only on (seed, patient, zone) and the acquisition on (seed, patient,
    visit, zone), so the null cohort and the ordinary cohort of a seed differ only in
    ``severity``.

    Args:
        seed: Cohort seed.
        patient_index: 0-based patient index.
        visit: 0-based visit index.
        zone_index: 0-based zone index.
        severity: The severity that drives the image (``render_severity``).
        preset: Sizes.
        nuisance: Spread of the patient and zone nuisance between patients (1 = as drawn,
            0 = the same for all; :class:`~learner.data.synthetic.common.ShrunkNuisance`).

    Returns:
        (T, H, W) uint8 clip.
    """
    patient = draw_patient(
        nuisance_rng(keyed_rng(seed, "lus", patient_index, STREAM_NUISANCE), nuisance)
    )
    zone = draw_zone(
        nuisance_rng(keyed_rng(seed, "lus", patient_index, STREAM_ZONE, zone_index), nuisance),
        patient,
    )
    acquisition = keyed_rng(seed, "lus", patient_index, STREAM_ACQUISITION, visit, zone_index)
    return render_clip(
        severity, patient, zone, frames=preset.frames, size=preset.frame_size, rng=acquisition
    )
