"""The pair objectives against plain loop-over-pairs references, gradcheck, and edge cases."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import torch
from torch import Tensor

from learner.losses import functional as fn

NAN = float("nan")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add scheduling stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# (name, function, hyperparameters): every objective and every option it has. The thresholds
# sit off the 0.05 score grid so that float32 and float64 agree on which side each pair falls.
Objective = Callable[..., fn.PairLoss]
Vecs = list[list[float]]
Floats = list[float]
Ints = list[int]
Ref = tuple[float, int, int]  # loss, unordered positive pairs, unordered negative pairs

CASES: list[tuple[str, Objective, dict[str, Any]]] = [
    ("contrastive", fn.contrastive_loss, {"tau": 0.12, "margin": 0.5}),
    ("contrastive", fn.contrastive_loss, {"tau": 0.33, "margin": 1.2}),
    *[
        (
            "weighted",
            fn.weighted_contrastive_loss,
            {"tau": 0.22, "margin": 0.7, "weighting": w, "alpha": 3.0, "partition": p},
        )
        for w in ("linear", "exp", "log")
        for p in ("threshold", "soft")
    ],
    ("yaware", fn.yaware_loss, {"temperature": 0.1, "sigma": 0.1}),
    ("yaware", fn.yaware_loss, {"temperature": 0.5, "sigma": 0.3}),
    ("rnc", fn.rnc_loss, {"temperature": 2.0}),
    ("rnc", fn.rnc_loss, {"temperature": 0.5}),
]
CASE_IDS = [f"{name}-" + "-".join(str(v) for v in hp.values()) for name, _, hp in CASES]


# -- plain Python references: one pair at a time, no tensors -------------------------------------
def _cos_dist(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return 1.0 - dot / (na * nb)


def _l2(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _valid_pairs(y: list[float], pid: list[int]) -> list[tuple[int, int]]:
    """Ordered inter-patient pairs of labelled scans."""
    n = len(y)
    return [
        (i, j)
        for i in range(n)
        for j in range(n)
        if pid[i] != pid[j] and not math.isnan(y[i]) and not math.isnan(y[j])
    ]


def _weight(delta: float, weighting: str, alpha: float) -> float:
    if weighting == "linear":
        return delta
    if weighting == "exp":
        return (math.exp(alpha * delta) - 1.0) / (math.exp(alpha) - 1.0)
    return math.log(1.0 + alpha * delta) / math.log(1.0 + alpha)


def _ref_contrastive(u: Vecs, y: Floats, pid: Ints, *, tau: float, margin: float) -> Ref:
    pos, neg = [], []
    for i, j in _valid_pairs(y, pid):
        d = _cos_dist(u[i], u[j])
        if abs(y[i] - y[j]) <= tau:
            pos.append(d * d)
        else:
            neg.append(max(0.0, margin - d) ** 2)
    loss = (sum(pos) / len(pos) if pos else 0.0) + (sum(neg) / len(neg) if neg else 0.0)
    return loss, len(pos) // 2, len(neg) // 2


def _ref_weighted(
    u: Vecs,
    y: Floats,
    pid: Ints,
    *,
    tau: float,
    margin: float,
    weighting: str,
    alpha: float,
    partition: str,
) -> Ref:
    pairs = _valid_pairs(y, pid)
    if partition == "soft":
        total = 0.0
        for i, j in pairs:
            d, w = _cos_dist(u[i], u[j]), _weight(abs(y[i] - y[j]), weighting, alpha)
            total += (1 - w) * d * d + w * max(0.0, margin - d) ** 2
        loss = total / len(pairs) if pairs else 0.0
        return loss, len(pairs) // 2, len(pairs) // 2
    pos_num = pos_den = neg_num = neg_den = 0.0
    n_pos = n_neg = 0
    for i, j in pairs:
        delta = abs(y[i] - y[j])
        d, w = _cos_dist(u[i], u[j]), _weight(delta, weighting, alpha)
        if delta <= tau:
            pos_num += (1 - w) * d * d
            pos_den += 1 - w
            n_pos += 1
        else:
            neg_num += w * max(0.0, margin - d) ** 2
            neg_den += w
            n_neg += 1
    loss = (pos_num / pos_den if pos_den else 0.0) + (neg_num / neg_den if neg_den else 0.0)
    return loss, n_pos // 2, n_neg // 2


def _ref_yaware(u: Vecs, y: Floats, pid: Ints, *, temperature: float, sigma: float) -> Ref:
    pairs = _valid_pairs(y, pid)
    anchor_losses = []
    for i in range(len(y)):
        js = [j for a, j in pairs if a == i]
        if not js:
            continue
        s = {j: (1.0 - _cos_dist(u[i], u[j])) / temperature for j in js}
        top = max(s.values())
        lse = top + math.log(sum(math.exp(v - top) for v in s.values()))
        kernel = {j: math.exp(-((y[i] - y[j]) ** 2) / (2 * sigma**2)) for j in js}
        norm = sum(kernel.values())
        anchor_losses.append(-sum(kernel[j] / norm * (s[j] - lse) for j in js))
    loss = sum(anchor_losses) / len(anchor_losses) if anchor_losses else 0.0
    return loss, len(pairs) // 2, len(pairs) // 2


def _ref_rnc(u: Vecs, y: Floats, pid: Ints, *, temperature: float) -> Ref:
    pairs = _valid_pairs(y, pid)
    terms = []
    for i, j in pairs:
        s_ij = -_l2(u[i], u[j]) / temperature
        delta_ij = abs(y[i] - y[j])
        ks = [k for a, k in pairs if a == i and abs(y[i] - y[k]) >= delta_ij]
        sims = [-_l2(u[i], u[k]) / temperature for k in ks]
        top = max(sims)
        lse = top + math.log(sum(math.exp(v - top) for v in sims))
        terms.append(lse - s_ij)
    loss = sum(terms) / len(terms) if terms else 0.0
    return loss, len(pairs) // 2, len(pairs) // 2


REFERENCES: dict[str, Callable[..., Ref]] = {
    "contrastive": _ref_contrastive,
    "weighted": _ref_weighted,
    "yaware": _ref_yaware,
    "rnc": _ref_rnc,
}


def _random_batch(
    seed: int, dtype: torch.dtype, n: int = 14, dim: int = 5
) -> tuple[Tensor, Tensor, Tensor]:
    """Several patients with 1-3 scans, tied scores, NaN scores, one duplicated embedding."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, dim, generator=g, dtype=torch.float64)
    u[5] = u[2]  # identical embeddings of two different patients
    # Scores on a 0.05 grid so that exact ties in Delta occur (they matter for rnc).
    y = torch.randint(0, 21, (n,), generator=g).double() / 20.0
    y[3] = NAN
    y[10] = NAN
    pid = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6, 7, 8, 8])[:n]
    return u.to(dtype), y.to(dtype), pid


