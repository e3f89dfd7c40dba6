from pathlib import Path

import pytest
from typer.testing import CliRunner

from learner.cli import app
from learner.config import build_config, load_config
from learner.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "learner" / "configs"


@pytest.mark.parametrize("name", ["demo", "lus", "mri", "tabular"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.objective.name in ("mse", "contrastive", "weighted", "yaware", "rnc")


def test_set_parses_values_as_yaml() -> None:
    cfg = build_config({}, ["run.seeds=[0,1,2]", "train.lr=1e-3", "data.higher_is_better=false"])
    assert cfg.run.seeds == [0, 1, 2]
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.higher_is_better is False


def test_bad_type_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        build_config({}, ["train.lr=abc"])
    assert len(exc.value.problems) == 1
    assert "train.lr" in exc.value.problems[0]


def test_unknown_key_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        build_config({"model": {"encodr": "mlp"}})
    assert "model.encodr" in exc.value.problems[0]


def test_yaml_key_typos_get_the_same_suggestion_as_set(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epoch: 5\nmodel:\n  Encoder: mlp\ntrian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    problems = exc.value.problems
    assert f"{path}: unknown key 'train.epoch'; did you mean 'train.epochs'?" in problems
    assert f"{path}: unknown key 'model.Encoder'; did you mean 'model.encoder'?" in problems
    assert f"{path}: unknown key 'trian'; did you mean 'train'?" in problems
    # --set names keys, never sections; nothing close keeps the old pointer.
    with pytest.raises(ConfigError, match=r"did you mean --set train\.epochs=\.\.\.\?"):
        build_config({}, ["Train.Epochs=5"])
    with pytest.raises(ConfigError, match="unknown key 'zzzz'; see configs/ for the valid keys"):
        build_config({"zzzz": 1})


def test_data_columns_key_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="'Score' is not a manifest column; did you mean 'score'"):
        build_config({"data": {"columns": {"Score": "MMSE"}}})


def test_encoder_and_input_must_agree() -> None:
    with pytest.raises(ConfigError, match=r"needs data\.input\.kind"):
        build_config({}, ["model.encoder=resnet3d_18"])


@pytest.mark.parametrize(
    ("override", "key"), [("train.lr=abc", "train.lr"), ("train.nope=1", "train.nope")]
)
def test_cli_exit_2_with_one_line(override: str, key: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--config",
            str(CONFIGS / "demo.yaml"),
            "--set",
            override,
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert key in lines[0] and "Traceback" not in result.output
