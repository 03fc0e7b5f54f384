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


class compiled:  # noqa: N801 (used as a function: compiled(fn, ...) stands in for fn)
    """`fn` through torch.compile, for `what` (named in the log). Where compiling is unavailable
    or fails (no C++ compiler, an unsupported operation or platform), `fn` runs as it is from
    then on, and one warning says so and why: results are the same either way. `shapes`: the
    distinct input shapes expected (each compiles once), so that none is refused as a recompile."""

    def __init__(self, fn, what: str, shapes: int = 1, **options):
        import torch

        self.fn, self.what, self.call = fn, what, fn
        try:
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, shapes)
            self.call = torch.compile(fn, dynamic=False, **options)
        except Exception as e:  # torch.compile raises RuntimeError, ImportError, ... where it cannot run
            self._fall_back(e)

    def _fall_back(self, error: Exception) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        logging.getLogger(__name__).warning("torch.compile is unavailable for %s (%s: %s): running it uncompiled",
                                            self.what, type(error).__name__, first_line[:300])
        self.call = self.fn

    def __call__(self, *args, **kwargs):
        if self.call is self.fn:
            return self.fn(*args, **kwargs)
        try:
            return self.call(*args, **kwargs)
        except Exception as e:  # a compile error surfaces at the first call with a new shape
            if "out of memory" in str(e):  # the model's own failure, not the compiler's
                raise
            self._fall_back(e)
            return self.fn(*args, **kwargs)
