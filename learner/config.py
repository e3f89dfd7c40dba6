"""Typed configuration: YAML files plus ``--set key=value`` overrides, validated by pydantic.

Every section rejects unknown keys, so a typo fails loudly with the key's dotted name. Relative
paths are resolved against the current working directory (the same rule for YAML and ``--set``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from learner.data.pairs import DEFAULT_DELTA
from learner.errors import ConfigError, closest
from learner.objective_hparams import HYPERPARAMETERS, ObjectiveName, PairSet, Partition, Weighting


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    """How a scan becomes a tensor."""

    kind: Literal["video", "image", "volume", "slices", "tabular"] = "video"
    frames: int = Field(8, ge=1, description="T: frames per clip, or slices for 'slices'.")
    size: int = Field(112, ge=8, description="Frame edge (clips) or grid edge (volumes).")
    channels: Literal[1, 3] = 1
    clips_per_scan: int = Field(1, ge=1, description="Eval-time clip samplings averaged per scan.")
    augment: float = Field(
        1.0,
        ge=0.0,
        le=4.0,
        description="Training augmentation strength: 1 = default ranges (crop, rotation, "
        "intensity), 2 = twice as wide, 0 = none.",
    )
    features: int | None = Field(
        None,
        ge=1,
        description="F of (F,) .npy feature files (tabular without feature_columns); "
        "null = read from the data.",
    )


class SplitConfig(_Section):
    """Patient-level split; ``folds`` switches to grouped k-fold in ``learner run``."""

    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int | None = Field(None, description="Split seed; null = train.seed.")
    folds: int | None = Field(None, ge=2)


class DataConfig(_Section):
    manifest: Path | None = None
    feature_columns: list[str] | None = None
    columns: dict[str, str] | None = Field(
        None, description="The manifest's names for standard columns: {patient_id: subject#}."
    )
    score_range: tuple[float, float] | None = Field(
        None, description="Score normalisation range; null = the training scans' range."
    )
    higher_is_better: bool = True
    input: InputConfig = Field(default_factory=InputConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache_dir: Path | None = Field(
        None, description="Decode cache; null = <manifest dir>/.learner-cache."
    )
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes; auto = the usable CPUs minus one (at most "
        "16) when training on a GPU, 0 on a CPU, where the workers would take the cores the "
        "training threads use.",
    )
    prefetch_factor: int = Field(
        2, ge=1, description="Batches each worker prepares ahead (with num_workers > 0)."
    )

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0 or auto")
        return v

    @field_validator("columns")
    @classmethod
    def _standard_columns(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        from learner.data.manifest import STANDARD_COLUMNS

        unknown = [key for key in v or {} if key not in STANDARD_COLUMNS]
        if unknown:
            close = closest(unknown[0], STANDARD_COLUMNS)
            hint = f"did you mean {close!r}? " if close else ""
            raise ValueError(
                f"{unknown[0]!r} is not a manifest column; {hint}map one of "
                f"{', '.join(STANDARD_COLUMNS)}"
            )
        return v

    @field_validator("score_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError("score_range must be [low, high] with low < high")
        return v


class ModelConfig(_Section):
    encoder: Literal["tsm_resnet18", "tsm_slices", "resnet2d_18", "resnet3d_18", "mlp"] = (
        "tsm_resnet18"
    )
    width: int = Field(64, ge=4, description="ResNet base width (64 = standard ResNet-18).")
    mlp_hidden: list[int] = [128, 128]
    mlp_embed_dim: int = Field(64, ge=2)
    pair_on: Literal["embedding", "projection"] = "embedding"
    head_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on u before the score head (training only)."
    )
    pretrained: Path | None = Field(
        None,
        description="A torchvision resnet18 state dict on disk (torch.save(model.state_dict(), "
        "path)) to start a 2D encoder from (tsm_resnet18, tsm_slices, resnet2d_18; width 64; "
        "input channels 1 or 3); copied in before the first epoch of pretraining, strictly. "
        "null = random init. MedicalNet / 3D weights are not supported. "
        "See docs/pretrained-weights.md.",
    )


def _hparam(name: str) -> Any:
    """The config field of objective hyperparameter ``name``: its default, bounds and
    description as declared in :data:`learner.objective_hparams.HYPERPARAMETERS`, which the
    objective modules check against too."""
    spec = HYPERPARAMETERS[name]
    if spec.choices:  # the field's Literal type holds them
        return Field(spec.default, description=spec.description)
    return Field(spec.default, allow_inf_nan=False, description=spec.description, **spec.bounds())


class ObjectiveConfig(_Section):
    """Pair objective; only the hyperparameters the named objective takes are passed to it.

    Defaults and allowed values come from :mod:`learner.objective_hparams`; a number must be
    finite and not a boolean, as the objective modules require.
    """

    name: ObjectiveName = "weighted"
    lam: float = _hparam("lam")
    tau: float = _hparam("tau")
    margin: float = _hparam("margin")
    partition: Partition = _hparam("partition")
    weighting: Weighting = _hparam("weighting")
    alpha: float = _hparam("alpha")
    temperature: float | None = _hparam("temperature")
    sigma: float = _hparam("sigma")
    score_noise: float = _hparam("score_noise")
    pairs: PairSet = _hparam("pairs")

    @field_validator(*(n for n, h in HYPERPARAMETERS.items() if not h.choices), mode="before")
    @classmethod
    def _not_a_boolean(cls, v: Any) -> Any:
        # pydantic reads true as 1.0; the objective modules reject it.
        if isinstance(v, bool):
            raise ValueError("must be a number, not a boolean")
        return v

    @model_validator(mode="after")
    def _pairs_supported(self) -> ObjectiveConfig:
        if self.score_noise > 0 and (
            self.name not in ("contrastive", "weighted") or self.partition != "threshold"
        ):
            raise ValueError(
                "objective.score_noise: only contrastive and weighted with partition: threshold "
                "take a noise-aware partition; set score_noise: 0 or change the objective"
            )
        if self.pairs != "inter" and self.name == "rnc":
            raise ValueError(
                "objective.pairs: rnc ranks inter-patient pairs only; use pairs: inter, or "
                "contrastive / weighted / yaware for intra or all"
            )
        return self


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=2)
    drop_last: bool = Field(
        False,
        description="Drop each epoch's last, incomplete training batch: needed where it can "
        "hold a single scan that the encoder reduces to one value per channel (a 3-D ResNet "
        "on 32^3 volumes), which batch norm cannot train on.",
    )
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    scheduler: Literal["cosine", "none"] = "cosine"
    grad_clip: float | None = Field(1.0, gt=0.0)
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    channels_last: bool = Field(
        False,
        description="Convolutions in channels-last memory layout: on a GPU, with bf16-mixed, "
        "about twice as fast (benchmarks/reports/gpu-check.md); no consistent gain on a CPU.",
    )
    seed: int = 0
    accelerator: str = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    deterministic: bool = True
    out: Path = Path("runs/pretrain")


class TargetColumn(_Section):
    """``eval.target: {column: NAME}``: a finer per-visit measurement of the manifest."""

    column: str = Field(description="The manifest column; empty cells where not measured.")
    higher_is_better: bool = Field(
        True, description="Whether a rising value means better health (nWBV: true)."
    )


class EvalConfig(_Section):
    delta: float | Literal["tertiles"] = DEFAULT_DELTA
    feature: Literal["diff", "concat", "hybrid", "rate"] = "diff"
    classifier: Literal["logreg", "logreg-cv", "mlp"] = "logreg"
    pca: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        0,
        description="The probe reads visit embeddings on their first k principal axes "
        "(training visits); 0 = the full embedding; auto = the low-capacity probe: k in "
        "2, 4, 8, 16, 32 and the logistic C chosen by balanced accuracy in folds of training "
        "patients.",
    )
    n_boot: int = Field(1000, ge=0)
    finetune: int = Field(
        0,
        ge=0,
        description="learner run: also fine-tune each encoder on the training patients' change "
        "pairs for at most this many epochs (validation patients pick the epoch); adds a "
        "'<objective>-ft' row per objective. 0 = off.",
    )
    finetune_lr: float = Field(
        1e-4, gt=0.0, description="Fine-tuning learning rate (eval.finetune)."
    )
    target: Literal["observed", "truth"] | TargetColumn = Field(
        "observed",
        description="What test pairs are also judged against. observed: the observed score's "
        "change (the labels the probe is fitted on). truth: the change of the latent severity "
        "in the truth.csv beside the manifest (synthetic cohorts). {column: NAME, "
        "higher_is_better: true}: a finer per-visit measurement in a manifest column (empty "
        "where not measured). Reported in results.json 'target', apart from the observed-score "
        "rows; the probe is still fitted on observed labels of training patients.",
    )

    @field_validator("delta")
    @classmethod
    def _non_negative(cls, v: float | str) -> float | str:
        if isinstance(v, float) and v < 0:
            raise ValueError("delta must be >= 0 or 'tertiles'")
        return v


class RunVariant(_Section):
    """One entry of ``run.objectives``: a label plus objective overrides."""

    label: str
    objective: dict[str, Any] = {}


class TransferEncoder(_Section):
    """One entry of ``run.transfer``: an encoder pretrained elsewhere, under a label."""

    label: str
    checkpoint: Path = Field(
        description="A learner checkpoint (pretrain's best.ckpt or last.ckpt) whose encoder "
        "reads the same input as data.input."
    )


class RunConfig(_Section):
    objectives: list[str | RunVariant] = ["mse", "contrastive", "weighted"]
    seeds: list[int] = [0]
    features: list[Literal["diff", "concat", "hybrid", "rate"]] = ["diff"]
    probes: list[Annotated[int, Field(ge=0)] | Literal["auto"]] | None = Field(
        None,
        description="Further probes read every row beside eval.pca's, each an eval.pca "
        "setting (0 = the full embedding, k, auto = the low-capacity probe); each adds a "
        "'<row>+pca-<setting>' row on the same cells. null (the default) = [auto] when "
        "eval.target is truth or a column (the low-capacity row beside the full-rank one "
        "where change is judged against a finer target), else none; [] = none.",
    )
    baselines: bool = Field(True, description="Also evaluate head_delta and untrained.")
    transfer: list[TransferEncoder] = Field(
        [],
        description="Encoders pretrained on another data set, embedded frozen and read by "
        "the same probe as every objective (cross-data-set transfer): one row per label.",
    )


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        enc, kind = self.model.encoder, self.data.input.kind
        expected = {
            "tsm_resnet18": "video",
            "tsm_slices": "slices",
            "resnet2d_18": "image",
            "resnet3d_18": "volume",
        }
        if enc in expected and kind != expected[enc]:
            raise ValueError(
                f"model.encoder {enc} needs data.input.kind {expected[enc]} (got {kind})"
            )
        if enc == "mlp" and kind != "tabular":
            raise ValueError("model.encoder mlp needs data.input.kind tabular")
        return self

    def to_plain(self) -> dict[str, Any]:
        """A JSON/YAML-safe dict (paths as strings)."""
        return self.model_dump(mode="json")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section; check the key name")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; the value is read as YAML (``[0,1]``, ``true``, ``1e-3``)."""
    parsed = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def _format_validation_error(exc: ValidationError, source: str) -> list[str]:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if not key:
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "extra_forbidden":
            close = suggest_key(key, sections=True)
            hint = f"did you mean '{close}'?" if close else "see configs/ for the valid keys"
            lines.append(f"{source}: unknown key '{key}'; {hint}")
        else:
            got = err.get("input")
            got_txt = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"{source}: key '{key}': {err['msg']}{got_txt}")
    return lines


