"""Speed benchmarks (benchmarks/reports/speed.md): every timing is a ratio to a baseline measured
in the same run, on the same machine, under the same load.

Sections (``--sections``, all by default):

1. ``reference``: the machine's fp32 matmul rate (GFLOP/s) at 1 thread and at the run's thread
   count, measured in this process at the start and again at the end (the drift between the
   two is one measure of the noise).
2. ``encoders``: encoder forward + backward throughput (clips / volumes / rows per second)
   and achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on one forward +
   backward) as a fraction of (1); CPU variants (1 thread, channels_last, bf16 autocast,
   ``torch.compile``) as speed-ups over the fp32 eager baseline.
3. ``pipeline``: (a) the loader alone, per worker process (a DataLoader with 0 workers
   does a worker's job in this process): clips/s of the per-item path (each item finished
   and augmented where it is loaded: the loader before issue 29) against the batched path's
   workers (slicing only; the training device augments), at the demo size and at the paper's
   8 x 224^2 RGB, warm cache; and what a CPU-only run pays to finish those batches itself.
   (b) pretraining steps (LearnerModule training step + AdamW) fed from encoded mp4 files
   through ScanDataset + DecodeCache (batched path, DataLoader with 0 and with 1 worker; the
   per-item path with 0 workers), against the same steps on the same batches held in memory;
   the ratio in-memory time / from-files time per epoch (epoch 1: cold cache).
4. ``objectives``: pair-objective forward + backward time against batch size, and the
   speed-up of the vectorised ``rnc`` over a per-anchor loop (written here, checked to agree).
5. ``embed``: ``learner embed`` (``embed_frame``) throughput and peak RSS on a tabular
   manifest of 1k and 10k scans, each in its own process so the peaks are independent.

Protocol: each timing is the median of ``--repeats`` (5) runs after ``--warmup`` (1) untimed
runs; min, max and the spread (max - min) / median are recorded too. Results go to
``benchmarks/results/speed.json`` (``speed-quick.json`` with ``--quick``), written atomically,
with the machine, torch version and threads, the date and the load average.

Usage:
    .venv/bin/python benchmarks/speed.py              # full run (about 9 minutes on 2 cores)
    .venv/bin/python benchmarks/speed.py --quick      # smoke run on tiny sizes
    .venv/bin/python benchmarks/speed.py --tables benchmarks/results/speed.json  # markdown
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import learner
from learner.config import Config, build_config, load_config
from learner.data.cache import DecodeCache
from learner.data.dataset import InputSpec, ScanDataset
from learner.data.manifest import load_manifest
from learner.data.samplers import PatientBatchSampler
from learner.io import write_json
from learner.losses import build_objective
from learner.losses import functional as fn
from learner.models import build_encoder
from learner.train.loader import usable_cpus
from learner.train.module import LearnerModule

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SECTIONS = ("reference", "encoders", "pipeline", "objectives", "embed")
SCHEMA_VERSION = 1


# -- timing --------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall times (seconds) of repeated runs of one operation, after warm-up."""

    times: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    @property
    def spread(self) -> float:
        """(max - min) / median: the run-to-run noise of this measurement."""
        return (max(self.times) - min(self.times)) / self.median if self.median > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": min(self.times),
            "max_s": max(self.times),
            "spread": self.spread,
            "n": len(self.times),
            "times_s": self.times,
        }


def measure(fn: Callable[[], object], *, warmup: int, repeats: int) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (perf_counter)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(times)


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous value."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _log(message: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# -- machine ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, torch build and threads, Python and OS."""
    cpu_model = "unknown"
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and cpu_model == "unknown":
                cpu_model = value
            elif key == "physical id":
                physical = value
            elif key == "core id":
                core = value
                cores.add((physical, core))
    mem_gib = math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "physical_cores": len(cores) or None,
        "memory_gib": round(mem_gib, 1),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "learner": learner.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def alt_threads(threads: int) -> int:
    """The thread count of the ``threads`` variant: all usable CPUs for a 1-thread run, else 1."""
    return usable_cpus() if threads == 1 else 1


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; above the core count = contention)."""
    return [round(v, 2) for v in os.getloadavg()]


# -- 1. reference: matmul rate ------------------------------------------------------------------


def matmul_rate(n: int, threads: int, *, warmup: int, repeats: int) -> dict[str, Any]:
    """fp32 (n, n) @ (n, n) rate: 2 n^3 FLOPs per product.

    Returns:
        ``{"n", "threads", "gflops" (at the median time), "gflops_best", "time": Timing dict}``.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    with num_threads(threads):
        timing = measure(lambda: torch.mm(a, b), warmup=warmup, repeats=repeats)
    flops = 2.0 * n**3
    return {
        "n": n,
        "threads": threads,
        "gflops": flops / timing.median / 1e9,
        "gflops_best": flops / min(timing.times) / 1e9,
        "time": timing.as_dict(),
    }


def bench_reference(
    n: int, thread_counts: Sequence[int], *, warmup: int, repeats: int
) -> list[dict[str, Any]]:
    """Matmul rate at each thread count."""
    return [matmul_rate(n, t, warmup=warmup, repeats=max(repeats, 5)) for t in thread_counts]


# -- 2. encoders --------------------------------------------------------------------------------

# ``threads``: the other thread setting (all usable CPUs when the run uses 1, else 1).
VARIANTS = ("fp32", "threads", "channels_last", "bf16", "compile")


@dataclass(frozen=True)
class EncoderCase:
    """One encoder at one input size.

    Attributes:
        label: row name in the tables.
        encoder: key of ``learner.models.ENCODERS``.
        kwargs: constructor arguments.
        shape: input shape, batch first.
        unit: what one batch element is (clips, volumes, rows).
        inner: forward + backward passes per timed call (to lift tiny steps above timer noise).
        variants: which of :data:`VARIANTS` to run (``fp32`` first: the baseline).
    """

    label: str
    encoder: str
    kwargs: dict[str, Any]
    shape: tuple[int, ...]
    unit: str
    inner: int = 1
    variants: tuple[str, ...] = ("fp32",)


