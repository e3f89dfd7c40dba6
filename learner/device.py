"""Which torch device a command runs on: a user's ``--device`` name, or a config's
``train.accelerator`` (Lightning's names) reduced to the one device of a single process."""

from __future__ import annotations

import torch

from learner.errors import ConfigError


def on_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting resolves to CUDA GPUs here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def training_device(accelerator: str) -> torch.device:
    """The one device a ``train.accelerator`` setting trains on in a single process here:
    the first CUDA GPU where that setting selects one, else the CPU. `learner run` embeds
    and fine-tunes its cells there too, so a GPU run does not fall back to the CPU after
    pretraining."""
    return torch.device("cuda") if on_gpu(accelerator) else torch.device("cpu")


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """A user's device name (``cpu``, ``cuda``, ``cuda:N``, ``auto``) as a torch device, or
    a one-line ConfigError naming the option and what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option} {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option} {name}: learner runs on cpu or cuda; use cpu, cuda or auto")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{option} {name}: no CUDA GPU here; use {option} cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{option} {name}: this machine has {count} CUDA GPU(s), cuda:0 to "
                f"cuda:{count - 1}; pick one of those"
            )
    return device
