"""Simulator adapters."""

from vlaforge.eval.envs.base import ENVS, EnvAdapter, EnvConfig

__all__ = ["ENVS", "EnvAdapter", "EnvConfig"]
