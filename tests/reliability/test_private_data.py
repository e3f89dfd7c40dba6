"""Private data and safe loading (issue #7).

DICOM patient tags (the identifying attributes of the DICOM basic de-identification profile,
PS3.15 Annex E) never reach logs, reports, embeddings, checkpoints or caches: a cohort of
DICOM cines carrying distinctive values goes through validate, pretrain, embed, evaluate and
run, and every byte written is searched for them. Checkpoints load with
``weights_only=True``, cached arrays without pickle, YAML with the safe loader.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from learner.config import load_config
from learner.data.readers import read_scan
from learner.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "learner"

# Identifying attributes of the basic profile, each with a value found nowhere else.
SECRETS = {
    "PatientName": "ZZSECRET^PATIENTNAME",
    "PatientID": "ZZSECRETPATIENTID",
    "PatientBirthDate": "19010203",
    "OtherPatientIDs": "ZZSECRETOTHERID",
    "OtherPatientNames": "ZZSECRET^OTHERNAME",
    "PatientBirthName": "ZZSECRET^BIRTHNAME",
    "PatientMotherBirthName": "ZZSECRET^MOTHERNAME",
    "PatientAddress": "ZZSECRET PATIENT ADDRESS",
    "PatientTelephoneNumbers": "ZZSECRETPHONE",
    "MilitaryRank": "ZZSECRETRANK",
    "MedicalRecordLocator": "ZZSECRETRECORD",
    "PatientComments": "ZZSECRET PATIENT COMMENT",
    "AdditionalPatientHistory": "ZZSECRET PATIENT HISTORY",
    "InstitutionName": "ZZSECRET INSTITUTION",
    "InstitutionAddress": "ZZSECRET INSTITUTION ADDRESS",
    "ReferringPhysicianName": "ZZSECRET^REFERRER",
    "PerformingPhysicianName": "ZZSECRET^PERFORMER",
    "OperatorsName": "ZZSECRET^OPERATOR",
    "AccessionNumber": "ZZSECACCESSION",
    "StudyID": "ZZSECSTUDYID",
    "StationName": "ZZSECSTATION",
    "DeviceSerialNumber": "ZZSECRETSERIAL",
    "StudyDescription": "ZZSECRET STUDY DESCRIPTION",
}


def leaks(data: bytes) -> list[str]:
    """The secret values found in ``data`` (as written, and lower-cased)."""
    lowered = data.lower()
    return [
        key
        for key, value in SECRETS.items()
        if value.encode() in data or value.lower().encode() in lowered
    ]


@pytest.fixture(scope="module")
def dicom_cohort(
    tiny_cohort: Path,
    dicom_writer: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The tiny cohort re-written as DICOM cines carrying the secret tags; the manifest keeps
    opaque pseudonyms (anon00, ...) as patient_id. Returns the manifest path."""
    root = tmp_path_factory.mktemp("dicom_cohort")
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    pseudonyms = {p: f"anon{i:02d}" for i, p in enumerate(sorted(frame["patient_id"].unique()))}
    paths = []
    for i, row in frame.iterrows():
        cine = read_scan(tiny_cohort.parent / row["path"]).array  # (T, H, W) uint8
        name = Path(pseudonyms[row["patient_id"]]) / f"scan{i:03d}.dcm"
        dicom_writer(root / name, cine, tags=SECRETS)
        paths.append(name.as_posix())
    frame["patient_id"] = frame["patient_id"].map(pseudonyms)
    frame["path"] = paths
    manifest = root / "manifest.csv"
    frame.to_csv(manifest, index=False)
    return manifest


