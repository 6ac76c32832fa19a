"""vlaforge export CKPT --out DIR [--merge_lora]: re-save a checkpoint as a plain inference checkpoint.

The export holds the weights, config, processors and tokenizer, not ``train_state/``. ``--merge_lora`` folds a
LoRA policy's adapters into the base weights (``vlaforge.lora.merge_lora``): the result has ``backbone.lora =
null``, no ``lora_`` tensors, and loads with ``VLAPolicy.from_pretrained`` like a fully fine-tuned policy.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlaforge export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint directory written by save_pretrained / training")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist or be empty)")
    parser.add_argument("--merge_lora", "--merge-lora", action="store_true", dest="merge_lora",
                        help="fold LoRA adapters into the base weights (backbone.lora -> null)")
    args = parser.parse_args(argv)

    from vlaforge.lora import lora_parameter_names
    from vlaforge.policy import VLAPolicy

    src, out = Path(args.checkpoint), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty directory")
    policy = VLAPolicy.from_pretrained(src)
    if args.merge_lora:
        n = len(lora_parameter_names(policy))
        policy = policy.merge_lora(inplace=True)
        print(f"merged {n} LoRA tensors into the base weights")
    elif policy.cfg.backbone.lora is not None:
        print("note: the checkpoint has LoRA adapters; pass --merge_lora to fold them into the base weights")
    policy.save_pretrained(out)
    print(f"wrote {out}")
    return 0