def _section_of(annotation: Any) -> type[BaseModel] | None:
    is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_section else None


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every settable dotted key (``train.epochs``, ``data.input.size``, ...)."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        section = _section_of(info.annotation)
        keys += config_keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return keys


def suggest_key(key: str, *, sections: bool = False) -> str | None:
    """The valid dotted key closest to an unknown ``key``, ignoring case (with ``sections``,
    section names such as ``train`` count too): the "did you mean" of both ``--set`` and a
    YAML file's unknown key; ``None`` when none is close."""
    keys = config_keys()
    if sections:
        keys += sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})
    return closest(key, keys, cutoff=0.5)


def check_override_key(key: str) -> None:
    """Raise :class:`ConfigError` naming ``--set`` and the closest valid key for an unknown
    ``key`` (a key below a free-form entry such as ``data.columns.score`` is valid)."""
    model: type[BaseModel] | None = Config
    for part in key.split("."):
        if model is None:
            return
        if part not in model.model_fields:
            close = suggest_key(key)
            hint = f"did you mean --set {close}=...?" if close else "see configs/ for the keys"
            raise ConfigError(f"--set {key}: unknown key; {hint}")
        model = _section_of(model.model_fields[part].annotation)


def build_config(
    tree: dict[str, Any], overrides: list[str] | None = None, source: str = "config"
) -> Config:
    """Validate a config tree after applying ``--set`` overrides."""
    tree = copy.deepcopy(tree)
    for key, value in parse_overrides(overrides):
        check_override_key(key)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        lines = _format_validation_error(exc, source)
        raise ConfigError(lines[0], problems=lines) from None


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: Path) -> Path:
    """An existing file, or a shipped config named without folder or suffix (``lus``)."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / f"{path.name}.yaml"
    if path.parent == Path(".") and not path.suffix and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ConfigError(
        f"{path}: config file not found; pass an existing YAML file or a shipped config by "
        f"name ({names})"
    )


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (safe loader) and apply overrides; errors name the file and key."""
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{path}: not valid YAML ({first}); fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (data, model, ...)")
        tree = loaded
    return build_config(tree, overrides, source=source)


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from learner.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_plain(), sort_keys=False))
