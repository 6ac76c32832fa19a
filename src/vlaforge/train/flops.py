"""Training FLOPs as torch's ``FlopCounterMode`` counts them, plus the kernels it has no formula for.

torch registers the CUDA attention kernels only: on a CPU, ``scaled_dot_product_attention`` runs
``_scaled_dot_product_flash_attention_for_cpu`` (forward and backward), which counted nothing, and the HF backbones,
the DiT and the flow heads all attend through it. bitsandbytes' fused 4-bit matmul (a QLoRA base layer's forward)
is a custom op, also unknown. Both get torch's own formulas' arithmetic here, so a CPU count equals a GPU count of
the same step (attention backward includes the recomputed scores, as torch counts it for the GPU kernels).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _sdpa_flops(q: Any, k: Any, v: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_backward_flops(grad_out: Any, q: Any, k: Any, v: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


def _gemm_4bit_flops(a_shape: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    """2 × (rows × out features) × in features: a dense matmul's FLOPs (the 4-bit weight is dequantized on the fly)."""
    return 2 * int(torch.Size(out_shape).numel()) * int(a_shape[-1])


def flop_formulas() -> dict[Any, Any]:
    """``custom_mapping`` for ``FlopCounterMode``, keyed by op overload packet (bitsandbytes' op only once a model
    has imported bitsandbytes: nothing can call it before)."""
    aten = torch.ops.aten
    out: dict[Any, Any] = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
                           aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops}
    if "bitsandbytes" in sys.modules:
        out[torch.ops.bitsandbytes.gemm_4bit] = _gemm_4bit_flops
    return out


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU attention and 4-bit matmuls: ``with flop_counter() as c:
    ...; c.get_total_flops()``."""
    return FlopCounterMode(display=False, custom_mapping=flop_formulas())
