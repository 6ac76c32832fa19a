"""Serializable processor steps and pipelines."""

from vlaforge.processors.base import AUG_SEED, STEPS, Pipeline, Step, collate, to_device

__all__ = ["AUG_SEED", "STEPS", "Pipeline", "Step", "collate", "to_device"]
