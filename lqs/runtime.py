"""Process-level helpers shared by the stage CLIs: device choice and logging."""

from __future__ import annotations

import json
import logging

# The line each stage logs when it ends (lqs.cli), read back by lqs.report:
# "stage stats: {"stage": …, "seconds": …, "unit": …, "counts": {…}}".
STATS_PREFIX = "stage stats: "


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or Inf; the message names the step and sample."""


def resolve_device(device: str = "auto"):
    import torch  # here, not at import: the CPU-only stages never load torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stats_message(stage: str, seconds: float, counts: dict[str, int]) -> str:
    """The stats line's message: the stage's own seconds and its counters; `unit`, the first
    counter, is what its throughput is given in."""
    return STATS_PREFIX + json.dumps({"stage": stage, "seconds": round(seconds, 6),
                                      "unit": next(iter(counts), None), "counts": counts})
