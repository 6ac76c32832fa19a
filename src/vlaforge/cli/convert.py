"""vlaforge convert FORMAT SRC --out DST [--OPTION=VALUE ...]: another format -> a LeRobot v3 dataset.

Options are the source's keyword arguments (``vlaforge convert hdf5 --help`` lists them). A value is read as
JSON when it parses (``--fps=50``, ``--cameras='{"cam_high": "top"}'``), as a list when it has commas
(``--cameras=cam_high,cam_left_wrist``), as a mapping when every item is ``key:value``
(``--cameras=cam_high:top,cam_left_wrist:wrist``), else as a string.

vlaforge convert calvin-annotations DIR [--overwrite]: CALVIN's pickled ``auto_lang_ann.npy`` -> JSON next to it
(once per dataset; the ``calvin`` format then reads the JSON and never unpickles).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from vlaforge.data.calvin import convert_annotations
from vlaforge.data.convert import SOURCES, convert
from vlaforge.utils import did_you_mean

ANNOTATIONS_COMMAND = "calvin-annotations"


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    items = [t.strip() for t in text.split(",")] if "," in text or ":" in text else None
    if items is None:
        return text
    if all(":" in t for t in items):
        return dict(t.split(":", 1) for t in items)
    return items


def _options(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _usage(fmt: str | None = None) -> str:
    lines = ["usage: vlaforge convert FORMAT SRC --out DST [--overwrite] [--OPTION=VALUE ...]",
             f"formats: {', '.join(SOURCES.names())}",
             f"       vlaforge convert {ANNOTATIONS_COMMAND} DIR [--overwrite]",
             "         CALVIN's lang_annotations/auto_lang_ann.npy -> auto_lang_ann.json next to it, for DIR (a split",
             "         or a dataset with training/ and validation/); the calvin format reads the JSON when present"]
    if fmt is not None:
        cls = SOURCES.get(fmt)
        lines.append(f"\n{fmt} options:")
        lines += [f"  --{k}={p.default!r}" for k, p in _options(cls).items()]
        lines.append("\n" + (inspect.getdoc(cls) or ""))
    return "\n".join(lines)


def _calvin_annotations(argv: list[str]) -> int:
    unknown = [a for a in argv if a.startswith("--") and a != "--overwrite"]
    dirs = [a for a in argv if not a.startswith("--")]
    if unknown or len(dirs) != 1:
        raise ValueError(f"usage: vlaforge convert {ANNOTATIONS_COMMAND} DIR [--overwrite] (got {' '.join(argv)})")
    for path, ann in convert_annotations(dirs[0], overwrite="--overwrite" in argv):
        print(f"wrote {path}: {len(ann.segments)} segments")
    return 0


def main(argv: list[str]) -> int:
    words = [a for a in argv if not a.startswith("--")]
    if not argv or argv[0] in ("-h", "--help") or "--help" in argv or "-h" in argv:
        print(_usage(words[0] if words and words[0] in SOURCES.names() else None))
        return 0
    if argv[0] == ANNOTATIONS_COMMAND:
        return _calvin_annotations(argv[1:])
    out, overwrite, options, positional = None, False, {}, []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--"):
            key, eq, value = tok[2:].partition("=")
            if key == "overwrite" and not eq:
                overwrite = True
            else:
                if not eq:
                    if i + 1 >= len(argv):
                        raise ValueError(f"option --{key} needs a value")
                    i += 1
                    value = argv[i]
                if key == "out":
                    out = value
                else:
                    options[key] = parse_value(value)
        else:
            positional.append(tok)
        i += 1
    if len(positional) != 2 or out is None:
        print(_usage())
        return 2
    fmt, src = positional
    cls = SOURCES.get(fmt)
    known = _options(cls)
    for key in options:
        if key not in known:
            hint = did_you_mean(key, known, "; did you mean {}?", show=lambda name: f"--{name}")
            raise ValueError(f"convert {fmt}: unknown option --{key}" + (hint or f" (options: {sorted(known)})"))
    source = cls(src, **options)
    print(f"{fmt}: {len(source)} episodes, features {sorted(source.features)}")
    root = convert(source, out, overwrite=overwrite)
    info = json.loads((root / "meta/info.json").read_text())
    print(f"wrote {root}: {info['total_episodes']} episodes, {info['total_frames']} frames, "
          f"{info['total_tasks']} tasks")
    return 0
