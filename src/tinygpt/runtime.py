"""Where and how computation runs: device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from tinygpt.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no usable CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but this machine has no usable Apple GPU")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed every generator a run may touch; tinygpt's own streams use explicit generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