def _as_lists(
    u: Tensor, y: Tensor, pid: Tensor
) -> tuple[list[list[float]], list[float], list[int]]:
    return u.double().tolist(), y.double().tolist(), pid.tolist()


@pytest.mark.parametrize(("name", "func", "hparams"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference(
    name: str, func: Objective, hparams: dict[str, Any], dtype: torch.dtype, rel: float, seed: int
) -> None:
    u, y, pid = _random_batch(seed, dtype)
    out = func(u, y, pid, **hparams)
    ref_loss, ref_pos, ref_neg = REFERENCES[name](*_as_lists(u, y, pid), **hparams)
    assert out.loss.dtype == dtype
    assert out.loss.item() == pytest.approx(ref_loss, rel=rel, abs=rel * 1e-3)
    assert (out.n_pos.item(), out.n_neg.item()) == (ref_pos, ref_neg)
    assert out.n_pos.dtype == torch.int64


@pytest.mark.parametrize(("name", "func", "hparams"), CASES, ids=CASE_IDS)
def test_gradcheck_float64(name: str, func: Objective, hparams: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # Ties in Delta are kept on purpose: they change which terms enter the rnc denominators but
    # not the smoothness in the embeddings, which is what gradcheck perturbs.
    y = torch.tensor([0.1, 0.35, 0.35, 0.6, NAN, 0.9, 0.15, 0.75], dtype=torch.float64)
    pid = torch.tensor([0, 1, 2, 3, 4, 5, 5, 6])
    # Stay away from the relu kink of the margin terms, where the loss is not differentiable.
    with torch.no_grad():
        z = torch.nn.functional.normalize(u, dim=1)
        dist = 1 - z @ z.T
    assert (dist - hparams.get("margin", 10.0)).abs().min() > 1e-3
    assert torch.autograd.gradcheck(lambda e: func(e, y, pid, **hparams).loss, (u,))


def test_rnc_ties_are_included_in_the_denominator() -> None:
    # Anchor 0 (y = 0.5) has two candidates at the same gap 0.25 (exact in binary): each
    # denominator holds both.
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64)
    pid = torch.tensor([0, 1, 2])
    out = fn.rnc_loss(u, y, pid, temperature=1.0)

    def lse(*v: float) -> float:
        return math.log(sum(math.exp(a) for a in v))

    r10 = math.sqrt(10.0)
    by_hand = [
        lse(-1, -3) + 1,  # (0, 1): Delta 0.25, ties with (0, 2)
        lse(-1, -3) + 3,  # (0, 2)
        lse(-1, -r10) + 1,  # (1, 0): Delta 0.25 <= 0.5
        0.0,  # (1, 2): Delta 0.5, alone
        lse(-3, -r10) + 3,  # (2, 0): Delta 0.25 <= 0.5
        0.0,  # (2, 1): Delta 0.5, alone
    ]
    assert out.loss.item() == pytest.approx(sum(by_hand) / 6, rel=1e-12)
    # Excluding ties would zero the first two terms: a visibly different value.
    assert out.loss.item() > (sum(by_hand[2:]) / 6) + 0.1


def test_rnc_runs_at_batch_1024_in_o_b2_memory() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1024, 32, generator=g, requires_grad=True)
    y = torch.randint(0, 31, (1024,), generator=g).float() / 30.0  # MMSE-like: many ties
    pid = torch.arange(1024) // 2
    out = fn.rnc_loss(u, y, pid)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert u.grad is not None and torch.isfinite(u.grad).all()
    assert out.n_pos.item() == 1024 * 1023 // 2 - 512


def test_rnc_matches_dense_cubic_mask_on_a_larger_batch() -> None:
    """An independent vectorised oracle with the explicit (B, B, B) mask, at B = 96."""
    g = torch.Generator().manual_seed(1)
    n = 96
    u = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 11, (n,), generator=g).double() / 10.0
    y[::7] = NAN
    pid = torch.randint(0, 60, (n,), generator=g)
    labelled = ~torch.isnan(y)
    valid = (pid[:, None] != pid[None, :]) & labelled[:, None] & labelled[None, :]
    delta = (y[:, None] - y[None, :]).abs()
    sim = -torch.cdist(u, u) / 2.0
    # in_denominator[i, j, k] = k valid for i and Delta_ik >= Delta_ij
    in_den = valid[:, None, :] & (delta[:, None, :] >= delta[:, :, None])
    logits = sim[:, None, :].expand(n, n, n).masked_fill(~in_den, -math.inf)
    lse = torch.logsumexp(logits, dim=2)
    ref = (lse - sim)[valid].mean()
    out = fn.rnc_loss(u, y, pid, temperature=2.0)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-10)


