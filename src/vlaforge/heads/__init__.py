"""Action heads, registered by name in :data:`HEADS`."""

from vlaforge.heads.base import HEADS, ActionHead, HeadConfig

__all__ = ["HEADS", "ActionHead", "HeadConfig"]
