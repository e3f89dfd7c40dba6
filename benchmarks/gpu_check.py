"""A one-command GPU check for `learner` (docs/scale.md, benchmarks/reports/gpu-check.md).

One run (at most ~8 minutes on one large GPU) writes one JSON file with:

1. ``matmul``: the device's measured bf16 (and fp32) matmul rate, TFLOP/s: the ceiling the
   encoders are measured against.
2. ``encoders``: TSM-ResNet-18 on 8 x 224^2 clips and the 3D ResNet-18 on 96^3 volumes,
   forward + backward throughput (items/s) in fp32, bf16 autocast, channels_last and
   channels_last + bf16, each with its achieved FLOP rate (``torch.utils.flop_counter``) as a
   fraction of the bf16 matmul rate.
3. ``pipeline``: the data pipeline's rate (ScanDataset + DecodeCache from mp4 files, DataLoader
   with ``--workers`` processes; a cold epoch that decodes and a warm one that reads the cache)
   against the model's training-step rate on the same batches held on the device: loading is
   the bottleneck where ``data_over_model`` < 1.
4. ``pretrain``: `learner pretrain` with the paper-size LUS config (configs lus.yaml: TSM-R18
   width 64, 8 x 224^2, bf16-mixed on a GPU) on a synthetic LUS cohort of the bench preset,
   a few epochs, with the seconds per epoch.
5. ``embed``: embedding the first scans with that checkpoint on the device with the loader
   workers (what `learner run` does) against one CPU process (what it did until 2026-11-30).

``--smoke`` shrinks every size so that the whole script runs on a CPU in seconds: the test
suite runs it, so the script cannot rot before a GPU is at hand. It writes
``benchmarks/work/gpu_check_smoke.json`` (``benchmarks/work/`` is git-ignored scratch) unless
``--out`` is given, and never the committed ``benchmarks/results/gpu_check.json``, which only
a full run writes (its default ``--out``).

Usage:
    .venv/bin/python benchmarks/gpu_check.py                       # -> results/gpu_check.json
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


FULL = Sizes(8192, 16, 8, 224, 4, 96, 64, 60, 3, 10, 96, ())
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


def lus_config(manifest: Path, out: Path, sizes: Sizes, device: torch.device, workers: int) -> Any:
    precision = "bf16-mixed" if device.type == "cuda" else "'32'"  # YAML: a string
    return load_config(
        CONFIGS / "lus.yaml",
        [
            f"data.manifest={manifest}",
            f"data.cache_dir={out / 'cache'}",
            f"train.epochs={sizes.pretrain_epochs}",
            f"train.precision={precision}",
            f"train.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"data.num_workers={workers}",
            *sizes.overrides,
        ],
    )


def pipeline_rates(cfg: Any, device: torch.device, workers: int, repeats: int) -> dict[str, Any]:
    """Clips/s of the data pipeline (cold and warm cache) against the model's training steps."""
    from learner.data.samplers import PatientBatchSampler
    from learner.train.module import LearnerModule
    from learner.train.prepared import make_dataset, prepare_data

    data = prepare_data(cfg)
    train = data.frame[data.frame["split"] == "train"].reset_index(drop=True)
    dataset = make_dataset(data, train, train=True, seed=0)
    sampler = PatientBatchSampler(
        train["patient_id"].map(data.patient_codes).to_numpy(),
        train["score"].to_numpy(dtype=float),
        cfg.train.batch_size,
        seed=0,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
    out: dict[str, Any] = {"workers": workers, "scans": len(train)}
    batches: list[dict[str, Tensor]] = []
    for epoch, name in enumerate(("cold", "warm")):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        batches = list(loader)
        out[f"data_{name}_clips_per_s"] = len(train) / (time.perf_counter() - start)

    module = LearnerModule(cfg.to_plain(), data.score_range).to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr)
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]
    bf16 = cfg.train.precision == "bf16-mixed"

    def epoch_of_steps() -> None:
        for i, batch in enumerate(on_device):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = module.training_step(batch, i)
            loss.backward()
            optimizer.step()

    with warnings.catch_warnings():  # LightningModule.log without a Trainer warns
        warnings.filterwarnings("ignore", message=".*self.trainer.*")
        seconds = timed(epoch_of_steps, device, warmup=1, repeats=max(1, repeats // 5))
    out["model_clips_per_s"] = len(train) / seconds
    out["data_over_model"] = out["data_warm_clips_per_s"] / out["model_clips_per_s"]
    out["data_cold_over_model"] = out["data_cold_clips_per_s"] / out["model_clips_per_s"]
    return out


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
        cfg = lus_config(files.manifest, work, sizes, device, args.workers)
        log("pipeline")
        result["pipeline"] = pipeline_rates(cfg, device, args.workers, sizes.repeats)
        log("pretrain")
        result["pretrain"] = pretrain_epochs(cfg, work)
        log("embed")
        checkpoint = Path(result["pretrain"]["checkpoint"])
        result["embed"] = embed_rates(
            cfg, checkpoint, work, device, args.workers, sizes.embed_scans
        )
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
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (pipeline)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: a tmp dir)")
    args = parser.parse_args(argv)
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
