"""QLoRA's 4-bit base: the language model's linear layers stored as bitsandbytes NF4 / FP4.

``backbone.lora.quantize = "nf4"`` (or ``"fp4"``) replaces every ``nn.Linear`` of the language model (not its
embeddings, not the LM head, not the vision tower or projector) by a ``bitsandbytes.nn.Linear4bit`` holding the
frozen base weight in 4 bits with blockwise absmax scales (``double_quant`` quantizes those scales too, as QLoRA
does). peft then wraps these layers with its bitsandbytes LoRA layers, so the adapters train in the input's
dtype on top of a dequantized-on-the-fly base. A checkpoint stores the packed weights and their quantization
state as plain tensors (``weight``, ``weight.absmax``, ``weight.quant_map``, ...), so it is ~4x smaller for the
LM, and loads back bit-exactly; a float state dict loaded into a quantized layer (``policy.load_state_dict`` of
a LoRA or fully trained policy's weights) is quantized on the way in. :func:`vlaforge.lora.merge_lora`
dequantizes and folds the adapters into plain float ``nn.Linear`` layers, so the exported policy needs neither
peft nor bitsandbytes.

bitsandbytes 0.50 runs on the CPU (its own C kernels) as well as on CUDA. Two of its CPU behaviours are turned
off here, with reasons: (1) in eval mode it repacks the weight into an AVX512-BF16 layout in place, after which a
training-mode forward fails (its fused kernel has no autograd and adds the bias in place) -- a policy evaluated
during training would break; (2) it logs a warning at import when the optional ``kernels`` package (which
downloads a kernel from the HF hub) is absent -- the fallback it uses is its own bundled kernel.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

QUANT_TYPES = ("none", "nf4", "fp4")
_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def import_bitsandbytes(required: bool = True) -> Any:
    """``import bitsandbytes`` without its import-time warning about the optional hub-downloaded CPU kernel.

    ``required=False``: import it only if installed (call before ``import peft``, which imports it) -> None if not.
    """
    if not bitsandbytes_available():
        if not required:
            return None
        raise ImportError("backbone.lora.quantize needs bitsandbytes (4-bit QLoRA base): "
                          "pip install 'vlaforge[qlora]' (bitsandbytes==0.50.2, CPU and CUDA)")
    logger = logging.getLogger(_CPU_OPS_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        logger.setLevel(level)
    return bitsandbytes


def is_4bit(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit linear layer (not peft's LoRA wrapper around one); no import of bitsandbytes needed."""
    cls = type(module)
    return cls.__name__ == "Linear4bit" and cls.__module__.startswith("bitsandbytes.")


def _load_quantized(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """load_state_dict pre-hook: rebuild the 4-bit weight from its saved quantization state (or quantize a float
    weight), so that torch's own copy of ``weight`` then finds matching shapes. The state's keys (``weight.absmax``
    ...) are taken out of this module's view of the state dict, which torch would otherwise call unexpected."""
    bnb = import_bitsandbytes()
    key = prefix + "weight"
    if key not in state_dict:
        return  # torch reports it missing
    data = state_dict[key]
    device = module.weight.device
    if data.is_floating_point():  # a full-precision weight (a LoRA or fully trained policy's)
        expected = (module.out_features, module.in_features)
        if tuple(data.shape) != expected:
            raise ValueError(f"{key}: expected a float weight of shape {expected} to quantize, got "
                             f"{tuple(data.shape)}")
        old = module.weight
        module.weight = bnb.nn.Params4bit(data.detach().clone(), requires_grad=False, blocksize=old.blocksize,
                                          compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                                          quant_storage=old.quant_storage, module=module).to(device)
    else:
        stats = {k[len(key) + 1:]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(key + ".")]}
        if not stats:
            raise ValueError(f"{key}: a packed 4-bit weight without its quantization state ({key}.absmax, "
                             f"{key}.quant_map, ...); the checkpoint is incomplete")
        module.weight = bnb.nn.Params4bit.from_prequantized(data, stats, requires_grad=False, device=device,
                                                            module=module)
    state_dict[key] = module.weight.data


def _follow_autocast(module: nn.Module, args: tuple) -> tuple | None:
    """forward pre-hook: compute in the input's dtype, and under autocast in autocast's (bf16) as ``F.linear``
    would -- bitsandbytes' layer otherwise fixes its compute dtype at the first call (an fp32 RMSNorm output under
    bf16 autocast: fp32 matmuls and fp32 activations kept for backward, ~20 % more memory on divla's 256m)."""
    x = args[0]
    if not x.is_floating_point():
        return None
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    module.compute_dtype, module.compute_type_is_set = x.dtype, True
    return (x, *args[1:])


def quantize_linears(root: nn.Module, quant_type: str, double_quant: bool = True,
                     skip: Iterable[nn.Module] = ()) -> int:
    """Replace every ``nn.Linear`` under ``root`` (except ``skip``) by a frozen 4-bit ``Linear4bit``; returns how
    many. The float weights are quantized where they are (CPU or GPU)."""
    if quant_type not in QUANT_TYPES[1:]:
        raise ValueError(f"quantize_linears: quant_type expected one of {QUANT_TYPES[1:]}, got {quant_type!r}")
    bnb = import_bitsandbytes()
    skipped = {id(m) for m in skip}
    count = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or is_4bit(child) or id(child) in skipped:
                continue
            w = child.weight
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compress_statistics=double_quant, quant_type=quant_type, device="meta")
            q.support_avx512bf16_for_cpu = False  # see the module docstring: that repacking breaks training
            q.weight = bnb.nn.Params4bit(w.detach(), requires_grad=False, compress_statistics=double_quant,
                                         quant_type=quant_type, module=q).to(w.device)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.detach(), requires_grad=False)
            q.register_load_state_dict_pre_hook(_load_quantized)
            q.register_forward_pre_hook(_follow_autocast)
            q.train(child.training)
            setattr(parent, name, q)
            count += 1
    return count


def dequantize_weight(module: nn.Module) -> Tensor:
    """The float weight a 4-bit layer computes with, (out, in), in the dtype it was quantized from."""
    bnb = import_bitsandbytes()
    w = module.weight
    return bnb.functional.dequantize_4bit(w.data, w.quant_state).to(w.quant_state.dtype)


def dequantized_linear(module: nn.Module, weight: Tensor | None = None) -> nn.Linear:
    """A plain ``nn.Linear`` computing what ``module`` (4-bit) does; ``weight`` overrides the dequantized one."""
    w = dequantize_weight(module) if weight is None else weight
    lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    lin.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
    if module.bias is not None:
        lin.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    lin.train(module.training)
    return lin


def dequantize_all(root: nn.Module) -> int:
    """Replace every 4-bit layer under ``root`` by its dequantized ``nn.Linear``; returns how many."""
    count = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if is_4bit(child):
                setattr(parent, name, dequantized_linear(child))
                count += 1
    return count


def parameter_count(module: nn.Module, trainable: bool = False) -> int:
    """Parameters of ``module`` at their logical size (a packed 4-bit weight counts out x in, not its bytes x 2)."""
    total = 0
    for p in module.parameters():
        if trainable and not p.requires_grad:
            continue
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None else p.numel()
    return total

