"""vlaforge import SYSTEM SRC --out CKPT [--unnorm_key KEY] [--cameras a,b] [--dtype bfloat16|float32] [...]

Convert a released checkpoint in its original layout into an ordinary vlaforge checkpoint (config, safetensors,
processors with the system's statistics, tokenizer) for predict_action, eval, serve and --init_from. Pickled
``.pt`` parts are read with torch.load(weights_only=True) and never kept.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from vlaforge.cli.common import setup_logging


def main(argv: list[str]) -> int:
    from vlaforge.weights import IMPORTERS

    setup_logging()
    parser = argparse.ArgumentParser(prog="vlaforge import", description=__doc__.splitlines()[0])
    parser.add_argument("system", help=f"one of {', '.join(IMPORTERS.names())}")
    parser.add_argument("src", help="the released checkpoint's directory (or file, where the system ships one)")
    parser.add_argument("--out", required=True, help="the vlaforge checkpoint directory to write")
    parser.add_argument("--unnorm_key", "--unnorm-key", dest="unnorm_key", default=None,
                        help="which dataset's statistics un-normalize actions (required when there are several)")
    parser.add_argument("--cameras", default=None,
                        help="comma-separated names for the model's camera inputs (they must match the env's)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="dtype of the VLM's weights in the checkpoint (released weights are bf16)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="openvla_oft, openpi: actions per chunk (default: by platform / config.json)")
    parser.add_argument("--tokenizer", default=None, help="hybridvla: the Llama-2 tokenizer directory; robovlms: "
                        "microsoft/kosmos-2-patch14-224's directory (tokenizer files + config.json); lerobot: "
                        "a local snapshot of the VLM (tokenizer files + config.json); openpi: PaliGemma's tokenizer")
    parser.add_argument("--llm_config", "--llm-config", dest="llm_config", default=None,
                        help="hybridvla: the base LLM's config.json (default: Llama-2-7b's, sizes from the weights)")
    parser.add_argument("--need_to_sub", "--need-to-sub", dest="need_to_sub", type=int, default=None,
                        help="hybridvla: the action-token offset it was trained with (README: 0; train.py: 7)")
    parser.add_argument("--vision_tower", "--vision-tower", dest="vision_tower", default=None,
                        help="llava_vla: the CLIP directory its config's mm_vision_tower names (the tower's weights)")
    parser.add_argument("--statistics", default=None, help="llava_vla: CALVIN's statistics.yaml (default SRC/...)")
    parser.add_argument("--norm_bins", "--norm-bins", dest="norm_bins", action="store_true", default=None,
                        help="llava_vla: the checkpoint was trained with use_norm_bins (the non-uniform grid)")
    parser.add_argument("--actions", default=None, choices=("relative", "absolute"),
                        help="llava_vla: CALVIN relative actions as decoded, or absolute (act_min/max_bound)")
    parser.add_argument("--base", default=None, help="dexvla: the official Qwen2-VL-2B(-Instruct) directory")
    parser.add_argument("--stats", default=None, help="dexvla: a run's dataset_stats.pkl (un-normalisation)")
    parser.add_argument("--no_state_in_prompt", "--no-state-in-prompt", dest="state_in_prompt", action="store_false",
                        default=None, help="openpi pi0.5: the checkpoint was trained without the state in the prompt "
                        "(discrete_state_input=False, e.g. pi05_libero)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    importer = IMPORTERS.get(args.system)
    kw: dict = {"unnorm_key": args.unnorm_key, "dtype": args.dtype}
    if args.cameras:
        kw["cameras"] = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    for name in ("chunk", "tokenizer", "llm_config", "need_to_sub", "vision_tower", "statistics", "norm_bins",
                 "actions", "base", "stats", "state_in_prompt"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    accepted = inspect.signature(importer).parameters
    extra = sorted(k for k in kw if k not in accepted)
    if extra:
        raise ValueError(f"vlaforge import {args.system}: does not take --{', --'.join(extra)}")
    src = Path(args.src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    from vlaforge.weights.common import write_checkpoint

    imported = importer(src, **kw)
    out = write_checkpoint(imported, Path(args.out), overwrite=args.overwrite)
    print(f"wrote {out} (unnorm_key {imported.unnorm_key}, cameras {list(imported.cfg.cameras)}, "
          f"action dim {imported.cfg.action_dim})")
    return 0
