"""A one-command GPU check for `learner` (docs/scale.md, benchmarks/reports/gpu-check.md).

One run writes one JSON file with:

1. ``matmul``: the device's measured bf16 (and fp32) matmul rate, TFLOP/s: the ceiling the
   encoders are measured against.
2. ``encoders``: TSM-ResNet-18 on 8 x 224^2 clips and the 3D ResNet-18 on 96^3 volumes,
   forward + backward throughput (items/s) in fp32, bf16 autocast, channels_last and
   channels_last + bf16, each with its achieved FLOP rate (``torch.utils.flop_counter``) as a
   fraction of the bf16 matmul rate.
3. ``pipeline``: the training data pipeline (ScanDataset + DecodeCache from mp4 files with
   ``batch_augment``: workers only slice uint8 frames, the augmentation runs batched in the
   training step on the device) for each worker count of ``--workers`` (default 4 8 15): a
   cold epoch that decodes (a fresh decode cache per worker count) and a warm one that reads
   the cache, through one DataLoader with persistent workers (pinned memory on CUDA). Against
   it, the model's training-step rate on the same batches held on the device, measured twice:
   ``fp32`` and ``channels_last+bf16`` (the module built with ``train.channels_last: true``,
   bf16 autocast); the step includes the batched augmentation. ``data_over_model`` (warm data
   clips/s over the model's) per worker count and variant: loading is the bottleneck where it
   is < 1.
4. ``pretrain``: `learner pretrain` with the paper-size LUS config (configs lus.yaml: TSM-R18
   width 64, 8 x 224^2, ``train.channels_last: true``, bf16-mixed on a GPU, the largest
   worker count of the sweep) on a synthetic LUS cohort of the bench preset, a few epochs,
   with the seconds per epoch (its decode cache is the sweep's last: warm).
5. ``embed``: embedding the first scans with that checkpoint on the device with the largest
   worker count of the sweep (what `learner run` does) against one CPU process (what it did
   until 2026-11-30).

Time on one H200: the run of 2026-11-30 (sections 1-5, one worker count, one model variant)
took 76 s. The sweep adds, per worker count, a cold and a warm epoch of 420 clips (about 4 s
and 2.5 s at the old 4-worker rates, less with more workers) and the workers' start, so about
30 s for 4, 8 and 15 workers; the second model variant adds 3 epochs of 420 clips at ~1,250
clips/s (~1 s). Estimate: about 2 minutes; 4 minutes at twice every measured time, inside the
8 minutes the check is allowed.

``--smoke`` shrinks every size (and sweeps workers 0 and 1) so that the whole script runs on
a CPU in seconds: the test suite runs it, so the script cannot rot before a GPU is at hand.
It writes ``benchmarks/work/gpu_check_smoke.json`` (``benchmarks/work/`` is git-ignored
scratch) unless ``--out`` is given, and never the committed
``benchmarks/results/gpu_check.json``, which only a full run writes (its default ``--out``).

Usage:
    .venv/bin/python benchmarks/gpu_check.py                       # -> results/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --workers 4 8 15      # the default sweep
    .venv/bin/python benchmarks/gpu_check.py --smoke               # -> work/gpu_check_smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import learner
from learner.config import load_config
from learner.io import write_json
from learner.models import build_encoder

CONFIGS = Path(learner.__file__).resolve().parent / "configs"
BENCHMARKS = Path(__file__).resolve().parent
# What a full run writes (committed) and what --smoke writes (git-ignored scratch).
COMMITTED = BENCHMARKS / "results" / "gpu_check.json"
SMOKE_OUT = BENCHMARKS / "work" / "gpu_check_smoke.json"
# The two ways the model's training steps are timed in section 3 (names as in ``encoders``).
MODEL_VARIANTS = ("fp32", "channels_last+bf16")


@dataclass(frozen=True)
class Sizes:
    """Everything ``--smoke`` shrinks."""

    matmul_n: int
    tsm_batch: int
    tsm_frames: int
    tsm_size: int
    r3d_batch: int
    r3d_size: int
    width: int
    patients: int
    pretrain_epochs: int
    repeats: int
    embed_scans: int
    overrides: tuple[str, ...]
    workers: tuple[int, ...]  # the pipeline's worker sweep (``--workers`` overrides it)


FULL = Sizes(8192, 16, 8, 224, 4, 96, 64, 60, 3, 10, 96, (), (4, 8, 15))
SMOKE = Sizes(
    128,
    1,
    4,
    32,
    2,  # BatchNorm needs 2 values per channel after the 3D net's last 1^3 stage
    16,
    8,
    6,
    1,
    1,
    8,
    ("model.width=8", "data.input.size=32", "data.input.frames=4", "train.batch_size=4"),
    (0, 1),
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` after ``warmup`` untimed calls (device work included)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rates(n: int, device: torch.device, repeats: int) -> dict[str, Any]:
    """(n, n) @ (n, n) in bf16 and fp32 (TF32 off): 2 n^3 FLOPs per product."""
    out: dict[str, Any] = {"n": n}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = timed(lambda a=a, b=b: a @ b, device, warmup=2, repeats=max(3, repeats))
        out[f"{name}_tflops"] = 2.0 * n**3 / seconds / 1e12
    return out


def step_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one forward + backward (fp32 counting; autocast does not change the count)."""
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def encoder_rows(sizes: Sizes, device: torch.device, bf16_tflops: float) -> list[dict[str, Any]]:
    """Every variant of the two video / volume encoders."""
    cases = [
        (
            f"TSM-R18 {sizes.tsm_frames}x{sizes.tsm_size}^2",
            "tsm_resnet18",
            {"in_channels": 3, "n_segment": sizes.tsm_frames, "width": sizes.width},
            (sizes.tsm_batch, sizes.tsm_frames, 3, sizes.tsm_size, sizes.tsm_size),
            torch.channels_last,
        ),
        (
            f"3D R18 {sizes.r3d_size}^3",
            "resnet3d_18",
            {"in_channels": 1, "width": sizes.width},
            (sizes.r3d_batch, 1, sizes.r3d_size, sizes.r3d_size, sizes.r3d_size),
            torch.channels_last_3d,
        ),
    ]
    rows = []
    for label, name, kwargs, shape, fmt in cases:
        torch.manual_seed(0)
        x = torch.randn(*shape, device=device)
        flops = step_flops(build_encoder(name, **kwargs).to(device).train(), x)
        for variant in ("fp32", "bf16", "channels_last", "channels_last+bf16"):
            model = build_encoder(name, **kwargs).to(device).train()
            inp = x
            if variant.startswith("channels_last"):
                model = model.to(memory_format=fmt)  # type: ignore[call-overload]
                if name == "resnet3d_18":
                    inp = x.contiguous(memory_format=fmt)
            bf16 = variant.endswith("bf16")

            def step(model: nn.Module = model, inp: Tensor = inp, bf16: bool = bf16) -> None:
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(inp)
                out.float().sum().backward()

            seconds = timed(step, device, warmup=2, repeats=sizes.repeats)
            rate = flops / seconds / 1e12
            rows.append(
                {
                    "case": label,
                    "variant": variant,
                    "batch": shape[0],
                    "items_per_s": shape[0] / seconds,
                    "tflops": rate,
                    "fraction_of_bf16_matmul": rate / bf16_tflops,
                }
            )
    return rows