def _rnc_autograd_oracle(u: Tensor, y: Tensor, pid: Tensor, temperature: float) -> Tensor:
    """rnc by autograd through ``torch.cdist`` and an explicit mask per anchor: no sort."""
    labelled = ~torch.isnan(y)
    valid = (pid[:, None] != pid[None, :]) & labelled[:, None] & labelled[None, :]
    delta = (y[:, None] - y[None, :]).abs()
    sim = -torch.cdist(u, u, compute_mode="donot_use_mm_for_euclid_dist") / temperature
    terms = []
    for i in range(u.shape[0]):
        js = valid[i].nonzero().squeeze(1)
        # in_den[a, k]: candidate k is in the denominator of the pair (i, js[a])
        in_den = valid[i][None, :] & (delta[i][None, :] >= delta[i, js][:, None])
        lse = torch.logsumexp(sim[i][None, :].masked_fill(~in_den, -math.inf), dim=1)
        terms.append(lse - sim[i, js])
    return torch.cat(terms).mean()


@pytest.mark.parametrize(
    ("scale", "collapse", "temperature"),
    [
        (1.0, False, 2.0),  # the usual path, the distance product in several block rows
        (300.0, False, 0.5),  # distances / temperature beyond 700: log-sum-exp denominators
        (1.0, True, 2.0),  # near-coincident embeddings: every distance from its difference
    ],
    ids=["exp", "log-domain", "collapsed"],
)
def test_rnc_loss_and_gradient_match_autograd_oracle(
    scale: float, collapse: bool, temperature: float
) -> None:
    """Loss and gradient of the analytic backward against autograd, at B = 300 with ties in
    Delta, unlabelled scans, several scans per patient and two coincident embeddings."""
    g = torch.Generator().manual_seed(4)
    n = 300
    u = torch.randn(n, 8, generator=g, dtype=torch.float64) * scale
    if collapse:
        u = u[:1] + 1e-5 * u
    u[7] = u[3]
    y = torch.randint(0, 21, (n,), generator=g).double() / 20.0
    y[::11] = NAN
    pid = torch.randint(0, 120, (n,), generator=g)
    ours = u.clone().requires_grad_(True)
    loss = fn.rnc_loss(ours, y, pid, temperature=temperature).loss
    loss.backward()
    oracle = u.clone().requires_grad_(True)
    expected = _rnc_autograd_oracle(oracle, y, pid, temperature)
    expected.backward()
    assert ours.grad is not None and oracle.grad is not None
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    scale_of_grad = oracle.grad.abs().max().item()
    assert torch.allclose(ours.grad, oracle.grad, rtol=1e-8, atol=1e-10 * scale_of_grad)


