"""One answer per pair, explained (issue 28, item 2): the probe's label and the head's side
by side, whether they agree, and the one to read, chosen on validation patients."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from learner.api import load_model
from learner.cli import app
from learner.evaluate.answer import NO_CHOICE, RULE, choose_answer, head_labels
from learner.pipeline.predict import ANSWER_COLUMNS

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_choice_is_the_better_on_validation_and_the_probe_on_a_tie() -> None:
    truth = ["worsen", "stable", "improve", "stable"]
    better_head = choose_answer(
        truth, ["stable"] * 4, [-5.0, 0.0, 5.0, 1.0], band=2.0, higher_is_better=True
    )
    assert better_head["chosen"] == "head" and better_head["rule"] == RULE
    assert better_head["balanced_accuracy_validation"]["head"] == 1.0
    tie = choose_answer(truth, truth, [-5.0, 0.0, 5.0, 1.0], band=2.0, higher_is_better=True)
    assert tie["chosen"] == "probe"
    # Lower is better: a falling score is an improvement for the head as for the truth.
    assert head_labels([-5.0, 5.0], 2.0, higher_is_better=False).tolist() == ["improve", "worsen"]


def test_run_records_the_choice_and_predict_reports_both_labels(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    run = trained["run"]
    info = json.loads((run / "change-model" / "model.json").read_text())
    answer = info["answer"]
    assert answer["chosen"] in ("probe", "head") and answer["on"] == "validation patients"
    numbers = answer["balanced_accuracy_validation"]
    assert set(numbers) == {"probe", "head"}
    if all(v is not None for v in numbers.values()):
        assert answer["chosen"] == ("head" if numbers["head"] > numbers["probe"] else "probe")
    results = json.loads((run / "results.json").read_text())
    assert results["change_model"]["answer"] == answer

    out = tmp_path / "predictions.csv"
    result = runner.invoke(
        app,
        ["predict", "--model", str(run), "--manifest", str(trained["second"]), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert f"answer: {answer['chosen']} (chosen on validation patients" in result.output
    pairs = pd.read_csv(out)
    columns = list(pairs.columns)
    assert columns[columns.index("label") : columns.index("label") + 5] == list(ANSWER_COLUMNS)
    model = load_model(run)
    expected = head_labels(pairs["predicted_change"], model.band, higher_is_better=True)
    assert pairs["head_label"].tolist() == expected.tolist()
    assert (pairs["agree"] == (pairs["label"] == pairs["head_label"])).all()
    read = pairs["label"] if answer["chosen"] == "probe" else pairs["head_label"]
    assert (pairs["answer"] == read).all() and (pairs["answer_from"] == answer["chosen"]).all()
    summary = json.loads(out.with_name("predictions_summary.json").read_text())
    assert summary["answer"]["from"] == answer["chosen"] and summary["answer"]["rule"] == RULE
    assert summary["answer"]["pairs_agreeing"] == int(pairs["agree"].sum())
    assert set(summary["metrics"]["balanced_accuracy_by_label"]) == {"probe", "head", "answer"}


@pytest.mark.parametrize("recorded", ["head", None])
def test_the_answer_follows_the_recorded_choice_or_says_there_is_none(
    trained: dict[str, Path], tmp_path: Path, recorded: str | None
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained["run"] / "change-model", folder)
    info = json.loads((folder / "model.json").read_text())
    if recorded is None:
        info.pop("answer")  # a model saved before the choice existed
    else:
        info["answer"]["chosen"] = recorded
    (folder / "model.json").write_text(json.dumps(info))
    model = load_model(folder)
    result = model.predict_change(trained["second"])
    pairs = result.pairs
    if recorded is None:
        assert model.answer_from == NO_CHOICE
        assert (pairs["answer"] == pairs["label"]).all()
        assert (pairs["answer_from"] == NO_CHOICE).all()
        assert result.summary["answer"]["balanced_accuracy_validation"] is None
    else:
        assert (pairs["answer"] == pairs["head_label"]).all()
        assert (pairs["answer_from"] == "head").all()
    zones = result.zone_pairs
    assert zones is not None and set(ANSWER_COLUMNS) <= set(zones.columns)


def test_every_output_column_is_documented(trained: dict[str, Path]) -> None:
    result = load_model(trained["run"]).predict_change(trained["second"])
    columns = set(result.pairs.columns) | set(result.zone_pairs.columns)
    help_text = runner.invoke(app, ["predict", "--help"], terminal_width=200).output
    for page in ("predict.md", "api.md"):
        text = (DOCS / page).read_text(encoding="utf-8")
        spans = re.findall(r"`([^`]*)`", text)
        named = {word for span in spans for word in re.split(r"[^\w]+", span)}
        missing = sorted(columns - named)
        assert not missing, f"docs/{page} does not name {missing}"
    assert not [c for c in columns if c not in help_text]
