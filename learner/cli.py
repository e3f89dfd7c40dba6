"""Command-line interface (Typer). Every command is thin: it parses options, calls the
library, and turns :class:`learner.errors.LearnerError` into one line and an exit code.

Why one long module: most of its length is each command's options with their help texts and
examples; the work behind a command that puts several steps together is one call into
:mod:`learner.pipeline.commands`.
"""

from __future__ import annotations

import functools
import inspect
import re
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from learner import signals
from learner.errors import LearnerError


def unwrap_help(text: str | None) -> str | None:
    """A docstring's paragraphs each on one line, so that the terminal wraps ``--help``, not
    the source's line breaks (Typer keeps single newlines after the first paragraph). A
    paragraph starting with ``\\b`` keeps its lines (Click's no-rewrap marker)."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


class _ReadableHelp:
    """--help for people: paragraphs wrapped by the terminal (:func:`unwrap_help`), and flags
    (``--resume``, ``--help``) without a ``<bool>`` type: they take no value."""

    help: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = unwrap_help(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # shown as the type column's text
        return params


class _Command(_ReadableHelp, TyperCommand):
    pass


class _Group(_ReadableHelp, TyperGroup):
    pass


class _App(typer.Typer):
    """Every command of the app gets :class:`_ReadableHelp`."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    cls=_Group,
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


# What an interrupted command's user does next (the last stderr line stays "interrupted").
RESUME_HINTS = {
    "pretrain": "last.ckpt holds the last finished epoch: rerun the same command with --resume "
    "to continue exactly where it stopped",
    "run": "rerun the same command: finished cells are reused and the interrupted one resumes",
    "demo": "rerun the same command: the cohort and finished cells are reused",
}


