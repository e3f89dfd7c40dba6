"""Command-line interface (Typer). Every command is thin: it parses options, calls the
library, and turns :class:`learner.errors.LearnerError` into one line and an exit code.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from learner.errors import LearnerError, NotBuiltError

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
                err_console.print(f"error: {line}", markup=False, highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _STATE["debug"]:
                traceback.print_exc()
            else:
                err_console.print(
                    f"unexpected error: {type(exc).__name__}: {exc} "
                    "(rerun with `learner --debug ...` for the traceback and report it)",
                    markup=False,
                    highlight=False,
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


class Modality(str, Enum):
    lus = "lus"
    mri = "mri"


class Preset(str, Enum):
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
    raise NotBuiltError("`learner demo` is not built yet (issue #5: evaluation and report)")


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
    raise NotBuiltError("`learner synth` is not built yet (issue #2)")


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
) -> None:
    """Check a manifest and its files; print patients, visits, scans, score range and
    change pairs per class. Exit 3 with one line per problem.

    Example: learner validate cohort/manifest.csv --delta 2
    """
    raise NotBuiltError("`learner validate` is not built yet (issue #2)")


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
    raise NotBuiltError("`learner pretrain` is not built yet (issue #4)")


@app.command()
@handle_errors
def embed(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint from `learner pretrain`.")],
    manifest: Annotated[Path, typer.Option(help="Manifest of the scans to embed.")],
    out: Annotated[Path, typer.Option(help="Output Parquet file, one row per scan.")],
) -> None:
    """Embed every scan of a manifest with a pretrained encoder.

    Example: learner embed --checkpoint runs/w/checkpoints/best.ckpt --manifest m.csv --out e.parquet
    """
    raise NotBuiltError("`learner embed` is not built yet (issue #4)")


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
    raise NotBuiltError("`learner evaluate` is not built yet (issue #5)")


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
    raise NotBuiltError("`learner run` is not built yet (issue #5)")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="learner")


if __name__ == "__main__":
    sys.exit(main())
