"""SIGINT / SIGTERM (issue #16): every command ends within 10 s with 128 + the signal's number
(130, 143) and one 'interrupted' line, also niced and under CPU load; a training run stops at a
batch boundary, leaves a loadable ``last.ckpt`` and ``--resume`` ends with the weights of an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from learner.signals import GRACE_S

LEARNER = [sys.executable, "-m", "learner.cli"]
# The bound: a scheduler's SIGKILL follows SIGTERM after a few more seconds.
EXIT_LIMIT_S = 10.0
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@contextmanager
def cpu_load(processes: int = 2) -> Iterator[None]:
    """Busy processes at normal priority on every core of the test machine."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


@contextmanager
def killed_at_exit(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill ``proc`` when the block ends, also when a check in it fails."""
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def niced() -> None:
    os.nice(5)


def wait_until(done: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``done`` while ``proc`` runs (fails when it ends first or after 100 s)."""
    deadline = time.monotonic() + 100
    while not done():
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within 100 s"
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes], signum: int) -> tuple[float, str]:
    """Send ``signum``; return (seconds until the process ended, its stderr)."""
    start = time.monotonic()
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return time.monotonic() - start, stderr.decode("utf-8", errors="replace")


def assert_interrupted(
    proc: subprocess.Popen[bytes], signum: int, elapsed: float, err: str
) -> None:
    assert proc.returncode == 128 + signum, err[-2000:]
    assert elapsed < EXIT_LIMIT_S, f"ended {elapsed:.1f} s after the signal"
    assert "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted"