def handle_errors(func: F) -> F:
    """Turn user errors into one line per problem and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LearnerError as exc:
            if _STATE["debug"]:
                traceback.print_exc()
            for line in shown_problems(exc.problems):
                err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            # 130 for Ctrl-C (SIGINT), 143 for SIGTERM: 128 + the signal's number.
            hint = RESUME_HINTS.get(func.__name__)
            if hint:
                err_console.print(f"note: {hint}", markup=False, highlight=False, soft_wrap=True)
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


def _print_version(value: bool) -> None:
    if value:
        from learner import __version__

        console.print(f"learner {__version__}", highlight=False)
        raise typer.Exit()


# A file with thousands of bad rows: the first problems on screen, the full list in a file.
MAX_PROBLEMS_SHOWN = 20
_COLUMN = re.compile(r"\bcolumn (\S+?):")


def shown_problems(problems: list[str]) -> list[str]:
    """The first :data:`MAX_PROBLEMS_SHOWN` problems, then one line counting the rest by
    column and naming a file that lists them all."""
    if len(problems) <= MAX_PROBLEMS_SHOWN:
        return list(problems)
    rest = problems[MAX_PROBLEMS_SHOWN:]
    kinds = Counter(
        f"in column {m.group(1)}" if (m := _COLUMN.search(line)) else "other" for line in rest
    )
    with tempfile.NamedTemporaryFile(
        "w", prefix="learner-problems-", suffix=".txt", delete=False, encoding="utf-8"
    ) as fh:
        fh.write("\n".join(problems) + "\n")
    if len(kinds) == 1:
        counted = f"of the same kind ({next(iter(kinds))})"
    else:
        counted = "(" + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + ")"
    return [
        *problems[:MAX_PROBLEMS_SHOWN],
        f"... and {len(rest)} more {counted}; all {len(problems)} are listed in {fh.name}",
    ]


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Print full tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _STATE["debug"] = debug


ColumnsOption = Annotated[
    str | None,
    typer.Option(
        help="Your manifest's names for the standard columns (patient_id, visit, path, score, "
        "zone, split) as comma-separated STANDARD=YOURS pairs, e.g. patient_id=ID,score=MMSE; "
        "quote the whole value if a name holds spaces."
    ),
]


class Modality(StrEnum):
    lus = "lus"
    mri = "mri"


class Preset(StrEnum):
    tiny = "tiny"
    demo = "demo"
    bench = "bench"


class OnError(StrEnum):
    skip = "skip"
    stop = "stop"


# Skipped rows shown on stderr before the rest is only counted (all are in the summary).
MAX_SKIPPED_SHOWN = 20


def report_skipped(skipped: list[Any], total: int, listed_in: Path | None) -> None:
    """One stderr line per skipped row (the first :data:`MAX_SKIPPED_SHOWN`), then a count."""
    for entry in skipped[:MAX_SKIPPED_SHOWN]:
        err_console.print(
            f"skipped: row {entry.row}: {entry.reason}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    rest = len(skipped) - MAX_SKIPPED_SHOWN
    where = f"; all are listed in {listed_in}" if listed_in is not None else ""
    if rest > 0:
        err_console.print(
            f"skipped: ... and {rest} more row(s){where}", markup=False, highlight=False
        )
    if skipped:
        err_console.print(
            f"warning: {len(skipped)} of {total} manifest row(s) skipped (their scans could "
            f"not be used){where}; fix them and rerun, or pass --on-error stop to stop at "
            "the first",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the cohort, runs and report.")] = Path(
        "demo-output"
    ),
) -> None:
    """Run the main job on the embedded synthetic LUS cohort: build the cohort (60 patients
    followed over time plus a pretraining pool of single-visit patients), pretrain mse /
    contrastive / weighted, evaluate change classification, print the comparison and write
    a report; the change is judged against the observed score and against the cohort's true
    severity (eval.target truth), and every embedding is read by the full-rank probe and by
    the low-capacity one ('+pca-auto' rows, run.probes [auto]).

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
        console.print(
            f"cohort: writing the synthetic LUS cohort (demo preset, pool of {DEMO_POOL}) ..."
        )
        write_cohort(
            "lus", cohort, patients=None, seed=0, preset="demo", preview=True, pool=DEMO_POOL
        )
    # The cohort knows its truth: judge change against it too, beside the observed score
    # (which also reads every embedding with the low-capacity probe: run.probes' default).
    cfg = load_config(DEMO_CONFIG, [f"data.manifest={manifest}", "eval.target=truth"])
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
    pool: Annotated[
        int,
        typer.Option(
            min=0,
            help="Add N single-visit patients (Q000 ...) marked split=pretrain: a "
            "cross-sectional pool used for pretraining only, never for change pairs.",
        ),
    ] = 0,
    nuisance: Annotated[
        float,
        typer.Option(
            help="Between-patient nuisance strength in [0, 1]: 1 = the standard cohort; "
            "lower shrinks each patient's anatomy and acquisition settings toward the "
            "typical ones (severity, scores and per-visit noise unchanged).",
        ),
    ] = 1.0,
    score_quantum: Annotated[
        float | None,
        typer.Option(
            help="Round scores to this step instead of the modality's own (S/F 5, MMSE 1): a "
            "coarser score for the same patients and images.",
        ),
    ] = None,
) -> None:
    """Write a synthetic longitudinal cohort as real files (mp4 / NIfTI) plus manifest.csv.

    Example: learner synth lus --out cohort --patients 40 --pool 200 --seed 0 --preview
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
        pool=pool,
        nuisance=nuisance,
        score_quantum=score_quantum,
    )
    kind = "null-control " if null else ""
    lines = [
        f"wrote a {kind}{modality.value} cohort: {files.patients} patients"
        + (f" ({pool} of them a single-visit pretraining pool)" if pool else "")
        + f", {files.scans} scans"
        + (f", nuisance strength {nuisance:g}" if nuisance != 1.0 else ""),
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
        str | None,
        typer.Option(
            help="Stable band for change labels: a raw score value or 'tertiles' (default: "
            "the config's eval.delta, else tertiles, as `evaluate` and `run` use).",
        ),
    ] = None,
    lower_is_better: Annotated[
        bool, typer.Option("--lower-is-better", help="A higher score means worse health.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML config: its eval.delta and data.higher_is_better are used, the "
            "scans are checked against its data.input.kind and model.encoder, and the scores "
            "against its data.score_range (before any training)."
        ),
    ] = None,
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
    columns: ColumnsOption = None,
) -> None:
    """Check a manifest and its files; print patients, visits, scans, score range and
    change pairs per class. Exit 3 with one line per problem; with --config, exit 2 when the
    scans are of another kind than its data.input.kind and model.encoder read.

    A change_label column (the clinician's worsen / stable / improve for the change from the
    previous visit, on the later visit) labels its pairs instead of the score: the summary
    counts the pairs with a clinician label, and an unknown value, rows of a visit that
    disagree or a label on a first visit are errors.

    Warnings (stderr), the same `evaluate`, `run` and `predict` give: a class missing from
    the pairs or with few of them, one class dominating, few patients with pairs, and with
    --config scores outside data.score_range.

    Example: learner validate cohort/manifest.csv --delta 2
    """
    from learner.config import load_config
    from learner.data.manifest import check_scans, load_manifest, parse_column_map
    from learner.data.pairs import resolve_delta
    from learner.data.summary import (
        render_scan_kinds,
        render_summary,
        summarize_manifest,
        summary_warnings,
    )
    from learner.errors import ConfigError
    from learner.evaluate.data_warnings import data_warnings

    cfg = load_config(config, None) if config is not None else None
    band, _ = resolve_delta(delta, config=(str(config), cfg.eval.delta) if cfg else None)
    higher = not lower_is_better and (cfg is None or cfg.data.higher_is_better)

    feature_columns = None
    if features is not None:
        feature_columns = [c.strip() for c in features.split(",") if c.strip()]
        if not feature_columns:
            raise ConfigError("--features is empty; name the columns, e.g. --features a,b,c")
    loaded = load_manifest(
        manifest, feature_columns=feature_columns, columns=parse_column_map(columns)
    )
    if cfg is not None:
        from learner.train.prepared import check_input_kind

        check_input_kind(cfg, loaded)
    kinds: Counter[tuple[str, str]] = Counter()
    decoded = check_scans(loaded, kinds) if decode else None
    summary = summarize_manifest(loaded, delta=band, higher_is_better=higher)
    # The warnings `run`, `evaluate` and `predict` give (learner.evaluate.data_warnings), on
    # the manifest's pairs; with --config, its scores against data.score_range too.
    data_lines = data_warnings(
        delta=band,
        pair_counts=[
            {"class_counts_test": summary.pairs, "n_test_patients": summary.pair_patients}
        ],
        scores=loaded.frame["score"].to_numpy(dtype=float) if cfg is not None else None,
        score_range=cfg.data.score_range if cfg is not None else None,
        judged_on="manifest",
    )
    for line in [*loaded.warnings, *summary_warnings(summary), *data_lines]:
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    render_summary(summary, console)
    if decoded is not None and feature_columns is None:
        render_scan_kinds(kinds, console)
        console.print(f"scan files decoded: {decoded}, all readable")


class Missing(StrEnum):
    stop = "stop"
    skip = "skip"


@app.command("manifest")
@handle_errors
def manifest_(
    table: Annotated[
        Path,
        typer.Option(
            help="The clinic's table: one row per visit (or scan); separator, decimal mark "
            "and line endings are sniffed."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The manifest to write (.csv).")],
    path: Annotated[
        list[str] | None,
        typer.Option(
            "--path",
            help="Scan file template filled from the table's columns, e.g. \"axl/{MRI ID}"
            "_axl.nii.gz\" (relative to the table's folder, or absolute). Repeat it as "
            "ZONE=TEMPLATE for several views or zones. Default: the table's path column.",
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="The table's column for each manifest column, e.g. "
            "patient_id=Subject ID,visit=MR Delay,score=MMSE."
        ),
    ] = None,
    sep: Annotated[
        str | None, typer.Option(help="The table's separator: , ; | or tab (default: sniffed).")
    ] = None,
    decimal: Annotated[
        str | None, typer.Option(help="The table's decimal mark: . or , (default: sniffed).")
    ] = None,
    date_format: Annotated[
        str | None,
        typer.Option(
            help="The visits are dates in this strptime format, e.g. %d/%m/%Y; written as "
            "ISO dates. Without it visits are numbers, ISO dates, or labels (V1, V2 ...; "
            "bl/baseline = 0, m06 = 6 ...)."
        ),
    ] = None,
    missing: Annotated[
        Missing,
        typer.Option(
            help="A scan file that does not exist: stop with an error, or skip it and report "
            "what was skipped."
        ),
    ] = Missing.stop,
    keep: Annotated[
        str | None,
        typer.Option(help="More table columns to copy into the manifest, e.g. nWBV,CDR."),
    ] = None,
    delta: Annotated[
        str | None,
        typer.Option(
            help="Stable band for the summary's change pairs: a raw score value or 'tertiles'."
        ),
    ] = None,
) -> None:
    """Build a manifest from a clinic's table and the scan files, then print its summary
    (as `learner validate` does, without decoding the scans).

    Example: learner manifest --table oasis_longitudinal_demographic.csv --out manifest.csv
    --columns "patient_id=Subject ID,visit=MR Delay,score=MMSE" --path "axl=axl/{MRI ID}_axl.nii.gz"
    --path "cor=cor/{MRI ID}_cor.nii.gz" --missing skip
    """
    from learner.data.builder import build_manifest
    from learner.data.manifest import parse_column_map
    from learner.data.pairs import resolve_delta
    from learner.data.summary import render_summary, summarize_manifest, summary_warnings
    from learner.data.table import parse_decimal, parse_separator

    kept = [c.strip() for c in (keep or "").split(",") if c.strip()]
    built = build_manifest(
        table,
        out,
        templates=path or (),
        columns=parse_column_map(columns),
        sep=parse_separator(sep),
        decimal=parse_decimal(decimal),
        date_format=date_format,
        missing=missing.value,
        keep=kept,
    )
    say = functools.partial(console.print, markup=False, highlight=False, soft_wrap=True)
    say(f"table {built.table}; {built.table_rows} rows")
    say(f"visits: {built.visits}")
    for line in built.skipped_lines():
        say(line)
    say(
        f"wrote {built.path}: {len(built.manifest.frame)} scans from {built.rows_used} of "
        f"{built.table_rows} table rows"
    )
    band, _ = resolve_delta(delta)
    summary = summarize_manifest(built.manifest, delta=band, higher_is_better=True)
    for line in [*built.notes, *built.manifest.warnings, *summary_warnings(summary)]:
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    render_summary(summary, console)
    say(f"next: learner validate {built.path} (decodes every scan)")


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
    resume_changed: Annotated[
        bool,
        typer.Option(
            "--resume-changed",
            help="With --resume: continue although settings, manifest or split differ from "
            "the run's (they are named; without this flag the resume is refused).",
        ),
    ] = False,
    columns: ColumnsOption = None,
) -> None:
    """Pretrain an encoder on many patients (score MSE + pair objective); writes a run folder.

    Example: learner pretrain --config configs/demo.yaml --set objective.name=weighted --out runs/w
    """
    from learner.config import load_config
    from learner.pipeline.commands import pretrain_warnings
    from learner.train.pretrain import pretrain as run_pretrain

    cfg = _with_columns(load_config(config, set_), columns)
    result = run_pretrain(cfg, out or cfg.train.out, resume=resume, resume_changed=resume_changed)
    if _is_rank_zero():  # under DDP every rank runs this command
        console.print(f"run folder: {result.run_dir}")
        console.print(f"best checkpoint: {result.best}")
        for line in pretrain_warnings(cfg, result.run_dir):
            err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)


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
    device: Annotated[
        str, typer.Option(help="Where the encoder runs: cpu, cuda, cuda:1 or auto.")
    ] = "cpu",
    on_error: Annotated[
        OnError,
        typer.Option(
            help="A row whose scan is missing, unreadable or of another kind than the model's: "
            "stop (exit 3 naming the row) or skip it (listed on stderr; exit 3 only when no "
            "row is left). Default stop: evaluation pairs need every scan.",
        ),
    ] = OnError.stop,
) -> None:
    """Embed every scan of a manifest with a pretrained encoder (one process on --device,
    whatever train.devices the checkpoint was trained with).

    Example: learner embed --checkpoint run/checkpoints/best.ckpt --manifest m.csv --out e.parquet
    """
    from learner.pipeline.embed import embed_checkpoint

    skipped: list[Any] | None = [] if on_error == OnError.skip else None
    path = embed_checkpoint(
        checkpoint, manifest, out, clips_per_scan=clips_per_scan, device=device, skipped=skipped
    )
    console.print(f"embeddings: {path}")
    if skipped:
        from learner.evaluate.embeddings_io import read_embeddings

        embedded = len(read_embeddings(path)[0])
        skipped.sort(key=lambda entry: entry.row)
        console.print(f"{embedded} scans embedded, {len(skipped)} row(s) skipped", highlight=False)
        report_skipped(skipped, embedded + len(skipped), None)


@app.command()
@handle_errors
def evaluate(
    embeddings: Annotated[Path, typer.Option(help="Parquet from `learner embed`.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and figures.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (evaluation section).")] = None,
    delta: Annotated[
        str | None,
        typer.Option(
            help="Stable band: a raw score value or 'tertiles' (default: --config's eval.delta, "
            "else the band the embeddings' run used, else tertiles)."
        ),
    ] = None,
) -> None:
    """Classify worsen / stable / improve between consecutive visits from embeddings.

    Embeddings without change pairs (one visit per patient) get the inter-patient evaluation
    instead: score MAE and Figure 1's rho across held-out patients.

    Example: learner evaluate --embeddings e.parquet --out eval --delta 2
    """
    from learner.pipeline.commands import evaluate_embeddings

    evaluation = evaluate_embeddings(embeddings, out, config=config, delta=delta)
    result = evaluation.change
    if result is None:
        _print_interpatient(evaluation)
        return
    for note in result.warnings:
        err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "spearman_distance", "score_mae"):
        lo, hi = result.ci95.get(key, (float("nan"), float("nan")))
        console.print(f"{key:>18}: {result.metrics[key]:.3f}  [{lo:.3f}, {hi:.3f}]")
    hd = result.head_delta.get("balanced_accuracy", float("nan"))
    console.print(f"{'head_delta bal.acc':>18}: {hd:.3f}")
    counts = ", ".join(f"{k} {v}" for k, v in result.class_counts_test.items())
    console.print(
        f"stable band: |change| <= {result.band:.4g} score units ({evaluation.band}, from "
        f"{evaluation.band_source}); test pairs: {counts}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"metrics: {evaluation.metrics_path}")
    if evaluation.change_model is None:
        err_console.print(
            "note: the embeddings do not name an existing checkpoint, so no change model was "
            "saved; embed with `learner embed --checkpoint ...` (or use `learner run`)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"change model: {evaluation.change_model}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _print_interpatient(evaluation: Any) -> None:
    """`evaluate` on one-visit data: held-out inter-patient rho and score MAE with CIs."""
    from learner.evaluate.interpatient import INTERPATIENT_METRICS

    result, name = evaluation.interpatient, evaluation.name
    for note in evaluation.warnings:
        err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"no change pairs (one labelled visit per patient): inter-patient evaluation on "
        f"{result.n_patients} held-out patients",
        markup=False,
    )
    for key in INTERPATIENT_METRICS:
        lo, hi = result.ci95[name][key]
        console.print(f"{key:>18}: {result.metrics[name][key]:.3f}  [{lo:.3f}, {hi:.3f}]")
    console.print(f"metrics: {evaluation.metrics_path}")


@app.command()
@handle_errors
def run(
    config: Annotated[Path, typer.Option(help="YAML config with run.objectives and run.seeds.")],
    out: Annotated[Path, typer.Option(help="Folder for every cell, results.json and reports.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set run.seeds=[0,1,2]."),
    ] = None,
    replace_changed: Annotated[
        bool,
        typer.Option(
            "--replace-changed",
            help="Retrain cached cells whose inputs changed (config, manifest, split, version) "
            "instead of stopping; their old checkpoints are deleted.",
        ),
    ] = False,
    columns: ColumnsOption = None,
) -> None:
    """Pretrain + embed + evaluate every objective and seed; write results.json and reports.

    Finished cells in OUT are reused only when their key (the settings, manifest content,
    split and version that made them) still holds: a changed evaluation setting re-evaluates
    the cached embeddings; a changed pretraining input stops the run and names the key.

    Example: learner run --config configs/demo.yaml --out runs/ablation
    """
    from learner.config import load_config

    _run_and_report(
        _with_columns(load_config(config, set_), columns), out, replace_changed=replace_changed
    )


@app.command()
@handle_errors
def predict(
    model: Annotated[
        Path,
        typer.Option(
            help="A change-model folder, or a `learner run` folder (its validation-chosen model)."
        ),
    ],
    manifest: Annotated[
        Path, typer.Option(help="Manifest of the new patients' scans; scores are optional.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Pair predictions, .csv or .parquet; scans, zones and a summary go beside it."
        ),
    ],
    device: Annotated[
        str, typer.Option(help="Where the encoder runs: cpu, cuda, cuda:1 or auto.")
    ] = "cpu",
    columns: ColumnsOption = None,
    on_error: Annotated[
        OnError,
        typer.Option(
            help="A row whose scan is missing, unreadable or of another kind than the model's: "
            "skip it (listed on stderr and in the summary's 'skipped'; exit 0, or 3 when no "
            "row is left) or stop at the first (exit 3 naming the row).",
        ),
    ] = OnError.skip,
) -> None:
    """Predict for new patients: a score per scan, and worsen / stable / improve
    probabilities per consecutive visit pair (class order worsen, stable, improve).

    Columns of OUT, one row per consecutive visit pair:

    - patient_id, zone (with zones), visit_from, visit_to: as in the manifest
    - visit_order_from, visit_order_to: the visits' order, 0, 1, ...
    - p_worsen, p_stable, p_improve: 3 decimals in CSV, full in Parquet
    - label: the probe's label, the most probable class
    - head_label: the regression head's label: predicted_change in the
      model's stable band and direction
    - agree: whether label and head_label are the same
    - answer: the label to read, that of answer_from
    - answer_from: probe or head, whichever had the higher balanced
      accuracy on the model's validation patients (probe on a tie);
      'probe (no validation choice recorded)' for an older model
    - predicted_change: the regression head's score change
      (score_to - score_from, raw units)
    - distance: cosine distance of the two visit embeddings
    - n_zones (with zones); score_from, score_to, change, true_label
      (where both visits have a score, or the manifest's change_label
      column gives the clinician's label of the pair, which then wins);
      true_label_source (with a change_label column): clinician or score
    - ood_score: the largest of the pair's scans' ood_score (below);
      ood: whether any of them is flagged
    - caveat: empty, or why not to trust the row: the model's held-out
      test CI includes chance, it is not above an untrained encoder,
      or the model has no held-out record; a scan unlike the training
      scans (ood)
    - model_record: that record in one line (test balanced accuracy
      with 95% CI, chance, untrained, head_delta, test pairs)

    Beside OUT: OUT_scans (pred_score per scan; seen: the patient's split
    in the model's training, external if never seen; ood_input_score and
    ood_embedding_score: distance to the training scans at the encoder's
    input and in its embedding / the 95th percentile of the validation
    scans'; ood_score: the larger; ood_p: the smaller conformal p-value;
    ood: flagged beyond the validation scans' 99th percentile by either
    part; ood_by: input, embedding or input+embedding; empty for a model
    saved without an OOD reference), OUT_zones (with
    zones), OUT_summary.json (the model's whole record, caveat, the
    answer's source, rule and validation numbers, the labels the
    model's probe was trained on (clinicians' change_label or the
    score's), counts, notes, warnings, metrics on pairs with a true
    label). Warnings, as validate,
    evaluate and run give them: on the pairs with scores, a class
    missing or with few pairs, one class dominating, few patients;
    scores outside the model's data.score_range. When the caveat is set a warning
    is printed: read the labels as no better than a guess. Scans flagged ood
    (another view, modality or preprocessing?) are predicted and counted in a
    warning.

    Rows whose scans cannot be used are skipped and listed (--on-error stop to stop instead);
    pairs are formed from the visits that remain.

    Example: learner predict --model runs/demo --manifest new/manifest.csv --out predictions.csv
    """
    from learner.api import load_model
    from learner.data.manifest import parse_column_map
    from learner.pipeline.predict import model_labels_line, predict_change, write_predictions
    from learner.pipeline.record import record_lines

    loaded = load_model(model, device=device)
    selection = loaded.info.get("selection")
    chosen = f" ({selection['cell']}, chosen on validation patients)" if selection else ""
    console.print(f"model: {loaded.folder}{chosen}", highlight=False, soft_wrap=True)
    for line in record_lines(loaded.record):
        console.print(f"record: {line}", markup=False, highlight=False, soft_wrap=True)
    if loaded.caveat:
        err_console.print(
            f"warning: do not trust these predictions: {loaded.caveat} (every row carries "
            "this caveat)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"answer: {_answer_line(loaded)}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"labels: {model_labels_line(loaded.info)}", markup=False, highlight=False, soft_wrap=True
    )
    mapping = parse_column_map(columns) if columns is not None else None
    result = predict_change(loaded, manifest, columns=mapping, on_error=on_error.value)
    for note in result.summary["notes"]:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for line in result.summary["warnings"]:
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    ood_line = _ood_warning(result.summary)
    if ood_line:
        err_console.print(f"warning: {ood_line}", markup=False, highlight=False, soft_wrap=True)
    written = write_predictions(result, out)
    summary = result.summary
    skipped = summary["skipped_rows"]
    true_labels = summary["labels"].get("true_labels")
    labelled = (
        f"{summary['labelled_pairs']} with a true label: {true_labels['clinician']} from "
        f"clinicians' change_label, {true_labels['score']} from scores"
        if true_labels is not None
        else f"{summary['labelled_pairs']} with scores"
    )
    console.print(
        f"{summary['patients']} patients, {summary['scans']} scans, {summary['pairs']} visit "
        f"pairs ({labelled})" + (f", {skipped} row(s) skipped" if skipped else ""),
        highlight=False,
    )
    if skipped:
        from learner.data.manifest import SkippedRow

        rows = [SkippedRow(**entry) for entry in summary["skipped"]]
        report_skipped(rows, summary["scans"] + skipped, written["summary"])
    answer = summary["answer"]
    if answer["pairs_disagreeing"]:
        console.print(
            f"probe and head disagree on {answer['pairs_disagreeing']} of {summary['pairs']} "
            "pair(s) (agree column)",
            highlight=False,
        )
    metrics = summary.get("metrics")
    if metrics:
        judged = "pairs with a true label" if true_labels is not None else "pairs with scores"
        console.print(
            f"on {judged}: accuracy {metrics['accuracy']:.3f}, balanced accuracy "
            f"{metrics['balanced_accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} (probe); "
            "balanced accuracy by label: "
            + ", ".join(f"{k} {v:.3f}" for k, v in metrics["balanced_accuracy_by_label"].items()),
            highlight=False,
        )
    for key, path in written.items():
        console.print(f"{key}: {path}", markup=False, highlight=False, soft_wrap=True)


def _ood_warning(summary: dict[str, Any], shown: int = 3) -> str:
    """One line counting the scans (and pairs) unlike the model's training scans, naming the
    first few (highest ood_score first); empty when none is flagged."""
    ood = summary.get("ood") or {}
    flagged = ood.get("flagged") or []
    if not flagged:
        return ""
    names = ", ".join(
        f"{s['patient_id']} visit {s['visit']} (ood_score {s['ood_score']:.1f}"
        + (f", by {s['ood_by']})" if s.get("ood_by") else ")")
        for s in flagged[:shown]
    )
    more = f" and {len(flagged) - shown} more" if len(flagged) > shown else ""
    return (
        f"{len(flagged)} of {summary['scans']} scan(s) unlike the model's training scans "
        f"(ood: at the encoder's input or in its embedding, farther than the validation "
        f"scans' 99th percentile), in "
        f"{ood['pairs_flagged']} of {summary['pairs']} pair(s): {names}{more}; predicted "
        "anyway, each such pair's caveat says so: check view, modality and preprocessing"
    )


def _answer_line(model: Any) -> str:
    """Which label the answer column reads, and the validation numbers it was chosen on."""
    source = model.answer_from
    numbers = (model.info.get("answer") or {}).get("balanced_accuracy_validation") or {}
    if source not in ("probe", "head"):
        return source
    shown = ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} n/a" for k, v in numbers.items()
    )
    return f"{source} (chosen on validation patients; balanced accuracy {shown or 'n/a'})"


def _with_columns(cfg: Any, columns: str | None) -> Any:
    """``--columns`` sets ``data.columns`` (the config's own mapping otherwise)."""
    from learner.data.manifest import parse_column_map

    if columns is not None:
        cfg.data.columns = parse_column_map(columns)
    return cfg


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
# Single-visit patients that only pretrain the demo's encoders (`learner synth --pool`): the
# pool is what makes them learn (benchmarks/reports/recipe-and-pool.md).
DEMO_POOL = 100


def _run_and_report(cfg: Any, out: Path, *, replace_changed: bool = False) -> None:
    """Shared by `run` and `demo`: the ablation grid, the table, the reports."""
    from learner.pipeline.commands import run_and_report
    from learner.pipeline.report import print_comparison, print_target, verdict_text

    log = functools.partial(console.print, highlight=False, markup=False, soft_wrap=True)
    warn = functools.partial(err_console.print, highlight=False, markup=False, soft_wrap=True)
    outcome = run_and_report(cfg, out, replace_changed=replace_changed, log=log, warn=warn)
    ablation, md, page = outcome.ablation, outcome.report_md, outcome.report_html
    print_comparison(ablation.results, console)
    print_target(ablation.results, console)
    ds = ablation.results["dataset"]
    if ds.get("stable_band") is not None:
        console.print(
            f"stable band: |change| <= {ds['stable_band']:.4g} score units "
            f"(eval.delta {cfg.eval.delta}); test pairs of the first seed: "
            + ", ".join(f"{k} {v}" for k, v in (ds.get("class_counts_test") or {}).items()),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for line in verdict_text(ablation.results):
        console.print(line, markup=False, highlight=False)
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
