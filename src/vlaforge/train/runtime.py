"""Where training runs: one process, or many on torch.distributed (DDP through accelerate, FSDP2, DeepSpeed ZeRO).

``vlaforge train`` is the same command in every case; launch it with ``accelerate launch --num_processes N
-m vlaforge.cli.main train ...`` or ``torchrun --nproc_per_node N -m vlaforge.cli.main train ...`` and pass
``--distributed=ddp`` (accelerate's DDP), ``--distributed=fsdp`` (torch's ``fully_shard``) or
``--distributed=deepspeed --deepspeed_config=configs/deepspeed/zero2.json`` (accelerate's DeepSpeed integration).
On CPU the process group uses gloo, on GPUs NCCL.

Every runtime gathers full weights and the full optimizer state keyed by parameter name for checkpoints
(collectives), so a checkpoint is the same files whatever engine wrote it, and resumes under any of them. Model
wrapping, gradient synchronization, sharding, mixed precision and clipping are accelerate's, torch's and
DeepSpeed's, not ours.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def attention_kernels(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """The attention kernel a training forward uses: torch's choice, except under bf16 on a CPU, where it is the
    math kernel (plain matmuls + softmax, which bf16 runs on AMX / AVX512-BF16). torch's CPU flash kernel is fast
    in fp32, but its bf16 backward is about 10x slower than its fp32 one (torch 2.13 on a Xeon with AMX: 155 of a
    380 ms quick-start step), which ate all of bf16's gain (``bench/levers.py``: the ``bf16_flash`` lever)."""
    if not (bf16 and device.type == "cpu"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _backend() -> str:
    """torch.distributed's backend for this machine: NCCL on GPUs, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _require_launcher(engine: str) -> None:
    """A multi-process engine started without a launcher (no ``RANK`` in the environment) fails here, naming one."""
    if "RANK" not in os.environ:
        raise RuntimeError(f"--distributed={engine} needs a launcher: torchrun --nproc_per_node N -m "
                           f"vlaforge.cli.main train ... (or accelerate launch)")


def _retie(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make the gathered copies of a tied parameter one tensor again (as in ``state_dict()``), so a checkpoint
    keeps one name of it whichever engine gathered it."""
    first: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first and name in state and first[id(p)] in state:
            state[name] = state[first[id(p)]]
        first.setdefault(id(p), name)
    return state


class SingleProcess:
    rank, world, is_main = 0, 1, True
    shards = False  # parameters become shards: the optimizer (and EMA) are built after shard()
    supports_ema = True  # the unwrapped model's parameters are full, trainable weights an EMA can average
    supports_4bit = True  # a QLoRA base (bitsandbytes' packed uint8 weights + quantization state) trains as is

    def __init__(self, precision: str) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = precision == "bf16"

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        return model.to(self.device), optimizer

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def stepping_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        """The optimizer that updates the weights, under whatever wrapper :meth:`prepare` returned."""
        return getattr(optimizer, "optimizer", optimizer)

    math_attention = True  # under bf16 on a CPU (see attention_kernels); bench/levers.py turns it off to compare

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of this engine's forward."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training forward's context: the engine's autocast and, under CPU bf16, math attention."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._autocast())
        stack.enter_context(attention_kernels(self.device, self.bf16 and self.math_attention))
        return stack

    def backward(self, loss: torch.Tensor, micro_batches: int = 1) -> None:
        """Back-propagate one of ``micro_batches`` accumulated micro-batches' mean loss."""
        (loss / micro_batches).backward()

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def barrier(self) -> None:
        pass

    def reduce_mean(self, value: float) -> float:
        return value

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """``t`` of every rank (same shape everywhere), on the CPU, in rank order."""
        return [t]

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The full weights of ``module`` (a collective when sharded; only the main rank's result is complete)."""
        return self.unwrap(module).state_dict()

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state keyed by parameter name (``{"state": {name: {...}}, "param_groups": [...]}``), so
        a checkpoint resumes under any engine and world size. A collective when sharded."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.unwrap(model), optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=self.shards))

    def load_master_weights(self, model: nn.Module, path: Path) -> None:
        """After ``prepare``: restore, from the safetensors file ``path``, master weights an engine keeps apart from
        the module. Here the module's own parameters are the master weights, already loaded before ``prepare``
        (``load_train_weights``), so nothing is read."""

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load :meth:`optimizer_state`'s format (every rank passes the full state; sharded runs keep their shard)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        module = self.unwrap(model)
        # strict=False: parameters that never had a gradient (e.g. a guidance embedding while guidance is off) have
        # no state; torch creates zeros for them with a zero-lr step, removed again so they stay as in the run saved
        set_optimizer_state_dict(module, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        for name, param in module.named_parameters():
            if name not in state["state"]:
                optimizer.state.pop(param, None)


class _ProcessGroup:
    """Collectives over torch.distributed's default group (every multi-process runtime has one)."""

    rank: int
    world: int
    device: torch.device

    def barrier(self) -> None:
        torch.distributed.barrier()

    def reduce_mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t) / self.world

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        local = t.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local)
        return [p.cpu() for p in parts]


class TorchFSDP(_ProcessGroup, SingleProcess):
    """Fully sharded data parallel with torch's own ``fully_shard`` (FSDP2): gloo on CPU, NCCL on GPUs.

    Every block of every ``nn.ModuleList`` that trains (decoder layers, vision layers, DiT blocks, expert
    layers) becomes one shard group, then the root; parameters are re-created as shards, so the optimizer is
    built after :meth:`shard` (an EMA copy is sharded the same way). Checkpoints gather the full weights and the
    full optimizer state (collectives: every rank calls :meth:`full_state_dict` and :meth:`optimizer_state`).
    """

    shards = True
    supports_4bit = False  # FSDP would flatten and shard the packed weights apart from their quantization state

    def __init__(self, precision: str) -> None:
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        if not dist.is_initialized():
            _require_launcher("fsdp")
            dist.init_process_group(_backend())
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

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _retie(module, full)


class Accelerated(_ProcessGroup, SingleProcess):
    """Many processes through accelerate's DDP."""

    shards = False

    def __init__(self, kind: str, precision: str) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if kind != "ddp":
            raise ValueError(f"distributed: expected none | ddp | fsdp | deepspeed, got {kind!r}")
        # find_unused_parameters: heads may leave parts idle on a step (hybrid modes, guidance dropout)
        self._use(Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if precision == "bf16" else "no",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]))
        self.bf16 = precision == "bf16"

    def _use(self, acc: Any) -> None:
        """Take rank, world size and device from accelerate's ``Accelerator``."""
        self.acc = acc
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        self.device = acc.device

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        return self.acc.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        # not accelerate's unwrap_model: it imports deepspeed whenever it is installed (whose import prints "Setting
        # accelerator to ..." on every rank); DDP is the one wrapper accelerate's prepare puts around the model here
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.acc.autocast()

    def backward(self, loss: torch.Tensor, micro_batches: int = 1) -> None:
        self.acc.backward(loss / micro_batches)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        with self.acc.no_sync(model):
            yield

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return self.acc.clip_grad_norm_(model.parameters(), max_norm)


