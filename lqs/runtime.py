"""Process-level helpers shared by the stage CLIs: device choice and logging."""

from __future__ import annotations

import logging


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or Inf; the message names the step and sample."""


def resolve_device(device: str = "auto"):
    import torch  # here, not at import: the CPU-only stages never load torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