def test_weight_functions_map_unit_interval_monotonically() -> None:
    delta = torch.linspace(0, 1, 11, dtype=torch.float64)
    weightings: tuple[fn.Weighting, ...] = ("linear", "exp", "log")
    for weighting in weightings:
        w = fn.score_weight(delta, weighting, 3.0)
        assert w[0].item() == 0.0 and w[-1].item() == pytest.approx(1.0, rel=1e-12)
        assert (w.diff() > 0).all()
    mid = torch.tensor([0.5], dtype=torch.float64)
    assert fn.score_weight(mid, "exp", 3.0).item() < 0.5 < fn.score_weight(mid, "log", 3.0).item()
    # Out-of-range gaps never give a negative positive-weight 1 - w.
    assert fn.score_weight(torch.tensor([1.4]), "linear").item() == 1.0
    with pytest.raises(ValueError, match="weighting"):
        fn.score_weight(delta, cast(fn.Weighting, "cubic"))


def test_soft_partition_optimum_is_margin_times_weight() -> None:
    """One pair, angle swept on a grid: the soft loss is smallest at D = m * w(Delta)."""
    margin, alpha = 0.6, 2.0
    angles = torch.linspace(0, math.pi, 601, dtype=torch.float64)
    pid = torch.arange(2)
    for gap in (0.3, 0.8):
        y = torch.tensor([0.0, gap], dtype=torch.float64)
        losses = torch.stack(
            [
                fn.weighted_contrastive_loss(
                    torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)]], dtype=torch.float64),
                    y,
                    pid,
                    margin=margin,
                    weighting="exp",
                    alpha=alpha,
                    partition="soft",
                ).loss
                for a in angles.tolist()
            ]
        )
        best_distance = 1.0 - math.cos(angles[losses.argmin()].item())
        w = fn.score_weight(y[1:], "exp", alpha).item()
        assert best_distance == pytest.approx(margin * w, abs=4e-3)


# -- edge cases ------------------------------------------------------------------------------------
def _edge_batches() -> dict[str, tuple[Tensor, Tensor, Tensor, bool]]:
    """name -> (embeddings, scores, patient ids, whether any valid pair exists)."""
    g = torch.Generator().manual_seed(7)
    r = torch.randn(6, 4, generator=g)
    six = torch.arange(6)
    return {
        "all_equal_scores": (r, torch.full((6,), 0.4), six, True),
        "one_patient": (r, torch.rand(6, generator=g), torch.zeros(6, dtype=torch.long), False),
        "batch_1": (r[:1], torch.tensor([0.3]), six[:1], False),
        "batch_2": (r[:2], torch.tensor([0.3, 0.9]), six[:2], True),
        "identical_embeddings": (r[:1].repeat(6, 1), torch.rand(6, generator=g), six, True),
        "zero_embeddings": (torch.zeros(6, 4), torch.rand(6, generator=g), six, True),
        "some_zero_embeddings": (
            torch.cat([torch.zeros(2, 4), r[2:]]),
            torch.rand(6, generator=g),
            six,
            True,
        ),
        "all_unlabelled": (r, torch.full((6,), NAN), six, False),
        "one_labelled": (r, torch.tensor([0.2, NAN, NAN, NAN, NAN, NAN]), six, False),
        "empty_batch": (torch.zeros(0, 4), torch.zeros(0), six[:0], False),
    }


