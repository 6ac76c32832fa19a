"""``vlaforge`` command line: a thin dispatcher over the library (DESIGN §5)."""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence

COMMANDS = {
    "collect": ("vlaforge.cli.collect", "scripted-expert demos -> a LeRobot v3 dataset"),
    "convert": ("vlaforge.cli.convert", "hdf5 | libero | rlds | calvin -> LeRobot v3; calvin-annotations -> JSON"),
    "stats": ("vlaforge.cli.stats", "(re)compute meta/stats.json of a dataset"),
    "train": ("vlaforge.cli.train", "train a preset on a dataset"),
    "eval": ("vlaforge.cli.eval", "evaluate a checkpoint in simulation"),
    "serve": ("vlaforge.cli.serve", "serve a checkpoint (openpi-compatible websocket + HTTP)"),
    "import": ("vlaforge.cli.imports",
               "convert a released checkpoint (openvla, openvla_oft, hybridvla, llava_vla) to vlaforge"),
    "export": ("vlaforge.cli.export", "re-save a checkpoint for inference (--merge_lora folds LoRA adapters)"),
    "bench": ("vlaforge.cli.bench", "run a benchmark of bench/ (inference, train, data, serve, backbones)"),
    "quickstart": ("vlaforge.cli.quickstart", "collect -> train -> eval on CPU, with a report"),
    "list": ("vlaforge.cli.list", "list registered backbones, heads, formats, envs, presets"),
}

USAGE = "usage: vlaforge COMMAND [ARGS]\n\ncommands:\n" + "\n".join(
    f"  {name:<11} {desc}" for name, (_, desc) in COMMANDS.items()) + "\n\nvlaforge COMMAND --help for options"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        from vlaforge import __version__

        print(__version__)
        return 0
    debug = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    cmd = argv[0]
    if cmd not in COMMANDS:
        from vlaforge.utils import did_you_mean

        print(f"vlaforge: unknown command {cmd!r}" + did_you_mean(cmd, COMMANDS, "; did you mean {}?"), file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=".*Overriding default.*")
    module = importlib.import_module(COMMANDS[cmd][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError, RuntimeError) as e:
        if debug:
            raise
        print(f"vlaforge {cmd}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # anything else still reaches the user as one line (the traceback on request)
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"vlaforge {cmd}: error: {type(e).__name__}: {first} (run with --traceback for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
