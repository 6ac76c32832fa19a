"""vlaforge list [backbones|heads|formats|envs|presets|importers]"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vlaforge.registry import Registry


def _registries() -> dict[str, Registry]:
    from vlaforge.backbones.base import BACKBONES
    from vlaforge.data import FORMATS
    from vlaforge.eval.envs.base import ENVS
    from vlaforge.heads.base import HEADS
    from vlaforge.presets import PRESETS
    from vlaforge.weights import IMPORTERS

    return {"backbones": BACKBONES, "heads": HEADS, "formats": FORMATS, "envs": ENVS, "presets": PRESETS,
            "importers": IMPORTERS}


def _describe(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    name = getattr(obj, "__name__", "")
    if name and doc.startswith(f"{name}("):  # a dataclass without a docstring: its generated signature
        return ""
    return doc.splitlines()[0] if doc else ""


def main(argv: list[str]) -> int:
    regs = _registries()
    wanted = argv or list(regs)
    unknown = [w for w in wanted if w not in regs]
    if unknown:
        print(f"vlaforge list: unknown kind(s) {unknown}; choose from {', '.join(regs)}")
        return 2
    console = Console()
    for kind in wanted:
        table = Table(title=kind, show_header=False, title_justify="left")
        for name, entry in regs[kind].items():
            table.add_row(name, _describe(entry))
        if kind == "formats":  # formats read through `vlaforge convert`
            from vlaforge.data.convert import SOURCES

            for name, entry in SOURCES.items():
                table.add_row(name, f"(vlaforge convert {name}) {_describe(entry)}")
        console.print(table)
    return 0