def test_dicom_patient_tags_reach_no_output(
    dicom_cohort: Path,
    dicom_writer: Callable[..., Path],
    cli: Any,
    tmp_path: Path,
) -> None:
    inputs = dicom_cohort.parent
    sample = next(inputs.rglob("*.dcm")).read_bytes()
    assert set(leaks(sample)) == set(SECRETS), "the cohort must carry every secret"

    out = tmp_path / "out"
    settings = cli.settings(dicom_cohort, out / "cache", "data.split.ratios=[0.5,0.2,0.3]")
    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text("eval:\n  n_boot: 50\n")
    results = [
        cli.invoke(["validate", dicom_cohort]),
        cli.invoke(["pretrain", "--config", cli.config, *settings, "--out", out / "run"]),
        cli.invoke(
            [
                "embed",
                "--checkpoint",
                out / "run" / "checkpoints" / "best.ckpt",
                "--manifest",
                dicom_cohort,
                "--out",
                out / "embeddings.parquet",
            ]
        ),
        cli.invoke(
            [
                "evaluate",
                "--embeddings",
                out / "embeddings.parquet",
                "--out",
                out / "eval",
                "--config",
                eval_config,
            ]
        ),
        cli.invoke(["run", "--config", cli.config, *settings, "--out", out / "ablation"]),
    ]
    for result in results:
        cli.succeeds(result)

    # Errors about a DICOM file must not quote its tags either.
    frame = pd.read_csv(dicom_cohort, dtype=str, keep_default_na=False)
    dicom_writer(
        inputs / "header_only.dcm", np.zeros((2, 4, 4), np.uint8), tags=SECRETS, pixels=False
    )
    frame.loc[0, "path"] = "header_only.dcm"
    broken = inputs / "broken.csv"
    frame.to_csv(broken, index=False)
    failed = cli.invoke(["validate", broken])
    cli.fails(failed, 3, "header_only.dcm", "no pixel data")
    results.append(failed)

    transcript = "\n".join(r.output for r in results).encode("utf-8")
    assert "anon00" in transcript.decode(), "the manifest's pseudonyms may appear in outputs"
    assert leaks(transcript) == [], "patient tags in the console output"

    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    # Every kind of output was produced and is searched: checkpoints, embeddings, cached
    # arrays, TensorBoard and CSV logs, metrics, results, reports, figures.
    assert {".ckpt", ".parquet", ".npy", ".csv", ".json", ".md", ".html", ".png"} <= kinds
    # TensorBoard is optional; the dev extra installs it so that its event files are searched.
    assert any(p.name.startswith("events.out.tfevents") for p in files), "no TensorBoard log"
    found = {str(p.relative_to(out)): leaks(p.read_bytes()) for p in files}
    assert not {k: v for k, v in found.items() if v}, "patient tags written to disk"


# --------------------------------------------------------------------------- safe loading


class Payload:
    """Unpickling this object creates ``marker``: proof that pickle ran code from disk."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_checkpoints_with_pickled_objects_are_refused(
    tmp_path: Path, small_cohort: Any, decode_cache: Path, cli: Any
) -> None:
    """`embed` and `pretrain --resume` load checkpoints with weights_only=True: a checkpoint
    smuggling an object is a one-line data error and its code never runs."""
    manifest = small_cohort.write(tmp_path)
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"learner": {"config": {}}, "state_dict": {}, "extra": Payload(marker)}, ckpt)

    embed = ["embed", "--checkpoint", ckpt, "--manifest", manifest, "--out", tmp_path / "e.pq"]
    cli.fails(cli.invoke(embed), 3, "last.ckpt", "not a loadable learner checkpoint")
    settings = cli.settings(manifest, decode_cache)
    resume = ["pretrain", "--config", cli.config, *settings, "--out", run, "--resume"]
    cli.fails(cli.invoke(resume), 3, "last.ckpt", "not a loadable learner checkpoint")
    assert not marker.exists()


def test_yaml_is_read_with_the_safe_loader(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"train: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML"):
        load_config(config)
    assert not marker.exists()


def _keyword(call: ast.Call, name: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def test_no_loader_in_the_package_can_unpickle() -> None:
    """Static check: torch.load always with weights_only=True, np.load always with
    allow_pickle=False, YAML only through safe_load/safe_dump, no pickle at all."""
    offenders, loads = [], 0
    for source in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{source.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names]
                module = getattr(node, "module", None) or ""
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names) or (
                    module.split(".")[0] in ("pickle", "dill", "cloudpickle")
                ):
                    offenders.append(f"{where}: imports a pickle module")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else None
            attr = node.func.attr
            if owner_name == "torch" and attr == "load":
                loads += 1
                if _keyword(node, "weights_only") is not True:
                    offenders.append(f"{where}: torch.load without weights_only=True")
            elif owner_name == "np" and attr == "load":
                loads += 1
                if _keyword(node, "allow_pickle") is not False:
                    offenders.append(f"{where}: np.load without allow_pickle=False")
            elif owner_name == "yaml" and attr in ("load", "load_all", "full_load", "unsafe_load"):
                offenders.append(f"{where}: yaml.{attr} (use yaml.safe_load)")
            elif attr in ("read_pickle", "to_pickle"):
                offenders.append(f"{where}: {attr} (pickle)")
    assert not offenders, "\n".join(offenders)
    assert loads >= 3, f"only {loads} loaders found: the scan misses them"