def lus_config(
    manifest: Path, cache: Path, sizes: Sizes, device: torch.device, workers: int
) -> Any:
    """configs/lus.yaml as a GPU run uses it (bf16-mixed, channels_last; fp32 on a CPU), its
    decode cache in ``cache``."""
    precision = "bf16-mixed" if device.type == "cuda" else "'32'"  # YAML: a string
    return load_config(
        CONFIGS / "lus.yaml",
        [
            f"data.manifest={manifest}",
            f"data.cache_dir={cache}",
            f"train.epochs={sizes.pretrain_epochs}",
            f"train.precision={precision}",
            f"train.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "train.channels_last=true",
            f"data.num_workers={workers}",
            *sizes.overrides,
        ],
    )


def data_epochs(
    cfg: Any, device: torch.device, workers: int
) -> tuple[dict[str, Any], list[dict[str, Tensor]], Any]:
    """Clips/s of a cold and a warm training epoch with ``workers`` loader processes.

    One DataLoader (persistent workers) runs both epochs; the decode cache is
    ``cfg.data.cache_dir``, which the caller makes fresh so that the first epoch decodes.

    Returns:
        ``(row, batches, data)``: the rates, the warm epoch's batches (raw: uint8 frames and
        augmentation parameters) and the prepared data.
    """
    from learner.data.samplers import PatientBatchSampler
    from learner.train.loader import loader_kwargs
    from learner.train.prepared import make_dataset, prepare_data

    data = prepare_data(cfg)
    train = data.frame[data.frame["split"] == "train"].reset_index(drop=True)
    dataset = make_dataset(data, train, train=True, seed=0, batch_augment=True)
    sampler = PatientBatchSampler(
        train["patient_id"].map(data.patient_codes).to_numpy(),
        train["score"].to_numpy(dtype=float),
        cfg.train.batch_size,
        seed=0,
    )
    kwargs = loader_kwargs(cfg, device.type == "cuda", workers)
    loader = DataLoader(dataset, batch_sampler=sampler, **kwargs)
    row: dict[str, Any] = {"workers": kwargs["num_workers"], "scans": len(train)}
    batches: list[dict[str, Tensor]] = []
    for epoch, name in enumerate(("cold", "warm")):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        batches = list(loader)
        row[f"data_{name}_clips_per_s"] = len(train) / (time.perf_counter() - start)
    del loader  # stops the persistent workers before the next worker count starts its own
    return row, batches, data


