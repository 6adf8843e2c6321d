"""Scale-out with PyTorch's own launcher: `torchrun --nproc-per-node N -m visionstress run ...`.

torchrun starts one process per rank with RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in the
environment; `World.from_environment` joins the process group (gloo on CPU, NCCL on CUDA). The runner
gives rank r the planned batches r, r + N, r + 2N, ... — every image exactly once, no padding (the
DistributedSampler pads with duplicates, which biases metrics) — and each rank journals its own
batches into the shared output folder; rank 0 merges the journals and computes the metrics once, so
the scorecard does not depend on N. Multi-node runs need `--out` on a filesystem every node sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's place in a distributed run (size 1, rank 0 when not launched by torchrun)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("VISIONSTRESS_BACKEND") != "gloo" \
                else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend)
        return cls(size=dist.get_world_size(), rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()
