"""Shared CLI plumbing: positionals and short aliases become draccus ``--field=value`` arguments."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rich.logging import RichHandler


def to_draccus(argv: Sequence[str], positionals: Sequence[str] = (), aliases: dict[str, str] | None = None,
               prefixes: dict[str, str] | None = None, flags: Sequence[str] = ()) -> list[str]:
    """Rewrite a friendly command line into draccus arguments.

    * the i-th bare word becomes ``--{positionals[i]}=word``;
    * ``--key value`` becomes ``--key=value``; a bare ``--flag`` (one of ``flags``) becomes ``--flag=true``;
    * ``aliases`` rename a whole key (``--data DIR`` -> ``--data.path=DIR``);
    * ``prefixes`` rename a leading component (``head`` -> ``policy.head``, so ``--head.type=dit`` works).
    """
    aliases, prefixes = aliases or {}, prefixes or {}
    out, words, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            out.append("--help")
        elif tok.startswith("--"):
            key, eq, value = tok[2:].partition("=")
            if not eq:
                if key in flags and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
                    value = "true"
                elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    i += 1
                    value = argv[i]
                else:
                    raise SystemExit(f"option --{key} needs a value (--{key}=VALUE)")
            head, dot, rest = key.partition(".")
            if key in aliases:
                key = aliases[key]
            elif head in prefixes:
                key = prefixes[head] + dot + rest
            out.append(f"--{key}={value}")
        else:
            words.append(tok)
        i += 1
    if len(words) > len(positionals):
        raise SystemExit(f"unexpected argument(s): {' '.join(words[len(positionals):])}")
    return [f"--{name}={w}" for name, w in zip(positionals, words, strict=False)] + out


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("httpx", "urllib3", "matplotlib", "PIL", "OpenGL", "OpenGL.acceleratesupport"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
