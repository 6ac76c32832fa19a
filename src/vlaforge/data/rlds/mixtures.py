"""Named OXE-style dataset mixtures behind :data:`MIXTURES` (a :class:`~vlaforge.registry.Registry`)."""

from __future__ import annotations

from vlaforge.registry import Registry

# name -> [(RLDS dataset name, sampling weight)], as OpenVLA's OXE_NAMED_MIXTURES (weights are relative; the
# sampler normalizes them). Only datasets with a transform in :mod:`.transforms` are listed.
# Plugins add mixtures through the entry-point group ``vlaforge.mixtures``.
MIXTURES: Registry[list[tuple[str, float]]] = Registry("mixtures")
MIXTURES.register("bridge")([("bridge_dataset", 1.0)])
MIXTURES.register("rt_1")([("fractal20220817_data", 1.0)])
MIXTURES.register("bridge_fractal")([("bridge_dataset", 1.0), ("fractal20220817_data", 1.0)])  # OpenVLA's bridge_rt_1
MIXTURES.register("bridge_rt_1")([("bridge_dataset", 1.0), ("fractal20220817_data", 1.0)])
# the fractal weight OpenVLA uses in its RT-X / magic-soup mixtures, restricted to these two datasets
MIXTURES.register("bridge_fractal_rtx")([("fractal20220817_data", 0.54087122203), ("bridge_dataset", 1.0)])


def mixture(name: str) -> list[tuple[str, float]]:
    """The named mixture's ``[(dataset name, weight)]``; unknown names raise (a KeyError) with the closest ones."""
    return list(MIXTURES.get(name))
