"""Where training runs: one process, or many through accelerate (DDP, FSDP, DeepSpeed).

``vlaforge train`` is the same command in both cases; launch it with ``accelerate launch --num_processes N
-m vlaforge.cli.main train ...`` or ``torchrun --nproc_per_node N -m vlaforge.cli.main train ...`` and pass
``--distributed=ddp`` (accelerate's DDP) or ``--distributed=fsdp`` (torch's ``fully_shard``). On CPU the
process group uses gloo. ``deepspeed`` is accepted by the config but refused at start until it is verified on
GPUs (with full-state-dict checkpointing).

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
    shards = False

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

    def full_state_dict(self, model: nn.Module) -> None:
        return None  # the module itself holds full weights


class TorchFSDP(SingleProcess):
    """Fully sharded data parallel with torch's own ``fully_shard`` (FSDP2): gloo on CPU, NCCL on GPUs.

    Every block of every ``nn.ModuleList`` that trains (decoder layers, vision layers, DiT blocks, expert
    layers) becomes one shard group, then the root; parameters are re-created as shards, so the optimizer is
    built after :meth:`shard`. Checkpoints gather the full state dict (a collective: every rank calls
    :meth:`full_state_dict`). Resuming a sharded run and EMA are not supported yet and are refused.
    """

    shards = True

    def __init__(self, precision: str) -> None:
        import os

        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        if not dist.is_initialized():
            if "RANK" not in os.environ:
                raise RuntimeError("--distributed=fsdp needs a launcher: torchrun --nproc_per_node N -m "
                                   "vlaforge.cli.main train ... (or accelerate launch)")
            dist.init_process_group("nccl" if cuda else "gloo")
        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
        self.bf16 = precision == "bf16"

    def shard(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        model.to(self.device)
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    if any(p.requires_grad for p in block.parameters()):
                        fully_shard(block)
        fully_shard(model)
        return model

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        return model, optimizer  # shard() already placed it

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def barrier(self) -> None:
        self.dist.barrier()

    def reduce_mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return float(t) / self.world

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class Accelerated:
    """Many processes through accelerate. ``kind``: ddp (deepspeed is refused until verified)."""

    shards = False

    def __init__(self, kind: str, precision: str) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if kind != "ddp":
            # DeepSpeed through accelerate needs GPUs and a gathered state dict for our checkpoints; it could not
            # be verified on this project's CPU machines yet, so refuse rather than write checkpoints of shards.
            raise NotImplementedError(f"--distributed={kind} is not available yet (it needs GPU verification); "
                                      f"use --distributed=ddp")
        # find_unused_parameters: heads may leave parts idle on a step (hybrid modes, guidance dropout)
        self.acc = Accelerator(cpu=not torch.cuda.is_available(),
                               mixed_precision="bf16" if precision == "bf16" else "no",
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
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

    def full_state_dict(self, model: nn.Module) -> None:
        return None  # DDP replicas hold full weights


def make_runtime(distributed: str, precision: str) -> SingleProcess | Accelerated:
    if distributed == "none":
        import os

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            raise ValueError(f"launched on {world} processes but --distributed=none: pass --distributed=ddp "
                             f"(or fsdp / deepspeed)")
        return SingleProcess(precision)
    if distributed == "fsdp":
        return TorchFSDP(precision)
    return Accelerated(distributed, precision)