def model_rates(
    cfg: Any, score_range: Any, batches: list[dict[str, Tensor]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Clips/s of the model's training steps (``LearnerModule.training_step``, which makes
    the raw batch into the encoder's input on the device, + backward + AdamW) on ``batches``
    held on ``device``: fp32, and channels_last (``train.channels_last: true``) + bf16."""
    from learner.train.module import LearnerModule

    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]
    clips = sum(int(b["y"].shape[0]) for b in on_device)
    rates: dict[str, float] = {}
    for variant in MODEL_VARIANTS:
        plain = cfg.to_plain()
        plain["train"]["channels_last"] = variant.startswith("channels_last")
        torch.manual_seed(0)
        module = LearnerModule(plain, score_range).to(device).train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr)
        bf16 = variant.endswith("bf16")

        def epoch_of_steps(
            module: Any = module, optimizer: Any = optimizer, bf16: bool = bf16
        ) -> None:
            for i, batch in enumerate(on_device):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = module.training_step(batch, i)
                loss.backward()
                optimizer.step()

        with warnings.catch_warnings():  # LightningModule.log without a Trainer warns
            warnings.filterwarnings("ignore", message=".*self.trainer.*")
            seconds = timed(epoch_of_steps, device, warmup=1, repeats=max(1, repeats // 5))
        rates[variant] = clips / seconds
        del module, optimizer
    return rates


def pipeline_rates(
    cfg_with_cache: Callable[[Path, int], Any],
    work: Path,
    device: torch.device,
    workers: list[int],
    repeats: int,
) -> dict[str, Any]:
    """The worker sweep (cold and warm data clips/s per worker count, each with a fresh
    decode cache ``work/cache-w<N>``) against the model's training steps (fp32 and
    channels_last + bf16) on the warm batches of the last worker count. The loaders are a
    training run's (``learner.train.loader.loader_kwargs``): persistent workers, pinned
    memory on CUDA."""
    from learner.train.loader import loader_kwargs

    sweep: list[dict[str, Any]] = []
    batches: list[dict[str, Tensor]] = []
    data: Any = None
    cfg: Any = None
    for count in workers:
        cfg = cfg_with_cache(work / f"cache-w{count}", count)
        row, batches, data = data_epochs(cfg, device, count)
        sweep.append(row)
    model = model_rates(cfg, data.score_range, batches, device, repeats)
    for row in sweep:
        for key in ("warm", "cold"):
            suffix = "" if key == "warm" else "_cold"
            row[f"data{suffix}_over_model"] = {
                variant: row[f"data_{key}_clips_per_s"] / rate for variant, rate in model.items()
            }
    kwargs = loader_kwargs(cfg, device.type == "cuda", max(workers))
    return {
        "scans": sweep[-1]["scans"],
        "batch_size": cfg.train.batch_size,
        "batch_augment": True,
        "loader": {k: kwargs[k] for k in ("persistent_workers", "pin_memory", "prefetch_factor")},
        "model_clips_per_s": model,
        "sweep": sweep,
    }


class EpochTimes(L.Callback):
    """Wall seconds of every training epoch (validation included)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(self.starts) > len(self.seconds) and not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self.starts[-1])


