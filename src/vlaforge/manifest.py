"""``manifest.json``: the size and SHA-256 of every file vlaforge wrote into a checkpoint, checked at load.

A checkpoint's files (``config.json``, ``model.safetensors``, ``processors/``, ``tokenizer/``, ``train_state/``)
are listed with their size and digest when it is written; loading re-hashes them (streamed) and refuses a file
that is missing, of another size or of another digest, and a file added under those names. This catches
truncation, bit rot and edits made after saving (a dtype flipped in a safetensors header, two tensors' offsets
swapped, ``n_bins`` changed in ``config.json``), not a forger who rewrites the manifest too: it is an integrity
check, not a signature. Files outside those names (a model card, eval results) are not checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from vlaforge.config import atomic_write_text, read_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# What vlaforge writes into a checkpoint (files, or directories whose files are all listed).
PARTS = ("config.json", "model.safetensors", "processors", "tokenizer", "train_state")
VERIFY_ENV = "VLAFORGE_VERIFY"  # "0" / "false" / "no": skip the check (vlaforge serve / eval / export)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(directory: Path) -> list[str]:
    out = []
    for part in PARTS:
        p = directory / part
        if p.is_file():
            out.append(part)
        elif p.is_dir():
            out += [f.relative_to(directory).as_posix() for f in sorted(p.rglob("*"))
                    if f.is_file() and not f.name.startswith(".")]
    return out


def write_manifest(directory: str | Path) -> Path:
    """(Re)write ``directory/manifest.json`` over every checkpoint file in it; call it after the last write.

    Rewriting (a training checkpoint adds ``train_state/`` after ``save_pretrained``) reuses the digest of a
    file of the same size last modified strictly before the previous manifest, so weights are hashed once.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    old: dict[str, Any] = {}
    since = 0
    if path.is_file():
        try:
            old, since = json.loads(path.read_text())["files"], path.stat().st_mtime_ns
        except (ValueError, KeyError, TypeError):
            old = {}
    old = old if isinstance(old, dict) else {}
    files = {}
    for rel in _files(directory):
        f = directory / rel
        st = f.stat()
        prev = old.get(rel)
        reuse = (isinstance(prev, dict) and prev.get("size") == st.st_size and isinstance(prev.get("sha256"), str)
                 and st.st_mtime_ns < since)
        files[rel] = {"size": st.st_size, "sha256": prev["sha256"] if reuse else sha256_file(f)}
    atomic_write_text(path, json.dumps({"manifest_version": MANIFEST_VERSION, "algorithm": "sha256",
                                        "files": files}, indent=1) + "\n")
    return path


def verify_enabled(verify: bool | None) -> bool:
    """``verify`` if given, else on unless ``$VLAFORGE_VERIFY`` is 0 / false / no."""
    if verify is not None:
        return verify
    return os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def verify_manifest(directory: str | Path) -> bool:
    """Check every file the manifest lists (and that no checkpoint file was added); False if there is none.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file and what differs.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        return False
    data: Any = read_json(path, "checkpoint manifest")
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or data.get("algorithm") != "sha256" or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        raise ValueError(f"{path}: not a vlaforge manifest (expected {{'algorithm': 'sha256', 'files': "
                         f"{{NAME: {{'size': int, 'sha256': str}}}}}})")
    hint = f"(saved as listed in {MANIFEST}; {VERIFY_ENV}=0 or verify=False skips this check)"
    for rel, entry in files.items():
        f = directory / rel
        if not f.resolve().is_relative_to(directory.resolve()):
            raise ValueError(f"{path}: lists {rel!r}, outside the checkpoint")
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing {hint}")
        size = f.stat().st_size
        if size != entry["size"]:
            raise ValueError(f"{f}: {size} bytes, expected {entry['size']} (truncated or modified after saving) "
                             f"{hint}")
        if sha256_file(f) != entry["sha256"]:
            raise ValueError(f"{f}: content differs from its SHA-256 (modified or corrupted after saving) {hint}")
    extra = sorted(set(_files(directory)) - set(files))
    if extra:
        raise ValueError(f"{directory / extra[0]}: not in {MANIFEST} (added after saving; {len(extra)} such "
                         f"file(s): {extra[:3]}) {hint}")
    return True
