"""Where training runs: one process, or many through accelerate (DDP, FSDP, DeepSpeed).

``vlaforge train`` is the same command in both cases; launch it with ``accelerate launch --num_processes N
-m vlaforge.cli.main train ...`` or ``torchrun --nproc_per_node N -m vlaforge.cli.main train ...`` and pass
``--distributed=ddp``. On CPU the process group uses gloo. ``fsdp`` and ``deepspeed`` are accepted by the config
but refused at start until they are verified on GPUs (with full-state-dict checkpointing).

:class:`SingleProcess` needs no process group (and no global accelerate state); :class:`Accelerated` wraps
accelerate's :class:`~accelerate.Accelerator`: model wrapping, gradient synchronization, mixed precision and
gradient clipping are accelerate's and torch.distributed's, not ours.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


class SingleProcess:
    rank, world, is_main = 0, 1, True

    def __init__(self, precision: str) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = precision == "bf16"

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        return model.to(self.device), optimizer

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def barrier(self) -> None:
        pass

    def reduce_mean(self, value: float) -> float:
        return value


class Accelerated:
    """Many processes through accelerate. ``kind``: ddp (fsdp and deepspeed are refused until verified)."""

    def __init__(self, kind: str, precision: str) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if kind != "ddp":
            # FSDP / DeepSpeed through accelerate need GPUs here and a gathered (full) state dict for our
            # checkpoints; neither could be verified on this project's CPU machines yet, so refuse rather than
            # write checkpoints that might be shards.
            raise NotImplementedError(f"--distributed={kind} is not available yet (it needs GPU verification); "
                                      f"use --distributed=ddp")
        # find_unused_parameters: heads may leave parts idle on a step (hybrid modes, guidance dropout)
        self.acc = Accelerator(cpu=not torch.cuda.is_available(),
                               mixed_precision="bf16" if precision == "bf16" else "no",
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.kind = kind
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        self.device = self.acc.device

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        return self.acc.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.acc.unwrap_model(model)

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.acc.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        with self.acc.no_sync(model):
            yield

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return self.acc.clip_grad_norm_(model.parameters(), max_norm)

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def reduce_mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        return float(self.acc.reduce(t, reduction="mean"))


def make_runtime(distributed: str, precision: str, deepspeed_config: str = "") -> SingleProcess | Accelerated:
    if distributed == "none":
        import os

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            raise ValueError(f"launched on {world} processes but --distributed=none: pass --distributed=ddp "
                             f"(or fsdp / deepspeed)")
        return SingleProcess(precision)
    return Accelerated(distributed, precision)
