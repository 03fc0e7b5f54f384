"""Several processes (GPUs) inside one job: launched by torchrun, NCCL on GPUs, gloo on CPU.

A stage calls `setup()`; with one process it is a no-op and everything below degenerates to
the single-process path, so the same code runs both ways.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

# Every DistributedDataParallel wrapper made by `data_parallel`, checked at `teardown`.
_wrappers: list[weakref.ref] = []


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: Any  # torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> bool:
    """Runs `python -m lqs argv` in `nproc` processes; False if there is nothing to launch
    (one process, or already inside torchrun)."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return False
    from torch.distributed.run import main as torchrun

    # Drop our --nproc: the children run under torchrun already, and torchrun's parser would
    # take it for an abbreviation of its own --nproc-per-node.
    child_argv = [a for i, a in enumerate(argv) if a != "--nproc" and (i == 0 or argv[i - 1] != "--nproc")
                  and not a.startswith("--nproc=")]
    torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "lqs", *child_argv])
    return True


def setup(device: str = "auto") -> Context:
    import torch
    import torch.distributed as dist

    from lqs.runtime import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(0, 1, resolve_device(device))
    local_rank = int(os.environ["LOCAL_RANK"])
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Context(dist.get_rank(), world, resolved)


def data_parallel(ctx: Context, model: Any) -> Any:
    """`model` wrapped in DistributedDataParallel under torchrun, `model` itself in one process.
    Drop every reference to the wrapper before `teardown`."""
    if ctx.world == 1:
        return model
    import torch

    wrapper = torch.nn.parallel.DistributedDataParallel(model)
    _wrappers.append(weakref.ref(wrapper))
    return wrapper


def all_gather(ctx: Context, obj: Any) -> list[Any]:
    if ctx.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


def teardown(ctx: Context) -> None:
    """Waits for every rank, then destroys the process group.

    A DDP wrapper still alive here would hold the group's last reference after it is destroyed,
    and freeing it later deadlocks about one run in twenty: its C++ reducer frees the gloo group
    while holding the GIL, and joins gloo's worker threads, one of which may still be freeing a
    finished collective's tensors and waits for the GIL (torch binds the process group itself
    with a destructor that releases the GIL; the reducer has none)."""
    if ctx.world > 1:
        import torch.distributed as dist

        if any(ref() is not None for ref in _wrappers):
            raise RuntimeError("lqs.distributed.teardown: a DistributedDataParallel wrapper is still "
                               "referenced; delete it first, or freeing it can deadlock")
        dist.barrier()
        dist.destroy_process_group()
