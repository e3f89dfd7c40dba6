"""Command-line interface (Typer). Every command is thin: it parses options, calls the
library, and turns :class:`learner.errors.LearnerError` into one line and an exit code.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from learner import signals
from learner.errors import LearnerError

app = typer.Typer(
    name="learner",
    help=(
        "LEARNER: learn fine-grained intra-patient progression from coarse inter-patient "
        "clinical scores (arXiv 2411.01144).\n\n"
        "Start with `learner demo`; see `learner COMMAND --help` for each step."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

_STATE = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn user errors into one line per problem and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LearnerError as exc:
            if _STATE["debug"]:
                traceback.print_exc()
            for line in exc.problems:
                err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            # 130 for Ctrl-C (SIGINT), 143 for SIGTERM: 128 + the signal's number.
            err_console.print("interrupted", markup=False)
            raise typer.Exit(signals.exit_code()) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if signals.received() is not None:
                # The interrupt raised inside a C extension's callback comes back wrapped
                # (seen: pydantic's PydanticSerializationError around KeyboardInterrupt).
                err_console.print("interrupted", markup=False)
                raise typer.Exit(signals.exit_code()) from None
            if _STATE["debug"]:
                traceback.print_exc()
            else:
                err_console.print(
                    f"unexpected error: {type(exc).__name__}: {exc} "
                    "(rerun with `learner --debug ...` for the traceback and report it)",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Print full tracebacks on errors.")
    ] = False,
) -> None:
    _STATE["debug"] = debug


class Modality(StrEnum):
    lus = "lus"
    mri = "mri"


class Preset(StrEnum):
    tiny = "tiny"
    demo = "demo"
    bench = "bench"


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the cohort, runs and report.")] = Path(
        "demo-output"
    ),
) -> None:
    """Run the main job on the embedded synthetic LUS cohort: build the cohort, pretrain
    mse / contrastive / weighted, evaluate change classification, print the comparison and
    write a report.

    Example: learner demo --out demo-output
    """
    import time

    from learner.config import load_config
    from learner.data.synthetic import write_cohort

    start = time.perf_counter()
    cohort = out / "cohort"
    manifest = cohort / "manifest.csv"
    if manifest.exists():
        console.print(f"cohort: reusing {manifest}")
    else:
        console.print("cohort: writing the synthetic LUS cohort (demo preset) ...")
        write_cohort("lus", cohort, patients=None, seed=0, preset="demo", preview=True)
    cfg = load_config(DEMO_CONFIG, [f"data.manifest={manifest}"])
    _run_and_report(cfg, out / "run")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")


@app.command()
@handle_errors
def synth(
    modality: Annotated[Modality, typer.Argument(help="lus (ultrasound clips) or mri (volumes).")],
    out: Annotated[Path, typer.Option(help="Folder to write the cohort into.")],
    patients: Annotated[
        int | None, typer.Option(min=2, help="Number of patients (default: the preset's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the cohort is deterministic.")] = 0,
    preset: Annotated[Preset, typer.Option(help="Size and difficulty preset.")] = Preset.demo,
    null: Annotated[
        bool,
        typer.Option(
            "--null",
            help="Control cohort: images carry no information about within-patient change.",
        ),
    ] = False,
    preview: Annotated[
        bool, typer.Option("--preview", help="Also write preview.png (a grid of scans).")
    ] = False,
) -> None:
    """Write a synthetic longitudinal cohort as real files (mp4 / NIfTI) plus manifest.csv.

    Example: learner synth lus --out cohort --patients 40 --seed 0 --preview
    """
    from learner.data.synthetic import write_cohort
    from learner.errors import ConfigError

    if patients is not None and patients < 2:
        raise ConfigError(f"--patients {patients}: a cohort needs at least 2 patients")
    files = write_cohort(
        modality.value,
        out,
        patients=patients,
        seed=seed,
        preset=preset.value,
        null=null,
        preview=preview,
    )
    kind = "null-control " if null else ""
    lines = [
        f"wrote a {kind}{modality.value} cohort: {files.patients} patients, {files.scans} scans",
        f"manifest: {files.manifest}",
        f"truth:    {files.truth}",
    ]
    if files.preview is not None:
        lines.append(f"preview:  {files.preview}")
    for line in lines:
        # soft_wrap: paths stay on one line whatever the terminal width (easy to copy).
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def validate(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV or Parquet.")],
    delta: Annotated[
        str,
        typer.Option(help="Stable band for change labels: a raw score value or 'tertiles'."),
    ] = "tertiles",
    lower_is_better: Annotated[
        bool, typer.Option("--lower-is-better", help="A higher score means worse health.")
    ] = False,
    features: Annotated[
        str | None,
        typer.Option(
            help="Tabular data: comma-separated numeric feature columns used instead of path."
        ),
    ] = None,
    decode: Annotated[
        bool,
        typer.Option(
            "--decode/--no-decode",
            help="Decode every scan file (slower; finds corrupt files before training does).",
        ),
    ] = True,
) -> None:
    """Check a manifest and its files; print patients, visits, scans, score range and
    change pairs per class. Exit 3 with one line per problem.

    Example: learner validate cohort/manifest.csv --delta 2
    """
    from learner.data.manifest import check_scans, load_manifest
    from learner.data.summary import render_summary, summarize_manifest, summary_warnings
    from learner.errors import ConfigError

    feature_columns = None
    if features is not None:
        feature_columns = [c.strip() for c in features.split(",") if c.strip()]
        if not feature_columns:
            raise ConfigError("--features is empty; name the columns, e.g. --features a,b,c")
    loaded = load_manifest(manifest, feature_columns=feature_columns)
    decoded = check_scans(loaded) if decode else None
    summary = summarize_manifest(loaded, delta=delta, higher_is_better=not lower_is_better)
    for line in [*loaded.warnings, *summary_warnings(summary)]:
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    render_summary(summary, console)
    if decoded is not None and feature_columns is None:
        console.print(f"scan files decoded: {decoded}, all readable")


@app.command()
@handle_errors
def pretrain(
    config: Annotated[Path, typer.Option(help="YAML config (see configs/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set train.epochs=5 (value parsed as YAML)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: from config).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from last.ckpt.")] = False,
) -> None:
    """Pretrain an encoder on many patients (score MSE + pair objective); writes a run folder.

    Example: learner pretrain --config configs/demo.yaml --set objective.name=weighted --out runs/w
    """
    from learner.config import load_config
    from learner.train.pretrain import pretrain as run_pretrain

    cfg = load_config(config, set_)
    result = run_pretrain(cfg, out or cfg.train.out, resume=resume)
    if _is_rank_zero():  # under DDP every rank runs this command
        console.print(f"run folder: {result.run_dir}")
        console.print(f"best checkpoint: {result.best}")


@app.command()
@handle_errors
def embed(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint from `learner pretrain`.")],
    manifest: Annotated[Path, typer.Option(help="Manifest of the scans to embed.")],
    out: Annotated[Path, typer.Option(help="Output Parquet file, one row per scan.")],
    clips_per_scan: Annotated[
        int | None,
        typer.Option(min=1, help="Clip samplings averaged per scan (default: the config's)."),
    ] = None,
) -> None:
    """Embed every scan of a manifest with a pretrained encoder (one process, on the CPU,
    whatever train.devices the checkpoint was trained with).

    Example: learner embed --checkpoint run/checkpoints/best.ckpt --manifest m.csv --out e.parquet
    """
    from learner.evaluate.embed import embed_checkpoint

    path = embed_checkpoint(checkpoint, manifest, out, clips_per_scan=clips_per_scan)
    console.print(f"embeddings: {path}")


@app.command()
@handle_errors
def evaluate(
    embeddings: Annotated[Path, typer.Option(help="Parquet from `learner embed`.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and figures.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (evaluation section).")] = None,
) -> None:
    """Classify worsen / stable / improve between consecutive visits from embeddings.

    Example: learner evaluate --embeddings e.parquet --out eval
    """
    from learner.config import load_config
    from learner.evaluate.change import evaluate_change
    from learner.evaluate.embeddings_io import read_embeddings
    from learner.evaluate.plots import plot_confusions, plot_figure1, plot_trajectories
    from learner.io import write_json

    cfg = load_config(config, None)
    frame, meta = read_embeddings(embeddings)
    higher = bool(meta.get("higher_is_better", cfg.data.higher_is_better))
    result = evaluate_change(
        frame,
        delta=cfg.eval.delta,
        higher_is_better=higher,
        feature=cfg.eval.feature,
        classifier=cfg.eval.classifier,
        n_boot=cfg.eval.n_boot,
        seed=cfg.train.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result.to_json())
    name = str(meta.get("objective", "embeddings"))
    plot_figure1({name: result}, out / "figures" / "figure1_distance_vs_change.png")
    plot_confusions({name: result.confusion}, out / "figures" / "confusion_matrix.png")
    plot_trajectories(frame, out / "figures" / "trajectories.png")
    for note in result.warnings:
        err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "spearman_distance", "score_mae"):
        lo, hi = result.ci95.get(key, (float("nan"), float("nan")))
        console.print(f"{key:>18}: {result.metrics[key]:.3f}  [{lo:.3f}, {hi:.3f}]")
    hd = result.head_delta.get("balanced_accuracy", float("nan"))
    console.print(f"{'head_delta bal.acc':>18}: {hd:.3f}")
    console.print(f"metrics: {out / 'metrics.json'}")


@app.command()
@handle_errors
def run(
    config: Annotated[Path, typer.Option(help="YAML config with run.objectives and run.seeds.")],
    out: Annotated[Path, typer.Option(help="Folder for every cell, results.json and reports.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set run.seeds=[0,1,2]."),
    ] = None,
) -> None:
    """Pretrain + embed + evaluate every objective and seed; write results.json and reports.

    Example: learner run --config configs/demo.yaml --out runs/ablation
    """
    from learner.config import load_config

    _run_and_report(load_config(config, set_), out)


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def _run_and_report(cfg: Any, out: Path) -> None:
    """Shared by `run` and `demo`: the ablation grid, the table, the reports."""
    from learner.evaluate.ablation import run_ablation
    from learner.evaluate.report import comparison_table, write_reports

    if cfg.train.devices * cfg.train.num_nodes > 1:
        # Lightning's DDP launcher would rerun the whole grid in every process.
        err_console.print(
            "note: `learner run` trains each cell in one process on one device "
            f"(train.devices={cfg.train.devices}, train.num_nodes={cfg.train.num_nodes} "
            "ignored); for multi-device training use `learner pretrain`, then `learner embed` "
            "and `learner evaluate` (docs/scale.md)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        cfg.train.devices = cfg.train.num_nodes = 1

    ablation = run_ablation(cfg, out, log=lambda line: console.print(line, highlight=False))
    md, page = write_reports(ablation, out)
    console.print(comparison_table(ablation.results))
    console.print(f"results: {ablation.results_path}")
    console.print(f"report: {page} (and {md.name})")


def main() -> None:
    """Console-script entry point."""
    signals.install()
    try:
        app(prog_name="learner")
    except SystemExit as exc:
        if signals.received() is None:
            raise
        # Interrupted: every file is written (atomically). End now: interpreter shutdown
        # (freeing torch's state) can take a niced process under load tens of seconds,
        # beyond the watchdog, whose daemon thread stops at shutdown. A signal outside a
        # command's body (Click's "Aborted!", exit 1) also gets 128 + signal.
        signals.exit_now(0 if exc.code in (0, None) else signals.exit_code())


if __name__ == "__main__":
    main()
