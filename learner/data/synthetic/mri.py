"""Synthetic T1-weighted brain volumes whose atrophy follows a latent severity.

The head is built from soft-edged implicit shapes on a voxel grid spanning [-1, 1]^3 (axes
x: left->right, y: posterior->anterior, z: inferior->superior, i.e. RAS voxel order): scalp,
skull with bright marrow, subarachnoid CSF, a folded cortical ribbon (grey matter) over white
matter, deep grey nuclei, two lateral ventricles and two hippocampi inside CSF-filled cavities.
Edges are sigmoids about one voxel wide, so small volumes show partial-volume blur, not
aliasing.

What the severity (in [0, 1]) changes, and nothing else does (atrophy):

- ventricles grow (radii x ``1 + 1.2 s``);
- the cortex thins (``x (1 - 0.35 s)``), the brain pulls away from the skull (CSF gap
  ``+ 0.05 s``) and sulci widen;
- the hippocampi shrink (radii x ``1 - 0.4 s``) inside their fixed cavities, which fill
  with CSF.

Nuisance (between patients, larger than the atrophy between visits): head size and shape,
scalp / skull / cortex thickness, baseline ventricle and hippocampus size, folding pattern,
pose (rotation up to a few degrees, translation), tissue contrast, a smooth multiplicative
bias field, overall intensity scale and noise level. Each visit adds acquisition jitter
(small pose change, intensity scale) and a fresh Rician noise realisation.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from learner.data.synthetic.common import (
    STREAM_ACQUISITION,
    STREAM_NUISANCE,
    Preset,
    keyed_rng,
    nuisance_rng,
)
from learner.io import atomic_write_bytes

# Anatomical landmarks in head coordinates (fractions of the half field of view).
_HEAD_RADII = np.array([0.70, 0.86, 0.78])
_VENTRICLE_CENTRE = np.array([0.085, 0.0, 0.12])
_VENTRICLE_RADII = np.array([0.055, 0.24, 0.085])
_THALAMUS_CENTRE = np.array([0.1, -0.08, -0.02])
_THALAMUS_RADII = np.array([0.08, 0.12, 0.08])
_HIPPO_CENTRE = np.array([0.27, -0.12, -0.2])
_HIPPO_RADII = np.array([0.065, 0.17, 0.06])


@dataclass(frozen=True)
class MriAnatomy:
    """Patient-level nuisance of the MRI cohort (shared by all visits).

    Attributes:
        radii: (3,) head ellipsoid radii.
        rotation: (3,) rotation angles about x, y, z, radians.
        translation: (3,) head offset.
        scalp: Scalp thickness.
        skull: Skull thickness.
        csf_gap: Subarachnoid CSF thickness when healthy.
        cortex: Cortical thickness when healthy.
        ventricle_scale: Baseline ventricle size factor.
        hippocampus_scale: Baseline hippocampus size factor.
        folding: (4, 2) frequencies and phases of the gyral folding pattern.
        sulcal_threshold: Higher = narrower sulci when healthy.
        contrast: (6,) intensities of scalp, cortical bone, marrow, CSF, grey and white matter.
        bias: (6,) coefficients of the log bias field on x, y, z, x^2, y^2, z^2.
        scale: Scanner intensity scale.
        noise: Rician noise sd relative to white matter.
    """

    radii: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    scalp: float
    skull: float
    csf_gap: float
    cortex: float
    ventricle_scale: float
    hippocampus_scale: float
    folding: np.ndarray
    sulcal_threshold: float
    contrast: np.ndarray
    bias: np.ndarray
    scale: float
    noise: float


def draw_anatomy(rng: np.random.Generator) -> MriAnatomy:
    """Draw one patient's anatomy and scanner nuisance."""
    wm = rng.uniform(0.85, 0.95)
    return MriAnatomy(
        radii=_HEAD_RADII * rng.uniform(0.88, 1.04) * np.exp(rng.normal(0.0, 0.04, 3)),
        rotation=rng.normal(0.0, 0.06, 3),
        translation=rng.normal(0.0, 0.03, 3),
        scalp=float(rng.uniform(0.035, 0.055)),
        skull=float(rng.uniform(0.045, 0.07)),
        csf_gap=float(rng.uniform(0.012, 0.03)),
        cortex=float(rng.uniform(0.08, 0.11)),
        ventricle_scale=float(rng.uniform(0.7, 1.35)),
        hippocampus_scale=float(rng.uniform(0.85, 1.15)),
        folding=np.column_stack([rng.uniform(14.0, 24.0, 4), rng.uniform(0.0, 2 * np.pi, 4)]),
        sulcal_threshold=float(rng.uniform(0.5, 0.7)),
        contrast=np.array(
            [
                rng.uniform(0.6, 0.8),  # scalp (fat)
                rng.uniform(0.05, 0.15),  # cortical bone
                rng.uniform(0.35, 0.55),  # marrow
                rng.uniform(0.12, 0.2),  # CSF
                wm * rng.uniform(0.55, 0.65),  # grey matter
                wm,  # white matter
            ]
        ),
        bias=rng.normal(0.0, 0.08, 6),
        scale=float(rng.uniform(700.0, 1400.0)),
        noise=float(rng.uniform(0.015, 0.035)),
    )


