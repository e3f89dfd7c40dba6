"""The input descriptor (learner.data.descriptor): its length per input kind, determinism,
equality for equal inputs, and that it tells an image from its transpose (a view change)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from learner.data.dataset import InputSpec, ScanDataset
from learner.data.descriptor import QUANTILES, descriptor_length, input_descriptor


def _head(size: int = 32) -> torch.Tensor:
    """An off-centre, elongated bright ellipse on a dark background: (1, size, size)."""
    y, x = np.mgrid[:size, :size] / size
    image = (((x - 0.4) / 0.15) ** 2 + ((y - 0.5) / 0.35) ** 2 < 1).astype(np.float32)
    return torch.from_numpy(image)[None]


@pytest.mark.parametrize(
    ("kind", "shape", "length"),
    [
        ("image", (3, 1, 32, 32), 64 + 5),
        ("video", (3, 4, 1, 32, 32), 64 + 5 + 1),
        ("video", (3, 2, 4, 1, 32, 32), 64 + 5 + 1),  # two evaluation clips per scan
        ("slices", (3, 8, 1, 16, 16), 64 + 5 + 1),
        ("volume", (3, 1, 16, 16, 16), 64 + 5),
    ],
)
def test_length_per_kind(kind: str, shape: tuple[int, ...], length: int) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    found = input_descriptor(x, kind)
    assert found is not None
    assert found.shape == (3, length) == (3, descriptor_length(kind))
    assert found.dtype == torch.float32 and torch.isfinite(found).all()


def test_tabular_has_none_and_a_wrong_rank_is_refused() -> None:
    assert input_descriptor(torch.zeros(2, 7), "tabular") is None
    assert descriptor_length("tabular") == 0
    with pytest.raises(ValueError, match="image batch needs 4 dimensions"):
        input_descriptor(torch.zeros(2, 32, 32), "image")


def test_parts_are_layout_quantiles_and_motion() -> None:
    still = torch.zeros(1, 4, 1, 16, 16)
    still[:, :, :, :8] = 1.0  # top half bright, the same in every frame
    found = input_descriptor(still, "video")
    assert found is not None
    grid = found[0, :64].view(8, 8)
    assert (grid[:4] == 1).all() and (grid[4:] == 0).all()
    np.testing.assert_allclose(found[0, 64:69], np.quantile([0.0, 1.0] * 128, QUANTILES))
    assert found[0, 69] == 0  # no frame-to-frame change
    moving = still.clone()
    moving[:, 1::2] = 1.0 - moving[:, 1::2]  # every other frame inverted
    assert input_descriptor(moving, "video")[0, 69] == 1.0  # type: ignore[index]


def test_deterministic_equal_for_equal_input_and_sees_a_transpose(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Through the dataset's evaluation items (what embed_frame feeds the encoder): the same
    file twice gives the same descriptor, run after run; its transpose (the head turned on
    its side) gives another."""
    image = _head()[0].numpy()
    paths = []
    for name, array in (("a", image), ("b", image.copy()), ("t", image.T.copy())):
        np.save(tmp_path / f"{name}.npy", array)
        paths.append(str(tmp_path / f"{name}.npy"))
    frame = pd.DataFrame({"patient_id": ["a", "b", "t"], "path": paths, "score": 1.0})
    dataset = ScanDataset(
        frame,
        input=InputSpec(kind="image", frames=1, size=32, channels=1),
        train=False,
        cache=None,
        score_range=(0.0, 2.0),
        patient_codes={"a": 0, "b": 1, "t": 2},
    )
    x = torch.stack([dataset[i]["x"] for i in range(3)])
    first, again = input_descriptor(x, "image"), input_descriptor(x.clone(), "image")
    assert first is not None and again is not None
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=0)
    # Same pixels, so the same intensity quantiles; the layout differs.
    torch.testing.assert_close(first[0, 64:], first[2, 64:])
    assert (first[0, :64] - first[2, :64]).abs().max() > 0.5