def encoder_cases(quick: bool) -> list[EncoderCase]:
    """The encoder sizes of the issue (batch sizes chosen for a 2-core CPU), or tiny ones."""
    if quick:
        small = ("fp32", "threads", "channels_last", "bf16")
        return [
            EncoderCase(
                "TSM-R18 w8 4x32^2",
                "tsm_resnet18",
                {"in_channels": 1, "n_segment": 4, "width": 8},
                (1, 4, 1, 32, 32),
                "clips",
                variants=small,
            ),
            EncoderCase(
                "3D R18 w8 16^3",
                "resnet3d_18",
                {"in_channels": 1, "width": 8},
                (2, 1, 16, 16, 16),
                "volumes",
                variants=small,
            ),
            EncoderCase(
                "feature MLP 16->64",
                "mlp",
                {"in_features": 16},
                (32, 16),
                "rows",
                inner=5,
                variants=("fp32", "threads", "bf16"),
            ),
        ]
    return [
        EncoderCase(
            "TSM-R18 8x112^2",
            "tsm_resnet18",
            {"in_channels": 3, "n_segment": 8, "width": 64},
            (2, 8, 3, 112, 112),
            "clips",
            variants=VARIANTS,
        ),
        EncoderCase(
            "TSM-R18 8x224^2",
            "tsm_resnet18",
            {"in_channels": 3, "n_segment": 8, "width": 64},
            (2, 8, 3, 224, 224),
            "clips",
            variants=("fp32", "channels_last", "bf16"),
        ),
        EncoderCase(
            "3D R18 96^3",
            "resnet3d_18",
            {"in_channels": 1, "width": 64},
            (1, 1, 96, 96, 96),
            "volumes",
            variants=("fp32", "threads", "channels_last", "bf16"),
        ),
        EncoderCase(
            "feature MLP 32->64",
            "mlp",
            {"in_features": 32, "hidden": (128, 128), "embed_dim": 64},
            (256, 32),
            "rows",
            inner=20,
            variants=("fp32", "threads", "bf16", "compile"),
        ),
    ]