# DeepSpeed config fields that vlaforge's own training config decides
_DS_FILLED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping")


def deepspeed_config(path: str, batch_size: int, grad_accum: int, world: int, grad_clip: float,
                     precision: str) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill the fields the training config decides ("auto" or absent).

    A concrete value that contradicts the training config, an ``optimizer`` / ``scheduler`` section (vlaforge builds
    AdamW and the schedule from ``--optim``) or fp16 (use ``--precision=bf16``) is an error naming the field.
    """
    import json

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"deepspeed_config: no file at {path}")
    try:
        ds = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"deepspeed_config: {path} is not valid JSON ({e})") from None
    if not isinstance(ds, dict):
        raise ValueError(f"deepspeed_config: expected a JSON object in {path}, got {type(ds).__name__}")
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"deepspeed_config.{section}: expected absent (vlaforge builds AdamW and its schedule "
                             f"from --optim), got {ds[section]!r}")
    if ds.get("fp16", {}).get("enabled") not in (None, False, "auto"):
        raise ValueError("deepspeed_config.fp16.enabled: expected false (use --precision=bf16), got true")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2, 3):  # stage 0 is plain data parallelism without ZeRO's partitioned optimizer
        raise ValueError(f"deepspeed_config.zero_optimization.stage: expected 1, 2 or 3 (for no ZeRO use "
                         f"--distributed=ddp), got {stage!r}")
    ours = dict(zip(_DS_FILLED, (batch_size, grad_accum, batch_size * grad_accum * world, grad_clip), strict=True))
    for key, value in ours.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise ValueError(f"deepspeed_config.{key}: expected {value} (from the training config) or \"auto\", "
                             f"got {given!r}")
        ds[key] = value
    bf16 = precision == "bf16"
    given = ds.get("bf16", {}).get("enabled", "auto")
    if given != "auto" and bool(given) != bf16:
        raise ValueError(f"deepspeed_config.bf16.enabled: expected {str(bf16).lower()} (--precision={precision}) or "
                         f"\"auto\", got {given!r}")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds.pop("fp16", None)
    return ds


class DeepSpeed(Accelerated):
    """DeepSpeed ZeRO (stage 1, 2 or 3 from ``--deepspeed_config``) through accelerate's integration.

    gloo on CPU, NCCL on GPUs. The engine clips gradients, steps the optimizer and scales the loss by
    1/accumulation; vlaforge fills those fields of the JSON from the training config. Checkpoints gather the full
    fp32 master weights and the full optimizer state with DeepSpeed's ``safe_get_full_*`` helpers (collectives), so
    they are ordinary vlaforge checkpoints: they load for inference, and resume under any engine.
    """

    def __init__(self, precision: str, cfg: Any) -> None:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ImportError("--distributed=deepspeed needs DeepSpeed: pip install 'vlaforge[deepspeed]' "
                              "(or pip install deepspeed)") from None
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

        _require_launcher("deepspeed")
        if cfg is None:
            raise ValueError("the DeepSpeed runtime needs the training config")
        self.accum = cfg.grad_accum
        ds = deepspeed_config(cfg.deepspeed_config, cfg.batch_size, cfg.grad_accum, int(os.environ["WORLD_SIZE"]),
                              cfg.optim.grad_clip, precision)
        self._use(Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds, zero3_init_flag=False),
                              mixed_precision="bf16" if precision == "bf16" else "no",
                              gradient_accumulation_steps=cfg.grad_accum,
                              kwargs_handlers=[InitProcessGroupKwargs(backend=_backend())]))
        # accelerate registers the ZeRO-3 config with transformers, which then builds every model inside
        # deepspeed.zero.Init (already partitioned), which breaks the random init of from-config models: models are
        # built whole and partitioned by deepspeed.initialize in prepare() instead
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        self.bf16 = precision == "bf16"
        self._boundary = True
        self._group_names: list[list[str]] = []

    supports_4bit = False  # ZeRO partitions / casts the packed weights apart from their quantization state
    supports_ema = False  # ZeRO-3 partitions the parameters and bf16 casts them: no full fp32 weights to average
    _autocast = SingleProcess._autocast  # DeepSpeed casts the weights to bf16; autocast casts the fp32 inputs

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.acc.unwrap_model(model)  # a DeepSpeedEngine

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        names = {id(p): n for n, p in model.named_parameters()}
        self._group_names = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        return self.acc.prepare(model, optimizer)

    @property
    def _engine_optimizer(self) -> Any:
        """DeepSpeed's ZeRO optimizer (partitions, fp32 masters), wrapping :attr:`_base`."""
        return self.acc.deepspeed_engine_wrapped.engine.optimizer

    @property
    def _base(self) -> torch.optim.Optimizer:
        """The optimizer DeepSpeed steps: ours, with its param groups flattened into partitions, or, with
        ``offload_optimizer``, the ``DeepSpeedCPUAdam`` accelerate built from our groups (the same group dicts, so
        the schedule's learning rates reach it)."""
        return self._engine_optimizer.optimizer

    def stepping_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        return self._base

    def _step_value(self, step: float) -> Any:
        """An Adam step count as the stepping optimizer keeps it: a tensor in torch's AdamW, an int in DeepSpeed's
        CPU Adam (which hands it to its C++ kernel)."""
        return torch.tensor(step) if isinstance(self._base, torch.optim.AdamW) else int(step)

    def backward(self, loss: torch.Tensor, micro_batches: int = 1) -> None:
        if micro_batches != self.accum:
            raise ValueError(f"DeepSpeed was configured for {self.accum} micro-batches per step, got {micro_batches}")
        # the engine scales by 1/gradient_accumulation_steps itself and steps at the boundary
        self.acc.deepspeed_engine_wrapped.backward(loss, sync_gradients=self._boundary)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        self._boundary = False
        try:
            yield
        finally:
            self._boundary = True

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        norm = self.acc.clip_grad_norm_(model.parameters(), max_norm)  # the engine's norm of the step it took
        return torch.tensor(float("nan") if norm is None else float(norm))

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, t in self.unwrap(module).state_dict(keep_vars=True).items():
            if isinstance(t, nn.Parameter):
                full = safe_get_full_fp32_param(t)  # the fp32 master copy of a trained parameter
                if full is None:  # frozen: not in the optimizer (gathered from its partitions under ZeRO-3)
                    with deepspeed.zero.GatheredParameters([t]):
                        full = t.detach().clone()
                t = full
            out[name] = t.detach().cpu()
        return _retie(self.unwrap(module), out)

    def _zero(self) -> Any:
        """DeepSpeed's ZeRO optimizer, with every parameter's slice of the optimizer state reachable.

        ZeRO 1/2 link each parameter to its slice of the flat partition's state once, after the first step: a group
        without state at that moment (no gradient yet) stays unlinked, so link every partition that has state now.
        """
        from deepspeed.utils import lazy_init_hp_params_optimizer_state

        zero = self._engine_optimizer
        if hasattr(zero, "single_partition_of_fp32_groups"):
            for lp, hp in zip(zero.bit16_groups, zero.single_partition_of_fp32_groups, strict=True):
                if hp in zero.optimizer.state:
                    lazy_init_hp_params_optimizer_state(lp, hp, zero.optimizer.state)
        return zero

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from deepspeed.utils import safe_get_full_optimizer_state

        steps = [float(st["step"]) for st in self._base.state.values() if "step" in st]
        step = torch.tensor(max(steps, default=0.0))
        zero = self._zero()
        if hasattr(zero, "single_partition_of_fp32_groups"):  # ZeRO 1/2
            local = torch.tensor([float(hp in zero.optimizer.state) for hp in zero.single_partition_of_fp32_groups])
        else:  # ZeRO-3 steps every sub-group: after the first step all of them have state
            local = torch.tensor([float(bool(self._base.state))] * len(self._group_names))
        # a group whose parameters never had a gradient has no state (as in torch); every rank must agree before
        # the gathers, since a rank may hold no piece of a parameter
        stepped = torch.stack(self.all_gather(local)).amax(0)
        live = {n for names, ok in zip(self._group_names, stepped.tolist(), strict=True) if ok for n in names}
        state: dict[str, dict[str, torch.Tensor]] = {}
        for name, p in self.unwrap(model).named_parameters():
            if not p.requires_grad or name not in live:
                continue
            st = {}
            for key in ("exp_avg", "exp_avg_sq"):
                v = safe_get_full_optimizer_state(p, key)
                if v is not None:
                    st[key] = v.detach().cpu()
            if st:
                state[name] = {"step": step.clone(), **st}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": names}
                  for g, names in zip(self._base.param_groups, self._group_names, strict=True)]
        return {"state": state, "param_groups": groups}

    def load_master_weights(self, model: nn.Module, path: Path) -> None:
        """DeepSpeed builds its fp32 master copies from the module as ``deepspeed.initialize`` cast it: under bf16
        that rounds the checkpoint's fp32 weights to bf16 and a resumed run drifts from the uninterrupted one. Set
        the masters from the checkpoint (their bf16 copies are unchanged: the same rounding of the same values)."""
        from deepspeed.utils import safe_set_full_fp32_param
        from safetensors.torch import load_file

        weights = load_file(str(path))
        for name, p in self.unwrap(model).named_parameters():
            if p.requires_grad and name in weights:
                safe_set_full_fp32_param(p, weights[name].to(self.device, torch.float32))

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        saved = state["state"]
        if len(state["param_groups"]) != len(self._base.param_groups):
            raise ValueError(f"the checkpoint's optimizer has {len(state['param_groups'])} parameter groups, this "
                             f"run's {len(self._base.param_groups)}")
        for group, saved_group in zip(self._base.param_groups, state["param_groups"], strict=True):
            group.update({k: v for k, v in saved_group.items() if k in ("lr", "initial_lr")})
        if not saved:
            return
        # the state is created at the first step (zeros here, then filled); one step count per flat partition
        step = max(float(st["step"]) for st in saved.values())
        zero = self._engine_optimizer
        if hasattr(zero, "single_partition_of_fp32_groups"):  # ZeRO 1/2: the partitions of groups with saved state
            flats = [hp for names, hp in zip(self._group_names, zero.single_partition_of_fp32_groups, strict=True)
                     if any(n in saved for n in names)]
        else:  # ZeRO-3: one flat fp32 partition per sub-group
            flats = list(zero.fp32_partitioned_groups_flat)
        for hp in flats:
            st = zero.optimizer.state[hp]
            st.setdefault("step", self._step_value(step))
            for key in ("exp_avg", "exp_avg_sq"):
                st.setdefault(key, torch.zeros_like(hp))
        self._zero()  # link the new state slices to their parameters
        for name, p in self.unwrap(model).named_parameters():
            if name in saved:
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(p, saved[name][key].to(self.device), key)
        for st in self._base.state.values():
            if "step" in st:
                st["step"] = self._step_value(step)