def _rotation(angles: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix from angles about x, y, z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ellipsoid(p: np.ndarray, centre: np.ndarray, radii: np.ndarray, edge: float) -> np.ndarray:
    """Soft membership (D, H, W) of an ellipsoid; ``p`` is (3, D, H, W) float32."""
    # Python floats keep the arithmetic in float32 (numpy scalars would promote to float64).
    c, r = centre.tolist(), radii.tolist()
    rho = np.sqrt(sum(((p[a] - c[a]) / r[a]) ** 2 for a in range(3)))
    return _sigmoid((1.0 - rho) * (min(r) / edge))


def _paint(image: np.ndarray, member: np.ndarray, value: float) -> np.ndarray:
    """Overwrite ``image`` with ``value`` where ``member`` (soft) is 1."""
    return image * (1.0 - member) + value * member


def render_volume(
    severity: float, anatomy: MriAnatomy, *, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Render one T1-like volume.

    Args:
        severity: Atrophy severity in [0, 1].
        anatomy: Patient nuisance.
        size: Voxels per side (D = H = W).
        rng: Acquisition generator (pose jitter, intensity scale, noise).

    Returns:
        (size, size, size) float32 volume in scanner units (>= 0), axes x, y, z.
    """
    s = float(np.clip(severity, 0.0, 1.0))
    edge = 0.25 * 2.0 / size  # sigmoid scale: edges ~1 voxel wide (partial volume)
    rot = _rotation(anatomy.rotation + rng.normal(0.0, 0.015, 3)).astype(np.float32)
    shift = (anatomy.translation + rng.normal(0.0, 0.01, 3)).astype(np.float32)
    scale = anatomy.scale * float(np.exp(rng.normal(0.0, 0.03)))

    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"))  # (3, D, H, W) scanner coords
    # Head coordinates: undo the head's pose (rot is orthonormal, so its inverse is rot.T).
    p = (rot.T @ (grid.reshape(3, -1) - shift[:, None])).reshape(grid.shape)
    x, y, z = p
    # Mirror x so one set of landmarks describes both hemispheres.
    pm = np.stack([np.abs(x), y, z])

    ra, rb, rc = anatomy.radii.tolist()
    rho = np.sqrt((x / ra) ** 2 + (y / rb) ** 2 + (z / rc) ** 2)
    depth = (1.0 - rho) * ((ra + rb + rc) / 3.0)  # ~ distance below the scalp surface

    gap = anatomy.csf_gap + 0.05 * s
    cortex = anatomy.cortex * (1.0 - 0.35 * s)
    bounds = np.cumsum([0.0, anatomy.scalp, anatomy.skull, gap, cortex]).tolist()
    c_scalp, c_bone, c_marrow, c_csf, c_gm, c_wm = anatomy.contrast.tolist()

    mid_skull = bounds[1] + 0.5 * anatomy.skull
    skull = c_bone + c_marrow * np.exp(-0.5 * ((depth - mid_skull) / (0.2 * anatomy.skull)) ** 2)
    # Gyral folding: a smooth pseudo-random pattern in [0, 1] (mean of warped cosines).
    fold = np.zeros_like(x)
    for axis_idx, (freq, phase) in enumerate(anatomy.folding.tolist()):
        warp = 1.5 * np.sin((0.5 * freq) * p[(axis_idx + 1) % 3])
        fold += np.cos(freq * p[axis_idx % 3] + phase + warp)
    fold = 0.5 + fold / (2.0 * len(anatomy.folding))
    # The grey/white boundary follows the folds (gyri); sulci are CSF clefts in the ribbon
    # where the pattern exceeds a threshold that atrophy lowers (sulci widen).
    bounds[4] += 0.5 * cortex * (fold - 0.5)
    inside = [_sigmoid((depth - b) / edge) for b in bounds]  # nested: head, skull, CSF, GM, WM
    sulci = _sigmoid((fold - (anatomy.sulcal_threshold + 0.15 - 0.25 * s)) / 0.04)
    ribbon = c_gm * (1.0 - sulci) + c_csf * sulci

    image = (
        c_scalp * (inside[0] - inside[1])
        + skull * (inside[1] - inside[2])
        + c_csf * (inside[2] - inside[3])
        + ribbon * (inside[3] - inside[4])
        + c_wm * inside[4]
    )
    image = _paint(image, _ellipsoid(pm, _THALAMUS_CENTRE, _THALAMUS_RADII, edge), c_gm)
    vent_radii = _VENTRICLE_RADII * anatomy.ventricle_scale * (1.0 + 1.2 * s)
    image = _paint(image, _ellipsoid(pm, _VENTRICLE_CENTRE, vent_radii, edge), c_csf)
    cavity = _HIPPO_RADII * anatomy.hippocampus_scale * 1.1
    image = _paint(image, _ellipsoid(pm, _HIPPO_CENTRE, cavity, edge), c_csf)
    hippo = _HIPPO_RADII * anatomy.hippocampus_scale * (1.0 - 0.4 * s)
    image = _paint(image, _ellipsoid(pm, _HIPPO_CENTRE, hippo, edge), c_gm)

    # Smooth multiplicative bias field in scanner coordinates (it belongs to the coil).
    gx, gy, gz = grid
    b = anatomy.bias.tolist()
    bias = np.exp(b[0] * gx + b[1] * gy + b[2] * gz + b[3] * gx**2 + b[4] * gy**2 + b[5] * gz**2)
    signal = image * bias
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    noise = rng.standard_normal((2, size, size, size), dtype=np.float32) * (anatomy.noise * c_wm)
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    return (magnitude * scale).astype(np.float32)


def render_scan(
    *,
    seed: int,
    patient_index: int,
    visit: int,
    severity: float,
    preset: Preset,
    nuisance: float = 1.0,
) -> np.ndarray:
    """Render the volume of one cohort row, drawing its nuisance from the keyed generators.

    Args:
        seed: Cohort seed.
        patient_index: 0-based patient index.
        visit: 0-based visit index.
        severity: The severity that drives the image (``render_severity``).
        preset: Sizes.
        nuisance: Spread of the anatomy between patients (1 = as drawn, 0 = the same head
            for all; :class:`~learner.data.synthetic.common.ShrunkNuisance`).

    Returns:
        (D, H, W) float32 volume in scanner units.
    """
    anatomy = draw_anatomy(
        nuisance_rng(keyed_rng(seed, "mri", patient_index, STREAM_NUISANCE), nuisance)
    )
    acquisition = keyed_rng(seed, "mri", patient_index, STREAM_ACQUISITION, visit)
    return render_volume(severity, anatomy, size=preset.volume_size, rng=acquisition)


def write_nifti(path: Path, volume: np.ndarray, *, voxel_mm: float) -> None:
    """Write a volume as a gzipped NIfTI-1 file (int16, RAS affine, mm), atomically.

    The gzip header carries no timestamp, so the same volume always gives the same bytes.

    Args:
        path: Target ``.nii.gz`` file; its folder must exist.
        volume: (D, H, W) array in scanner units, values in [0, 32767].
        voxel_mm: Isotropic voxel spacing in mm.
    """
    data = np.clip(np.round(volume), 0, np.iinfo(np.int16).max).astype(np.int16)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -(np.array(data.shape) - 1) / 2.0 * voxel_mm  # centre the volume at 0 mm
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))
