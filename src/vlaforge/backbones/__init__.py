"""VLM backbones over HF transformers; one thin file per family, registered in :data:`BACKBONES`."""

from vlaforge.backbones.base import BACKBONES, Backbone, BackboneConfig

__all__ = ["BACKBONES", "Backbone", "BackboneConfig"]