EDGE = _edge_batches()


@pytest.mark.parametrize(("name", "func", "hparams"), CASES[::2], ids=CASE_IDS[::2])
@pytest.mark.parametrize("edge", list(EDGE))
def test_edge_cases_finite_and_zero_without_pairs(
    name: str, func: Objective, hparams: dict[str, Any], edge: str
) -> None:
    u0, y, pid, has_pairs = EDGE[edge]
    u = u0.clone().requires_grad_(True)
    out = func(u, y, pid, **hparams)
    assert torch.isfinite(out.loss)
    if u.shape[0]:
        out.loss.backward()
        assert u.grad is not None and torch.isfinite(u.grad).all()
    if not has_pairs:
        assert out.loss.item() == 0.0
        assert out.n_pos.item() == 0 and out.n_neg.item() == 0
    else:
        assert out.n_pos.item() + out.n_neg.item() > 0


def test_gap_equal_to_tau_is_a_positive() -> None:
    u = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)  # gaps 0.25, 0.5, 0.75: exact
    pid = torch.arange(3)
    for func in (fn.contrastive_loss, fn.weighted_contrastive_loss):
        out = func(u, y, pid, tau=0.25)
        assert (out.n_pos.item(), out.n_neg.item()) == (1, 2)


def test_empty_terms_are_zero_and_counted() -> None:
    u = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    pid = torch.arange(5)
    same = torch.full((5,), 0.5)
    out = fn.contrastive_loss(u, same, pid, tau=0.1)
    assert (out.n_pos.item(), out.n_neg.item()) == (10, 0)
    # Only the positive term is left: its value is the mean squared distance.
    z = torch.nn.functional.normalize(u, dim=1)
    d = (1 - z @ z.T)[torch.triu_indices(5, 5, 1).unbind()]
    assert out.loss.item() == pytest.approx(d.square().mean().item(), rel=1e-5)
    spread = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    out = fn.weighted_contrastive_loss(u, spread, pid, tau=0.1)
    assert (out.n_pos.item(), out.n_neg.item()) == (0, 10)


@pytest.mark.parametrize(("name", "func", "hparams"), CASES[::2], ids=CASE_IDS[::2])
def test_bf16_autocast_finite_and_close_to_float32(
    name: str, func: Objective, hparams: dict[str, Any]
) -> None:
    u, y, pid = _random_batch(0, torch.float32)
    encoder = torch.nn.Linear(5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = encoder(u)
        assert e.dtype == torch.bfloat16
        out = func(e, y, pid, **hparams)
    assert out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert encoder.weight.grad is not None and torch.isfinite(encoder.weight.grad).all()
    # The loss is computed in float32 from the bf16 embeddings, so it matches that computation.
    expected = func(e.detach().float(), y, pid, **hparams).loss
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_no_pair_loss_is_zero_with_zero_counts() -> None:
    out = fn.no_pair_loss(torch.randn(4, 3), torch.rand(4), torch.arange(4))
    assert out.loss.item() == 0.0
    assert (out.n_pos.item(), out.n_neg.item()) == (0, 0)
    assert out.n_pos_pairs is out.n_pos and out.n_neg_pairs is out.n_neg


@pytest.mark.parametrize(
    ("u", "y", "pid", "match"),
    [
        (torch.randn(4), torch.rand(4), torch.arange(4), "embeddings"),
        (torch.randn(4, 3), torch.rand(5), torch.arange(4), "scores"),
        (torch.randn(4, 3), torch.rand(4), torch.arange(3), "patient_ids"),
        (torch.randn(4, 3), torch.rand(4), torch.rand(4), "integer"),
    ],
)
def test_bad_shapes_raise(u: Tensor, y: Tensor, pid: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn.contrastive_loss(u, y, pid)