def count_step_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one forward + backward of ``model`` on ``x`` (torch.utils.flop_counter)."""
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _variant_setup(
    case: EncoderCase, variant: str
) -> tuple[nn.Module, Callable[[Tensor], Tensor], Tensor, contextlib.AbstractContextManager[Any]]:
    """(model, forward callable, input, autocast context) of one variant."""
    torch.manual_seed(0)
    model = build_encoder(case.encoder, **case.kwargs)
    model.train()
    x = torch.randn(*case.shape)
    forward: Callable[[Tensor], Tensor] = model
    autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if variant == "channels_last":
        # TSM reshapes (B, T, C, H, W) to 2D frames inside; channels_last weights make the
        # oneDNN convolutions produce channels_last activations from there on.
        fmt = torch.channels_last_3d if case.encoder == "resnet3d_18" else torch.channels_last
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
        forward = model
        if case.encoder == "resnet3d_18":
            x = x.contiguous(memory_format=fmt)
    elif variant == "bf16":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    elif variant == "compile":
        forward = torch.compile(model)
    return model, forward, x, autocast


def bench_encoder_variant(
    case: EncoderCase,
    variant: str,
    *,
    threads: int,
    alt_threads: int,
    warmup: int,
    repeats: int,
    flops: int,
) -> dict[str, Any]:
    """Time one variant of one encoder case; errors are recorded, not raised."""
    row: dict[str, Any] = {
        "case": case.label,
        "encoder": case.encoder,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in case.kwargs.items()},
        "input_shape": list(case.shape),
        "unit": case.unit,
        "variant": f"threads={alt_threads}" if variant == "threads" else variant,
        "threads": alt_threads if variant == "threads" else threads,
        "gflop_per_step": flops / 1e9,
    }
    try:
        model, forward, x, autocast = _variant_setup(case, variant)

        def step() -> None:
            for _ in range(case.inner):
                model.zero_grad(set_to_none=True)
                with autocast:
                    out = forward(x)
                out.float().sum().backward()

        rss_before = rss_mib()
        reset_peak_rss()
        with num_threads(row["threads"]):
            if variant == "compile":
                start = time.perf_counter()
                step()  # the first call compiles (forward and backward graphs)
                row["compile_s"] = time.perf_counter() - start
            timing = measure(step, warmup=warmup, repeats=repeats)
    except Exception as exc:
        row["status"] = f"error: {_error_line(exc)}"
        return row
    per_step = timing.median / case.inner
    row.update(
        status="ok",
        time=timing.as_dict(),
        step_s=per_step,
        items_per_s=case.shape[0] / per_step,
        gflops=flops / per_step / 1e9,
        # Peak RSS of the process over the steps (VmHWM after a reset), and its rise above the
        # RSS before them. The rise counts only memory the process did not hold already: the
        # FLOP count ran one step before, and the allocator keeps freed pages, so it is not
        # the step's footprint (the peak, with everything held before, bounds that).
        peak_rss_mib=peak_rss_mib(),
        peak_growth_mib=peak_rss_mib() - rss_before,
    )
    return row


def bench_encoders(
    cases: Sequence[EncoderCase],
    *,
    threads: int,
    warmup: int,
    repeats: int,
    reference: dict[int, float],
    compile_ok: bool = True,
) -> list[dict[str, Any]]:
    """Every variant of every case, with speed-ups over the case's fp32 baseline and the
    achieved GFLOP/s as a fraction of the matmul rate at the same thread count."""
    rows: list[dict[str, Any]] = []
    for case in cases:
        torch.manual_seed(0)
        flops = count_step_flops(
            build_encoder(case.encoder, **case.kwargs).train(), torch.randn(*case.shape)
        )
        base: float | None = None
        for variant in case.variants:
            if variant == "compile" and not compile_ok:
                rows.append({"case": case.label, "variant": variant, "status": "skipped"})
                continue
            _log(f"encoder {case.label} [{variant}]")
            if variant == "threads" and alt_threads(threads) == threads:
                continue  # a 1-CPU machine: nothing else to try
            row = bench_encoder_variant(
                case,
                variant,
                threads=threads,
                alt_threads=alt_threads(threads),
                warmup=warmup,
                repeats=repeats,
                flops=flops,
            )
            if row["status"] == "ok":
                ref = reference.get(row["threads"])
                row["fraction_of_matmul"] = row["gflops"] / ref if ref else None
                if variant == "fp32":
                    base = row["step_s"]
                row["speedup_vs_fp32"] = base / row["step_s"] if base else None
            rows.append(row)
    return rows


# -- 3. end-to-end pipeline ---------------------------------------------------------------


@dataclass(frozen=True)
class PipelineSpec:
    """Cohort and model of the end-to-end measurement (the demo config by default)."""

    preset: str = "demo"
    patients: int = 32
    epochs: int = 6
    overrides: tuple[str, ...] = ()
    batch_size: int = 32


def pipeline_spec(quick: bool) -> PipelineSpec:
    if quick:
        return PipelineSpec(
            preset="tiny",
            patients=4,
            epochs=2,
            overrides=("model.width=8", "data.input.size=32", "data.input.frames=4"),
            batch_size=8,
        )
    return PipelineSpec()


def _pipeline_config(spec: PipelineSpec) -> Config:
    demo = Path(learner.__file__).resolve().parent / "configs" / "demo.yaml"
    return load_config(demo, [*spec.overrides, f"train.batch_size={spec.batch_size}"])


def _train_steps(
    module: LearnerModule,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[dict[str, Any]] | list[dict[str, Any]],
    grad_clip: float | None,
) -> int:
    """What Lightning does per batch: training_step, backward, clip, optimizer step."""
    n = 0
    for i, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        loss = module.training_step(batch, i)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        optimizer.step()
        n += 1
    return n


@dataclass(frozen=True)
class LoaderCase:
    """One input size of the loader throughput measurement."""

    label: str
    frames: int
    size: int
    channels: int
    augment: float


def training_clips(
    frame: pd.DataFrame, case: LoaderCase, cache: DecodeCache, *, batch_augment: bool
) -> ScanDataset:
    """The training dataset of ``frame``'s clips at ``case``'s size (seed 0)."""
    codes = {p: i for i, p in enumerate(sorted(frame["patient_id"].unique()))}
    return ScanDataset(
        frame,
        input=InputSpec(
            kind="video",
            frames=case.frames,
            size=case.size,
            channels=case.channels,
            augment=case.augment,
        ),
        train=True,
        cache=cache,
        score_range=(0.0, 500.0),
        patient_codes=codes,
        seed=0,
        batch_augment=batch_augment,
    )


def loader_cases(quick: bool) -> list[LoaderCase]:
    if quick:
        return [LoaderCase("tiny 4x32^2 grey", 4, 32, 1, 2.0)]
    return [
        LoaderCase("demo 8x64^2 grey", 8, 64, 1, 2.0),  # configs/demo.yaml
        LoaderCase("paper 8x224^2 RGB", 8, 224, 3, 1.0),  # configs/lus.yaml
    ]


def bench_loader(
    case: LoaderCase,
    frame: pd.DataFrame,
    workdir: Path,
    batch_size: int,
    *,
    repeats: int,
) -> dict[str, Any]:
    """Clips/s of one loader process over one epoch with a warm decode cache.

    Paths (same items, same RNG draws, order rotated per repeat): ``per_item`` (each item
    float-converted, standardised and augmented where it is loaded: the loader before issue
    29) and ``sliced`` (the batched path's worker: uint8 frames and parameters). ``finish``
    is the batched arithmetic of those raw batches on this CPU (what a CPU-only run adds in
    its training process; a GPU run does it on the GPU).
    """
    from learner.data.training_batch import finish_training_batch

    cache = DecodeCache(workdir / f"cache-{case.size}-{case.channels}")
    datasets = {
        "per_item": training_clips(frame, case, cache, batch_augment=False),
        "sliced": training_clips(frame, case, cache, batch_augment=True),
    }
    sampler = PatientBatchSampler(
        datasets["sliced"].patient_codes, datasets["sliced"].scores, batch_size, seed=0
    )
    loaders = {
        k: DataLoader(ds, batch_sampler=sampler, num_workers=0) for k, ds in datasets.items()
    }
    _log(f"loader {case.label}: filling the decode cache")
    raw = list(loaders["sliced"])  # cold: decodes every scan once (untimed)
    times: dict[str, list[float]] = {"per_item": [], "sliced": [], "finish": []}
    for repeat in range(repeats):
        order = ["per_item", "sliced"] if repeat % 2 == 0 else ["sliced", "per_item"]
        for path in order:
            t0 = time.perf_counter()
            batches = list(loaders[path])
            times[path].append(time.perf_counter() - t0)
            if path == "sliced":
                raw = batches
        t0 = time.perf_counter()
        for batch in raw:
            finish_training_batch(batch, kind="video", channels=case.channels)
        times["finish"].append(time.perf_counter() - t0)
    n = len(frame)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    cpu_total = 1.0 / (1.0 / rate["sliced"] + 1.0 / rate["finish"])
    return {
        "case": case.label,
        "frames": case.frames,
        "size": case.size,
        "channels": case.channels,
        "clips": n,
        "repeats": repeats,
        "per_item_clips_per_s": rate["per_item"],
        "sliced_clips_per_s": rate["sliced"],
        "finish_cpu_clips_per_s": rate["finish"],
        "sliced_then_finish_cpu_clips_per_s": cpu_total,
        "sliced_over_per_item": rate["sliced"] / rate["per_item"],
        "cpu_total_over_per_item": cpu_total / rate["per_item"],
        "bytes_per_item": {
            "per_item": 4 * case.frames * case.channels * case.size**2,
            "sliced": case.frames * case.size**2 * (3 if case.channels == 3 else 1),
        },
        "seconds": {k: v for k, v in times.items()},
    }


def bench_pipeline(spec: PipelineSpec, workdir: Path, *, repeats: int = 3) -> dict[str, Any]:
    """The loader's throughput (:func:`bench_loader`), then steps fed from mp4 files
    (ScanDataset + DecodeCache) vs from the same batches in memory.

    Five paths train five copies of one initial model on identical batches: ``files`` (the
    batched loader, DataLoader with 0 workers: a CPU run's default), ``files_worker`` (1
    worker process, its own cache), ``files_per_item`` (the per-item loader, 0 workers, its
    own cache), ``memory`` (the epoch's raw batches collated beforehand, untimed: the step
    still augments them, as training on in-memory clips would) and ``memory_finished`` (the
    same batches finished and augmented beforehand: only the model's step is timed). Epoch 1
    reads cold caches (every clip decoded and resized); later epochs read the caches' memory
    maps, and the order of the timed paths rotates so that page-cache warmth and load drift
    favour none of them.

    Returns:
        Cohort and config facts, the loader rows, one row per epoch (seconds per path,
        ``load_only_s``: the untimed in-memory copy, i.e. data loading alone; cache counters
        of the main process; ``ratio`` = memory / files, ``ratio_worker`` = memory /
        files_worker, ``ratio_finished`` = memory_finished / files, ``per_item_over_batched``
        = files_per_item / files) and the epoch-1 and median epoch-2+ ratios.
    """
    from learner.data.synthetic import write_cohort

    warnings.filterwarnings("ignore", message=".*self.trainer.*")
    warnings.filterwarnings("ignore", message=".*self.log.*")
    start = time.perf_counter()
    files = write_cohort(
        "lus", workdir / "cohort", patients=spec.patients, seed=0, preset=spec.preset
    )
    write_s = time.perf_counter() - start
    cfg = _pipeline_config(spec)
    frame = load_manifest(files.manifest).frame
    inp = cfg.data.input

    loader_rows = [
        bench_loader(
            case,
            frame,
            workdir / "loader",
            cfg.train.batch_size,
            repeats=repeats,
        )
        for case in loader_cases(spec.preset == "tiny")
    ]

    demo_case = LoaderCase("pipeline", inp.frames, inp.size, inp.channels, inp.augment)

    def make_dataset(cache: DecodeCache, batch_augment: bool = True) -> ScanDataset:
        return training_clips(frame, demo_case, cache, batch_augment=batch_augment)

    # The worker and per-item paths have their own caches, so that their epoch 1 is cold too.
    cache, cache_w = DecodeCache(workdir / "cache"), DecodeCache(workdir / "cache_worker")
    cache_p = DecodeCache(workdir / "cache_per_item")
    dataset, dataset_w = make_dataset(cache), make_dataset(cache_w)
    dataset_p = make_dataset(cache_p, batch_augment=False)
    sampler = PatientBatchSampler(
        dataset.patient_codes, dataset.scores, cfg.train.batch_size, seed=0
    )
    loaders = {
        "files": DataLoader(dataset, batch_sampler=sampler, num_workers=0),
        # As pretrain builds it with data.num_workers=1: the worker slices the next batch
        # while the main process trains on this one.
        "files_worker": DataLoader(
            dataset_w, batch_sampler=sampler, num_workers=1, persistent_workers=True
        ),
        "files_per_item": DataLoader(dataset_p, batch_sampler=sampler, num_workers=0),
    }
    torch.manual_seed(0)
    first = LearnerModule(cfg.to_plain(), (0.0, 500.0))
    # Identical initial models and identical batches: the paths do the same maths.
    paths = ("files", "files_worker", "files_per_item", "memory", "memory_finished")
    modules = {name: copy.deepcopy(first) for name in paths}
    opts = {
        name: torch.optim.AdamW(
            m.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        for name, m in modules.items()
    }
    clip = cfg.train.grad_clip
    batches: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []

    def timed(path: str) -> float:
        memory = {"memory": batches, "memory_finished": finished}
        source = memory[path] if path in memory else iter(loaders[path])
        t0 = time.perf_counter()
        _train_steps(modules[path], opts[path], source, clip)
        return time.perf_counter() - t0

    epochs: list[dict[str, Any]] = []
    for epoch in range(spec.epochs):
        _log(f"pipeline epoch {epoch + 1}/{spec.epochs}")
        sampler.set_epoch(epoch)
        for ds in (dataset, dataset_w, dataset_p):
            ds.set_epoch(epoch)
        misses0, hits0 = cache.misses, cache.hits
        row: dict[str, Any] = {"epoch": epoch + 1}
        if epoch == 0:
            # Cold caches: the file paths must run before anything reads the cache.
            order = ["files", "files_worker", "files_per_item", "memory", "memory_finished"]
            for path in order[:3]:
                row[f"{path}_s"] = timed(path)
            row["cache_misses"] = cache.misses - misses0
            t0 = time.perf_counter()
            batches = list(loaders["files"])
            row["load_only_s"] = time.perf_counter() - t0
            finished = [modules["memory"].finish_batch(b) for b in batches]
            for path in order[3:]:
                row[f"{path}_s"] = timed(path)
        else:
            t0 = time.perf_counter()
            batches = list(loaders["files"])
            row["load_only_s"] = time.perf_counter() - t0
            finished = [modules["memory"].finish_batch(b) for b in batches]
            # Rotate the order of the timed paths so that none always runs first.
            rotation = ["files", "memory", "files_worker", "memory_finished", "files_per_item"]
            k = epoch % len(rotation)
            order = rotation[k:] + rotation[:k]
            for path in order:
                row[f"{path}_s"] = timed(path)
            row["cache_misses"] = cache.misses - misses0
        row["order"] = ", ".join(order)
        # Main-process lookups only (the worker's cache counters live in the worker).
        row["cache_hits"] = cache.hits - hits0
        row["steps"] = len(batches)
        row["ratio"] = row["memory_s"] / row["files_s"]
        row["ratio_worker"] = row["memory_s"] / row["files_worker_s"]
        row["ratio_finished"] = row["memory_finished_s"] / row["files_s"]
        row["per_item_over_batched"] = row["files_per_item_s"] / row["files_s"]
        epochs.append(row)
    later = [e["ratio"] for e in epochs[1:]]
    later_w = [e["ratio_worker"] for e in epochs[1:]]

    def later_median(key: str) -> float | None:
        values = [e[key] for e in epochs[1:]]
        return float(statistics.median(values)) if values else None

    return {
        "cohort": {
            "preset": spec.preset,
            "patients": files.patients,
            "scans": files.scans,
            "write_s": write_s,
        },
        "config": {
            "encoder": cfg.model.encoder,
            "width": cfg.model.width,
            "frames": inp.frames,
            "size": inp.size,
            "channels": inp.channels,
            "augment": inp.augment,
            "batch_size": cfg.train.batch_size,
            "objective": cfg.objective.name,
        },
        "loader": loader_rows,
        "epochs": epochs,
        "ratio_epoch1": epochs[0]["ratio"],
        "ratio_epoch2plus_median": float(statistics.median(later)) if later else None,
        "ratio_epoch2plus_min": min(later) if later else None,
        "ratio_worker_epoch1": epochs[0]["ratio_worker"],
        "ratio_worker_epoch2plus_median": float(statistics.median(later_w)) if later_w else None,
        "ratio_finished_epoch2plus_median": later_median("ratio_finished"),
        "per_item_over_batched_epoch2plus_median": later_median("per_item_over_batched"),
        "goal": ">= 0.95 from epoch 2 (issue 29; 0.9 before)",
    }


# -- 4. objectives ----------------------------------------------------------------------------


def naive_rnc_loss(
    embeddings: Tensor, scores: Tensor, patient_ids: Tensor, *, temperature: float = 2.0
) -> Tensor:
    """Rank-N-Contrast as a straightforward loop over anchors (the reference approach).

    For anchor ``i`` and each valid ``j`` (another patient, both labelled):
    ``l_ij = -log(exp(s_ij) / sum_{k valid, |y_i - y_k| >= |y_i - y_j|} exp(s_ik))`` with
    ``s = -||u_i - u_j|| / temperature``; the loss is the mean over all valid (i, j). Each
    anchor builds its own (n_i, n_i) mask, so time is O(B^3) in Python-driven steps.

    Args:
        embeddings: (B, D) float.
        scores: (B,) in [0, 1], NaN = unlabelled.
        patient_ids: (B,) integer.
        temperature: > 0.

    Returns:
        Scalar loss (0 when there is no valid pair).
    """
    total = embeddings.new_zeros(())
    count = 0
    labelled = ~torch.isnan(scores)
    for i in range(embeddings.shape[0]):
        if not bool(labelled[i]):
            continue
        valid = labelled & (patient_ids != patient_ids[i])
        n = int(valid.sum())
        if n == 0:
            continue
        sim = -torch.linalg.vector_norm(embeddings[i] - embeddings[valid], dim=1) / temperature
        gap = (scores[valid] - scores[i]).abs()
        in_denominator = gap[None, :] >= gap[:, None]  # row j: the k with gap_k >= gap_j
        logits = sim[None, :].expand(n, n).masked_fill(~in_denominator, -math.inf)
        total = total + (torch.logsumexp(logits, dim=1) - sim).sum()
        count += n
    return total / max(count, 1)


OBJECTIVE_CASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("mse", "mse", {}),
    ("contrastive", "contrastive", {}),
    ("weighted (threshold)", "weighted", {"partition": "threshold"}),
    ("weighted (soft)", "weighted", {"partition": "soft"}),
    ("yaware", "yaware", {}),
    ("rnc", "rnc", {}),
)


def _objective_batch(batch: int, dim: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Embeddings (B, D), scores (B,) with 5% unlabelled, two scans per patient."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, generator=gen)
    y = torch.rand(batch, generator=gen)
    y[torch.rand(batch, generator=gen) < 0.05] = math.nan
    pid = torch.arange(batch) // 2
    return u, y, pid


def _objective_loss(objective: nn.Module, y: Tensor, pid: Tensor, x: Tensor) -> Tensor:
    loss: Tensor = objective(x, y, pid).loss
    return loss


def _naive_rnc_fixed(y: Tensor, pid: Tensor, x: Tensor) -> Tensor:
    return naive_rnc_loss(x, y, pid)


def check_naive_rnc(batch: int, dim: int) -> dict[str, float]:
    """Loss and gradient differences between :func:`naive_rnc_loss` and ``rnc_loss`` (float64)."""
    u, y, pid = _objective_batch(batch, dim, seed=1)
    grads = []
    losses = []
    for f in (naive_rnc_loss, lambda a, b, c: fn.rnc_loss(a, b, c).loss):
        x = u.double().requires_grad_(True)
        loss = f(x, y.double(), pid)
        loss.backward()
        losses.append(loss.detach())
        assert x.grad is not None
        grads.append(x.grad)
    return {
        "batch": batch,
        "loss_abs_diff": float((losses[0] - losses[1]).abs()),
        "grad_max_abs_diff": float((grads[0] - grads[1]).abs().max()),
    }


def bench_objectives(
    batch_sizes: Sequence[int], dim: int, *, warmup: int, repeats: int, naive_max_batch: int
) -> dict[str, Any]:
    """Forward + backward time of every objective at every batch size, plus the naive rnc."""
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        u, y, pid = _objective_batch(batch, dim)
        cases: list[tuple[str, Callable[[Tensor], Tensor]]] = [
            (label, partial(_objective_loss, build_objective(name, **hparams), y, pid))
            for label, name, hparams in OBJECTIVE_CASES
        ]
        if batch <= naive_max_batch:
            cases.append(("rnc naive loop", partial(_naive_rnc_fixed, y, pid)))
        for label, loss_fn in cases:
            _log(f"objective {label} B={batch}")
            x = u.clone().requires_grad_(True)

            def step(x: Tensor = x, loss_fn: Callable[[Tensor], Tensor] = loss_fn) -> None:
                x.grad = None
                loss = loss_fn(x)
                if loss.requires_grad:  # mse has no pair term, hence no graph
                    loss.backward()

            # The loop at a large batch runs B anchors per call: its own warm-up, and ~25 s.
            w = 0 if label == "rnc naive loop" and batch >= 512 else warmup
            rss_before = rss_mib()
            reset_peak_rss()
            timing = measure(step, warmup=w, repeats=repeats)
            rows.append(
                {
                    "objective": label,
                    "batch": batch,
                    "dim": dim,
                    "warmup": w,
                    "time": timing.as_dict(),
                    # Rise of the process RSS over the steps beyond what it already held (the
                    # allocator keeps freed pages): shows gigabyte-scale needs, not small ones.
                    "peak_growth_mib": peak_rss_mib() - rss_before,
                }
            )
    by = {(r["objective"], r["batch"]): r["time"]["median_s"] for r in rows}
    speedup = {
        str(b): by[("rnc naive loop", b)] / by[("rnc", b)]
        for b in batch_sizes
        if ("rnc naive loop", b) in by
    }
    return {
        "dim": dim,
        "rows": rows,
        "rnc_speedup_over_naive": speedup,
        "naive_check": check_naive_rnc(min(batch_sizes), min(dim, 16)),
    }


# -- 5. embed ---------------------------------------------------------------------------------


def _status_mib(key: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; NaN where absent."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return math.nan


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    return _status_mib("VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where unsupported.

    ``ru_maxrss`` cannot be reset and survives ``fork`` + ``exec``: a child started by a
    process holding gigabytes reports the parent's peak. Writing 5 to
    ``/proc/self/clear_refs`` (Linux >= 4.0) resets VmHWM instead.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """Peak resident set size (MiB) since the process started or :func:`reset_peak_rss`."""
    peak = _status_mib("VmHWM")
    if math.isnan(peak):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def embed_once(
    n_scans: int,
    workdir: Path,
    *,
    n_features: int = 32,
    embed_dim: int = 512,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Embed a synthetic tabular manifest of ``n_scans`` rows with a random-weight MLP.

    ``embed_dim`` 512 matches the video encoders' embedding size, so that holding the
    embeddings in memory instead of streaming them (20 MB at 10k scans) would show in the
    peak RSS.

    Returns:
        Wall time of :func:`learner.pipeline.embed.embed_frame`, scans/s, the RSS before it,
        the peak RSS during it and their difference (MiB), and the rows in the written file.
    """
    import pyarrow.parquet as pq

    from learner.pipeline.embed import embed_frame
    from learner.train.prepared import PreparedData, input_spec

    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    columns = [f"f{i}" for i in range(n_features)]
    table = pd.DataFrame(rng.normal(size=(n_scans, n_features)).round(4), columns=columns)
    table.insert(0, "patient_id", [f"p{i // 4:05d}" for i in range(n_scans)])
    table.insert(1, "visit", [i % 4 for i in range(n_scans)])
    table.insert(2, "score", rng.uniform(0, 30, n_scans).round(1))
    csv = workdir / f"tabular_{n_scans}.csv"
    table.to_csv(csv, index=False)
    del table
    manifest = load_manifest(csv, feature_columns=columns)
    cfg = build_config(
        {},
        [
            "data.input.kind=tabular",
            "model.encoder=mlp",
            f"data.feature_columns=[{','.join(columns)}]",
            f"model.mlp_embed_dim={embed_dim}",
        ],
    )
    torch.manual_seed(0)
    model = LearnerModule(cfg.to_plain(), (0.0, 30.0))
    frame = manifest.frame.assign(split="train")
    data = PreparedData(
        manifest=manifest,
        frame=frame,
        assignment={},
        split_hash="",
        score_range=(0.0, 30.0),
        patient_codes={p: i for i, p in enumerate(sorted(frame["patient_id"].unique()))},
        input=input_spec(cfg),
        cache=None,
    )
    out = workdir / f"embeddings_{n_scans}.parquet"
    rss_before = rss_mib()
    peak_reset = reset_peak_rss()
    start = time.perf_counter()
    embed_frame(model, data, frame, out, metadata={"objective": "none"}, batch_size=batch_size)
    wall = time.perf_counter() - start
    peak = peak_rss_mib()
    return {
        "scans": n_scans,
        "features": n_features,
        "embed_dim": embed_dim,
        "batch_size": batch_size,
        "wall_s": wall,
        "scans_per_s": n_scans / wall,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        # The peak over the embedding alone when the reset worked, else over the process.
        "peak_reset": peak_reset,
        "peak_growth_mib": peak - rss_before,
        "rows_written": pq.read_metadata(out).num_rows,
        "file_mib": out.stat().st_size / 2**20,
    }


def bench_embed(
    sizes: Sequence[int], workdir: Path, *, threads: int, isolate: bool = True
) -> dict[str, Any]:
    """:func:`embed_once` at each size, each in a fresh process when ``isolate``.

    Without ``isolate`` (the quick smoke run) the sizes share this process, so only the
    first peak is independent.
    """
    runs: list[dict[str, Any]] = []
    for n in sizes:
        _log(f"embed {n} scans ({'subprocess' if isolate else 'in process'})")
        if isolate:
            result_file = workdir / f"embed_{n}.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--embed-worker",
                str(n),
                "--worker-out",
                str(result_file),
                "--threads",
                str(threads),
                "--workdir",
                str(workdir),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                raise RuntimeError(f"embed worker for {n} scans failed: {tail}")
            runs.append(json.loads(result_file.read_text()))
        else:
            with num_threads(threads):
                runs.append(embed_once(n, workdir))
    first, last = runs[0], runs[-1]
    return {
        "isolated_processes": isolate,
        "runs": runs,
        "peak_rss_ratio_last_first": last["peak_rss_mib"] / first["peak_rss_mib"],
        "peak_growth_diff_mib": last["peak_growth_mib"] - first["peak_growth_mib"],
        "throughput_ratio_last_first": last["scans_per_s"] / first["scans_per_s"],
    }


# -- the run ------------------------------------------------------------------------------------


@dataclass
class RunOptions:
    """What :func:`run` measures and how often."""

    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    warmup: int = 1
    repeats: int = 5
    # One thread by default: on a CPU shared with other jobs, two threads of one process
    # wait at every parallel region for whichever is descheduled (see benchmarks/reports/speed.md).
    threads: int = 1
    compile: bool = True
    workdir: Path | None = None


def run(options: RunOptions, out: Path | None = None, command: str = "") -> dict[str, Any]:
    """Run the selected sections and return (and, with ``out``, write) the results.

    Args:
        options: sizes, repeats, threads and sections.
        out: JSON file written atomically at the end (None: not written).
        command: the command line, recorded verbatim.

    Returns:
        The results dictionary (keys: schema, command, quick, date, machine, protocol,
        load_average, wall_s, and one key per section run).
    """
    unknown = sorted(set(options.sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(options.threads)
    quick = options.quick
    started = dt.datetime.now(dt.UTC)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "command": command,
        "quick": quick,
        "date": started.date().isoformat(),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "protocol": {
            "warmup": options.warmup,
            "repeats": options.repeats,
            "statistic": "median",
            "spread": "(max - min) / median",
        },
        "load_average": {"start": load_average()},
        "section_wall_s": {},
    }
    thread_counts = sorted({options.threads, alt_threads(options.threads)})
    mm_n = 256 if quick else 2048
    reference: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        if options.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="speed-")))
        else:
            workdir = options.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        if quick or not options.compile:
            compile_ok = False
        else:
            # A fresh inductor cache: the compile time recorded is what a first run pays.
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / "inductor")
            compile_ok = True
        if "reference" in options.sections or "encoders" in options.sections:
            _log("reference matmul")
            mm = bench_reference(
                mm_n, thread_counts, warmup=options.warmup, repeats=options.repeats
            )
            reference = {r["threads"]: r["gflops"] for r in mm}
            results["reference"] = {"matmul_start": mm}
        sections: dict[str, Callable[[], Any]] = {
            "encoders": lambda: bench_encoders(
                encoder_cases(quick),
                threads=options.threads,
                warmup=options.warmup,
                repeats=options.repeats,
                reference=reference,
                compile_ok=compile_ok,
            ),
            "pipeline": lambda: bench_pipeline(
                pipeline_spec(quick), workdir / "pipeline", repeats=options.repeats
            ),
            "objectives": lambda: bench_objectives(
                (16, 32) if quick else (64, 256, 1024),
                32 if quick else 512,
                warmup=options.warmup,
                repeats=options.repeats,
                naive_max_batch=32 if quick else 1024,
            ),
            "embed": lambda: bench_embed(
                (100, 300) if quick else (1000, 10000),
                workdir / "embed",
                threads=options.threads,
                isolate=not quick,
            ),
        }
        for name, section in sections.items():
            if name not in options.sections:
                continue
            results["load_average"][name] = load_average()
            t0 = time.perf_counter()
            results[name] = section()
            results["section_wall_s"][name] = time.perf_counter() - t0
        if "reference" in results:
            _log("reference matmul (end)")
            results["reference"]["matmul_end"] = bench_reference(
                mm_n, thread_counts, warmup=options.warmup, repeats=options.repeats
            )
            start_end = zip(
                results["reference"]["matmul_start"],
                results["reference"]["matmul_end"],
                strict=True,
            )
            results["reference"]["drift_end_over_start"] = {
                str(a["threads"]): b["gflops"] / a["gflops"] for a, b in start_end
            }
    results["load_average"]["end"] = load_average()
    results["wall_s"] = time.perf_counter() - t_start
    if out is not None:
        write_json(out, results)
    return results