def pretrain_epochs(cfg: Any, out: Path) -> dict[str, Any]:
    from learner.train.pretrain import pretrain

    times = EpochTimes()
    start = time.perf_counter()
    result = pretrain(cfg, out / "run", progress=False, callbacks=[times])
    return {
        "checkpoint": str(result.best),
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision,
        "channels_last": cfg.train.channels_last,
        "num_workers": cfg.data.num_workers,
        "seconds_per_epoch": times.seconds,
        "total_s": time.perf_counter() - start,
    }


def embed_rates(
    cfg: Any, checkpoint: Path, out: Path, device: torch.device, workers: int, scans: int
) -> dict[str, Any]:
    """Scans/s of embedding with the pretrained checkpoint: on ``device`` with ``workers``
    loader processes (what `learner run` does since 2026-11-30) against one CPU process (what
    it did before), on the same first ``scans`` scans, their decode cache warm for both."""
    from learner.pipeline.embed import embed_frame
    from learner.train.checkpoint import load_checkpoint
    from learner.train.prepared import prepare_data

    data = prepare_data(cfg)
    frame = data.frame.iloc[:scans]
    model, _ = load_checkpoint(checkpoint)

    def scans_per_s(where: torch.device, n_workers: int) -> float:
        start = time.perf_counter()
        embed_frame(
            model.to(where),
            data,
            frame,
            out / "embed.parquet",
            metadata={},
            batch_size=cfg.train.batch_size,
            num_workers=n_workers,
        )
        return len(frame) / (time.perf_counter() - start)

    scans_per_s(device, workers)  # warm-up: fills the decode cache, starts the device
    on_device, on_cpu = scans_per_s(device, workers), scans_per_s(torch.device("cpu"), 0)
    return {
        "scans": len(frame),
        "workers": workers,
        "device_scans_per_s": on_device,
        "cpu_scans_per_s": on_cpu,
        "device_over_cpu": on_device / on_cpu,
    }


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "learner": learner.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return info


@contextlib.contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from learner.data.synthetic import write_cohort

    sizes = SMOKE if args.smoke else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    result: dict[str, Any] = {"smoke": args.smoke, "machine": machine(device)}

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    log("matmul")
    result["matmul"] = matmul_rates(sizes.matmul_n, device, sizes.repeats)
    log("encoders")
    result["encoders"] = encoder_rows(sizes, device, result["matmul"]["bf16_tflops"])
    with workdir(args.workdir) as work:
        log("cohort")
        t0 = time.perf_counter()
        preset = "tiny" if args.smoke else "bench"
        files = write_cohort("lus", work / "cohort", patients=sizes.patients, seed=0, preset=preset)
        result["cohort"] = {
            "preset": preset,
            "patients": files.patients,
            "scans": files.scans,
            "write_s": time.perf_counter() - t0,
        }
        workers = list(args.workers if args.workers is not None else sizes.workers)

        def cfg_with_cache(cache: Path, count: int) -> Any:
            return lus_config(files.manifest, cache, sizes, device, count)

        log(f"pipeline, workers {workers}")
        result["pipeline"] = pipeline_rates(cfg_with_cache, work, device, workers, sizes.repeats)
        # Pretraining and embedding as a GPU run would: the most workers, on the decode
        # cache the sweep's last worker count filled.
        most = max(workers)
        cfg = cfg_with_cache(work / f"cache-w{workers[-1]}", most)
        log("pretrain")
        result["pretrain"] = pretrain_epochs(cfg, work)
        log("embed")
        checkpoint = Path(result["pretrain"]["checkpoint"])
        result["embed"] = embed_rates(cfg, checkpoint, work, device, most, sizes.embed_scans)
    result["total_s"] = time.perf_counter() - start
    log("done")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds on a CPU")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results/gpu_check.json; with --smoke "
        "benchmarks/work/gpu_check_smoke.json (git-ignored scratch)",
    )
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="DataLoader worker counts of the pipeline sweep (default 4 8 15; --smoke: 0 1); "
        "pretraining and embedding use the largest",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: a tmp dir)")
    args = parser.parse_args(argv)
    if args.workers is not None and min(args.workers) < 0:
        parser.error("--workers: counts must be 0 or more")
    if args.out is None:
        args.out = SMOKE_OUT if args.smoke else COMMITTED
    elif args.smoke and args.out.resolve() == COMMITTED.resolve():
        parser.error(f"--smoke never writes {COMMITTED}: the committed full run's result")
    result = run(args)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