def resolve_precision(precision: str, device: torch.device | None = None) -> str:
    """``--precision=auto``: bf16 where the device computes it fast (a GPU with bf16; a CPU with AMX or AVX512-BF16,
    where the quick start's step was 1.47x faster in bf16 with math attention: ``bench/levers.py --levers
    bf16,bf16_flash``), else fp32 (a CPU without those units emulates bf16, slower than fp32). ``fp32`` and
    ``bf16`` are returned as they are."""
    if precision != "auto":
        return precision
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from vlaforge.utils import cpu_bf16_units

    return "bf16" if device.type == "cpu" and cpu_bf16_units() else "fp32"


def make_runtime(distributed: str, precision: str, cfg: Any = None) -> SingleProcess:
    """The runtime for ``--distributed``; ``cfg`` (the TrainConfig) fills DeepSpeed's batch and clipping fields.
    ``precision`` may be ``auto`` (:func:`resolve_precision`); the runtime's ``bf16`` says what it chose."""
    precision = resolve_precision(precision)
    if distributed == "none":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            raise ValueError(f"launched on {world} processes but --distributed=none: pass --distributed=ddp "
                             f"(or fsdp / deepspeed)")
        return SingleProcess(precision)
    if distributed == "fsdp":
        return TorchFSDP(precision)
    if distributed == "deepspeed":
        return DeepSpeed(precision, cfg)
    return Accelerated(distributed, precision)