# -- markdown tables --------------------------------------------------------------------------


def _n(value: float) -> str:
    """Three significant digits, thousands written out (121,260 rather than 1.21e+05)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:#.3g}"


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_tables(results: dict[str, Any]) -> str:
    """The tables of benchmarks/reports/speed.md from a results dictionary (from :func:`run`)."""
    lines: list[str] = []
    if "reference" in results:
        ref = results["reference"]
        lines += [
            "| threads | matmul n | GFLOP/s start | GFLOP/s end | end / start |",
            "|---|---|---|---|---|",
        ]
        for a, b in zip(ref["matmul_start"], ref.get("matmul_end", []), strict=False):
            lines.append(
                f"| {a['threads']} | {a['n']} | {_f(a['gflops'], 1)} | {_f(b['gflops'], 1)} "
                f"| {_f(b['gflops'] / a['gflops'])} |"
            )
        lines.append("")
    if "encoders" in results:
        lines += [
            "| encoder | input (batch first) | variant | threads | s / step (spread) "
            "| items/s | GFLOP/step | GFLOP/s | of matmul | speed-up vs fp32 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["encoders"]:
            if r.get("status") != "ok":
                shape = "x".join(map(str, r.get("input_shape", [])))
                lines.append(
                    f"| {r['case']} | {shape} | {r['variant']} | | {r.get('status')} | | | | | |"
                )
                continue
            extra = f", compile {r['compile_s']:.0f} s" if "compile_s" in r else ""
            lines.append(
                f"| {r['case']} | {'x'.join(map(str, r['input_shape']))} | {r['variant']} "
                f"| {r['threads']} | {_n(r['step_s'])} ({r['time']['spread']:.0%}{extra}) "
                f"| {_n(r['items_per_s'])} {r['unit']} | {_n(r['gflop_per_step'])} "
                f"| {_f(r['gflops'], 1)} | {_f(r.get('fraction_of_matmul'))} "
                f"| {_f(r.get('speedup_vs_fp32'))} |"
            )
        lines.append("")
    if "pipeline" in results:
        p = results["pipeline"]
        if "loader" in p:
            lines += [
                "| loader, one process, warm cache | per-item clips/s | sliced clips/s "
                "| sliced / per-item | + finishing on this CPU, clips/s | that / per-item |",
                "|---|---|---|---|---|---|",
            ]
            for r in p["loader"]:
                lines.append(
                    f"| {r['case']} | {_n(r['per_item_clips_per_s'])} "
                    f"| {_n(r['sliced_clips_per_s'])} | **{_f(r['sliced_over_per_item'], 1)}x** "
                    f"| {_n(r['sliced_then_finish_cpu_clips_per_s'])} "
                    f"| {_f(r['cpu_total_over_per_item'])}x |"
                )
            lines.append("")
        if "files_per_item_s" in p["epochs"][0]:
            lines += [
                "| epoch | steps | files, 0 workers s | files, 1 worker s | files, per-item s "
                "| in memory s | in memory, finished s | load only s | cache misses "
                "| ratio 0 workers | ratio 1 worker | ratio to finished | per-item / batched |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for e in p["epochs"]:
                lines.append(
                    f"| {e['epoch']} | {e['steps']} | {_f(e['files_s'])} "
                    f"| {_f(e['files_worker_s'])} | {_f(e['files_per_item_s'])} "
                    f"| {_f(e['memory_s'])} | {_f(e['memory_finished_s'])} "
                    f"| {_f(e['load_only_s'])} | {e['cache_misses']} | {_f(e['ratio'])} "
                    f"| {_f(e['ratio_worker'])} | {_f(e['ratio_finished'])} "
                    f"| {_f(e['per_item_over_batched'])} |"
                )
        else:  # results written before issue 29
            lines += [
                "| epoch | steps | files, 0 workers s | files, 1 worker s | in memory s "
                "| load only s | cache misses | ratio 0 workers | ratio 1 worker |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for e in p["epochs"]:
                lines.append(
                    f"| {e['epoch']} | {e['steps']} | {_f(e['files_s'])} "
                    f"| {_f(e['files_worker_s'])} | {_f(e['memory_s'])} | {_f(e['load_only_s'])} "
                    f"| {e['cache_misses']} | {_f(e['ratio'])} | {_f(e['ratio_worker'])} |"
                )
        lines.append("")
    if "objectives" in results:
        o = results["objectives"]
        batches = sorted({r["batch"] for r in o["rows"]})
        names = list(dict.fromkeys(r["objective"] for r in o["rows"]))
        cell = {(r["objective"], r["batch"]): r["time"] for r in o["rows"]}
        lines += [
            "| objective | " + " | ".join(f"B={b} ms (spread)" for b in batches) + " |",
            "|---" * (len(batches) + 1) + "|",
        ]
        for name in names:
            cells = [
                f"{cell[name, b]['median_s'] * 1e3:.2f} ({cell[name, b]['spread']:.0%})"
                if (name, b) in cell
                else "-"
                for b in batches
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        mem = {(r["objective"], r["batch"]): r.get("peak_growth_mib") for r in o["rows"]}
        speed = o["rnc_speedup_over_naive"]
        lines.append(
            "| **rnc speed-up over the loop** | "
            + " | ".join(f"**{speed[str(b)]:.0f}x**" if str(b) in speed else "-" for b in batches)
            + " |"
        )
        lines += [
            "",
            "| RSS rise over the steps, MiB | " + " | ".join(f"B={b}" for b in batches) + " |",
            "|---" * (len(batches) + 1) + "|",
        ]
        for name in ("rnc", "rnc naive loop"):
            cells = [_f(mem.get((name, b)), 0) for b in batches]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "embed" in results:
        lines += [
            "| scans | wall s | scans/s | RSS before MiB | peak RSS MiB | peak growth MiB "
            "| file MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["embed"]["runs"]:
            lines.append(
                f"| {r['scans']} | {_f(r['wall_s'])} | {_f(r['scans_per_s'], 0)} "
                f"| {_f(r['rss_before_mib'], 1)} | {_f(r['peak_rss_mib'], 1)} "
                f"| {_f(r['peak_growth_mib'], 1)} | {_f(r['file_mib'], 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Speed benchmarks (benchmarks/reports/speed.md); see benchmarks/README.md."
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/speed.json, speed-quick.json with --quick)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="which sections to run (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the baselines (default 1; the 'threads' variant uses the other "
        "setting: all usable CPUs, or 1)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument(
        "--tables", type=Path, default=None, help="print the markdown tables of a results JSON"
    )
    parser.add_argument("--embed-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tables is not None:
        print(markdown_tables(json.loads(args.tables.read_text())))
        return 0
    if args.embed_worker is not None:
        # Child process of bench_embed: one size, its own peak RSS.
        torch.set_num_threads(args.threads)
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="speed-embed-"))
        result = embed_once(args.embed_worker, workdir)
        write_json(args.worker_out or workdir / "embed.json", result)
        return 0
    out = args.out or RESULTS / ("speed-quick.json" if args.quick else "speed.json")
    options = RunOptions(
        quick=args.quick,
        sections=tuple(args.sections),
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        compile=not args.no_compile,
        workdir=args.workdir,
    )
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join([".venv/bin/python", "benchmarks/speed.py", *argv_list])
    results = run(options, out, command)
    print(markdown_tables(results))
    _log(f"wrote {out} in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