@pytest.fixture(scope="module")
def pretrain_command(
    small_cohort: Any, decode_cache: Path, cli: Any, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    """`learner pretrain` arguments of a 4-epoch tiny run (without --out)."""
    manifest = small_cohort.write(tmp_path_factory.mktemp("signals_cohort"))
    settings = cli.settings(manifest, decode_cache, "train.epochs=4")
    return ["pretrain", "--config", str(cli.config), *settings]


@pytest.fixture(scope="module")
def straight_weights(
    pretrain_command: list[str], cli: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    """Final weights of the uninterrupted run (in-process, one thread as the subprocesses)."""
    out = tmp_path_factory.mktemp("straight")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli.succeeds(cli.invoke([*pretrain_command, "--out", out]))
    finally:
        torch.set_num_threads(before)
    weights: dict[str, torch.Tensor] = torch.load(
        out / "checkpoints" / "last.ckpt", weights_only=True
    )["state_dict"]
    return weights


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_pretrain_under_load_then_resume_is_exact(
    signum: int,
    tmp_path: Path,
    pretrain_command: list[str],
    straight_weights: dict[str, torch.Tensor],
    cli: Any,
    subprocess_env: dict[str, str],
) -> None:
    command = pretrain_command
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [*LEARNER, *command, "--out", str(out)],
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=niced,
    )
    # The start-of-training last.ckpt, then its replacement at the end of epoch 0: the signal
    # arrives in a later epoch, so the resume starts from a trained state.
    with killed_at_exit(proc):
        wait_until(last.exists, proc, "the first last.ckpt")
        first = last.stat().st_ino
        wait_until(lambda: last.exists() and last.stat().st_ino != first, proc, "epoch 0's end")
        with cpu_load():
            time.sleep(0.2)
            elapsed, err = stop(proc, signum)
    assert_interrupted(proc, signum, elapsed, err)
    assert "--resume" in err.strip().splitlines()[-2]  # what to do next, before the last line

    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] < 3, "the run finished before the signal"
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    cli.succeeds(cli.invoke([*command, "--out", out, "--resume"]))
    a = straight_weights
    b = torch.load(last, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after the resume"
    # The CSV log kept the epochs before the stop, and the replayed epoch once.
    metrics = pd.read_csv(out / "logs" / "csv" / "metrics.csv")
    assert sorted(metrics.loc[metrics["val/loss"].notna(), "epoch"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_stopped_run_continues_to_the_uninterrupted_results(
    signum: int,
    tmp_path: Path,
    reference_run: Path,
    run_command: Callable[[Path, Path], list[str]],
    cli: Any,
    subprocess_env: dict[str, str],
) -> None:
    """SIGKILL: no clean-up of any kind; SIGTERM: the clean stop, within the limit."""
    out = tmp_path / "out"
    args = run_command(out, tmp_path / "cache")
    proc = subprocess.Popen(
        [*LEARNER, *args], env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    mse = out / "cells" / "mse" / "seed0" / "eval-diff" / "metrics.json"
    with killed_at_exit(proc):
        wait_until(mse.exists, proc, "the mse cell's metrics")
        elapsed, err = stop(proc, signum)
    if signum == signal.SIGTERM:
        assert_interrupted(proc, signum, elapsed, err)
    assert not (out / "results.json").exists(), "the run finished before it could be stopped"
    assert not (out / "cells" / "weighted" / "seed0" / "eval-diff" / "metrics.json").exists()

    result = cli.invoke(args)
    cli.succeeds(result)
    assert "mse: cached" in result.stdout and "weighted: running" in result.stdout
    resumed = json.loads((out / "results.json").read_text())
    reference = json.loads((reference_run / "results.json").read_text())
    assert resumed["objectives"] == reference["objectives"]
    assert resumed["comparisons"] == reference["comparisons"]


# A command whose library call blocks: in Python code (the handler interrupts it at once) or
# in one long native call (the handler cannot run; the watchdog ends the process).
BLOCKING = {
    "python": "while True: time.sleep(0.01)",
    "native": "hashlib.pbkdf2_hmac('sha256', b'k', b's', 2**31 - 1)",
}
COMMANDS = {
    "embed": (
        "learner.pipeline.embed",
        "embed_checkpoint",
        ["embed", "--checkpoint", "c.ckpt", "--manifest", "m.csv", "--out", "e.parquet"],
    ),
    "demo": ("learner.cli", "_run_and_report", ["demo", "--out", "demo-out"]),
}
CASES = [
    pytest.param(command, blocking, signum, id=f"{command}-{blocking}-{signum.name}")
    for command, blocking, signum in [
        ("embed", "python", signal.SIGTERM),
        ("demo", "python", signal.SIGINT),
        ("embed", "native", signal.SIGINT),
        ("demo", "native", signal.SIGTERM),
    ]
]


@pytest.mark.parametrize(("command", "blocking", "signum"), CASES)
def test_a_blocked_command_ends_within_the_limit(
    command: str, blocking: str, signum: int, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    module, function, argv = COMMANDS[command]
    # demo reuses a finished cohort: give it one (its config is not loaded either).
    (tmp_path / "demo-out" / "cohort").mkdir(parents=True)
    (tmp_path / "demo-out" / "cohort" / "manifest.csv").write_text("patient_id\n")
    code = (
        "import hashlib, importlib, sys, time\n"
        "from learner import cli, config\n"
        f"module = importlib.import_module({module!r})\n"
        "def blocked(*args, **kwargs):\n"
        "    print('ready', flush=True)\n"
        f"    {BLOCKING[blocking]}\n"
        f"setattr(module, {function!r}, blocked)\n"
        "config.load_config = lambda *a, **k: None\n"
        f"sys.argv = ['learner', *{argv!r}]\n"
        "cli.main()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=niced,
    )
    with killed_at_exit(proc):
        assert proc.stdout is not None
        lines = iter(proc.stdout.readline, b"")
        assert b"ready\n" in lines, "the command ended before blocking"
        time.sleep(0.5)  # from print('ready') into the blocking call
        elapsed, err = stop(proc, signum)
    assert_interrupted(proc, signum, elapsed, err)
    if command == "demo" and blocking == "python":  # the handler ran: it says what to do next
        assert "rerun the same command" in err
    if blocking == "native":
        assert elapsed >= GRACE_S - 0.5, "ended before the grace period: not by the watchdog"


def test_an_interrupt_swallowed_in_a_finaliser_is_delivered_again(
    subprocess_env: dict[str, str],
) -> None:
    """Python drops an exception raised in ``__del__`` ("Exception ignored"): seen when
    SIGTERM landed in a Lightning object's finaliser during `learner run`."""
    code = (
        "import os, signal, sys, time\n"
        "from learner import signals\n"
        "signals.install()\n"
        "class Finaliser:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        for _ in range(200):\n"
        "            time.sleep(0.001)  # the handler runs in here\n"
        "try:\n"
        "    Finaliser()\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', file=sys.stderr)\n"
        "    signals.exit_now(signals.exit_code())\n"
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 143, result.stderr[-2000:]
    assert time.monotonic() - start < GRACE_S, "ended by the watchdog, not by the interrupt"
    assert result.stderr.strip() == "interrupted", result.stderr[-2000:]
