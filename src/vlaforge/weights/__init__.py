"""Importers of released VLA checkpoints (DESIGN §2 ``weights/``): ``vlaforge import SYSTEM SRC --out CKPT``.

Each importer reads one system's original layout (safetensors shards, ``.pt`` files only through
``torch.load(weights_only=True)``, its statistics file) and returns an :class:`~vlaforge.weights.common.Imported`:
a ``PolicyConfig``, a state dict in vlaforge's names, the tokenizer and the statistics. ``write_checkpoint`` turns
that into an ordinary vlaforge checkpoint that ``predict_action``, ``eval``, ``serve`` and ``--init_from`` use
unchanged. Importers know the originals; nothing else does.
"""

from __future__ import annotations

from vlaforge.registry import Registry

IMPORTERS: Registry = Registry("importers", lazy={
    "openvla": "vlaforge.weights.openvla", "openvla_oft": "vlaforge.weights.openvla",
    "hybridvla": "vlaforge.weights.hybridvla",
    "llava_vla": "vlaforge.weights.llava_vla",
    "dexvla": "vlaforge.weights.dexvla",
    "robovlms": "vlaforge.weights.robovlms",
    "openpi": "vlaforge.weights.openpi",
    "lerobot": "vlaforge.weights.lerobot",
})

__all__ = ["IMPORTERS"]
