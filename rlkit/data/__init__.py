"""Prompt data: any `datasets` source mapped onto rlkit's canonical columns, validated row by row.

Canonical columns: `prompt` (text, required), `image` (one path/PIL image) or `images` (a list; optional),
`answer` (optional unless a reward needs it), anything else passes through to the rewards by name.
Sources, in the order they are tried:
1. a built-in offline source by name (`BUILTIN_NAMES`: `easy_vqa`, `arithmetic`, `arith_chain`);
2. a local file or folder (json, jsonl, csv, parquet, or a `save_to_disk` folder);
3. otherwise a hub data set name (the only case that touches the network).

Rows are converted lazily (`to_row`): a bad row raises `DataError` naming the row index and the key or file,
and the driver decides (config `data.on_bad_row`) whether that stops the run or is skipped and counted. Before
any worker starts, the GRPO driver checks the first `data.check_rows` rows the same way (rlkit/data/checks.py),
so a missing or undecodable image is found then, not when its row is drawn; an empty data file has no rows.
"""
from __future__ import annotations

import os
import pathlib
import random
from typing import Any, Callable

from rlkit.records import MODES, PromptRow

CANONICAL = ("prompt", "image", "images", "answer")


class DataError(ValueError):
    """A data set or one of its rows cannot be used; the message names the row, key or file."""


def prompt_too_long(index: int, max_model_len: int) -> DataError:
    """The error of a row whose prompt the engine refused (finish_reason 'prompt_too_long'): only the engine counts
    a prompt's tokens (its image tokens), so it is found when the row is generated, not by the checks before."""
    return DataError(f"row {index}: its prompt is longer than rollout.max_model_len ({max_model_len} tokens, "
                     f"image tokens included)")


def _builtin() -> dict[str, Callable]:
    from rlkit.data.arith_chain import load_arith_chain
    from rlkit.data.arithmetic import load_arithmetic
    from rlkit.data.easy_vqa import load_easy_vqa

    return {"easy_vqa": load_easy_vqa, "arithmetic": load_arithmetic, "arith_chain": load_arith_chain}


BUILTIN_NAMES = ("easy_vqa", "arithmetic", "arith_chain")


def load_source(source: str, split: str = "train", *, limit: int = 0, seed: int = 0, **kwargs):
    """Return a `datasets.Dataset` for `source` (built-in name, local path, or hub name)."""
    import datasets

    builtin = _builtin()
    if source in builtin:
        return builtin[source](split, limit=limit or None, seed=seed, **kwargs)
    path = pathlib.Path(source).expanduser()
    if path.exists():
        if path.is_dir() and (path / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"data set folder {path} has no split {split!r} (has {', '.join(ds)})")
                ds = ds[split]
        else:
            files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _LOADERS)
            if not files:
                raise DataError(f"no json/jsonl/csv/parquet files in {path}")
            kind = _LOADERS.get(files[0].suffix)
            if kind is None:
                raise DataError(f"cannot read {files[0]}: use .json, .jsonl, .csv or .parquet")
            for f in files:
                if _blank(f):
                    raise DataError(f"data file {f} has no rows (it is empty)")
            try:
                ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
            except Exception as e:  # malformed files: name them
                if "corresponds to no data" in str(e):  # datasets' words for zero rows (`[]`, a csv header only)
                    raise DataError(f"data file(s) {', '.join(map(str, files))} have no rows") from e
                raise DataError(f"cannot load data file(s) {', '.join(map(str, files))}: "
                                f"{str(e).strip() or type(e).__name__}") from e
    elif source.startswith((".", "/", "~")) or source.endswith(tuple(_LOADERS)):
        raise DataError(f"data file not found: {source}")
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            raise DataError(
                f"data.source {source!r} is neither a built-in source ({', '.join(builtin)}) nor an existing path, "
                "and the hub is offline (HF_HUB_OFFLINE=1)"
            )
        ds = datasets.load_dataset(source, split=split, **kwargs)
    if len(ds) == 0:
        raise DataError(f"data.source {source!r} (split {split!r}) has no rows")
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _blank(path: pathlib.Path, probe: int = 1 << 16) -> bool:
    """Whether a data file holds nothing but white space (read up to `probe` bytes: a big file is not blank)."""
    size = path.stat().st_size
    if size > probe:
        return False
    return not path.read_bytes().strip()


def has_splits(source: str) -> bool:
    """Whether `load_source(source, split)` honours `split`: built-in and hub sources, and local `save_to_disk`
    folders of a DatasetDict, do; a local file, a folder of files or a single saved Dataset is one split."""
    if source in BUILTIN_NAMES:
        return True
    path = pathlib.Path(source).expanduser()
    if path.exists():
        return path.is_dir() and (path / "dataset_dict.json").exists()
    return True  # a hub name (or a missing path, which load_source reports)


_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def map_columns(ds, columns: dict[str, str]):
    """Rename the user's columns to canonical ones ({canonical: theirs}); fail naming a missing column."""
    have = set(ds.column_names)
    for canonical, theirs in columns.items():
        if canonical not in CANONICAL + ("mode",):
            raise DataError(f"data.columns: unknown canonical column {canonical!r} (use {', '.join(CANONICAL)})")
        if theirs not in have:
            raise DataError(f"data.columns.{canonical}: the data set has no column {theirs!r} (has {', '.join(sorted(have))})")
    renames = {theirs: canonical for canonical, theirs in columns.items() if theirs != canonical}
    clash = [c for c in renames.values() if c in have and c not in renames]
    if clash:
        ds = ds.remove_columns(clash)
    ds = ds.rename_columns(renames) if renames else ds
    if "prompt" not in ds.column_names:
        raise DataError(f"the data set has no 'prompt' column (has {', '.join(ds.column_names)}); map one with data.columns.prompt")
    return ds


def row_images(raw: dict[str, Any]) -> list:
    """A raw row's images as a list: its `images` column, or its single `image`, or none."""
    images = raw.get("images")
    if images is None:
        images = [] if raw.get("image") is None else [raw["image"]]
    return list(images) if isinstance(images, (list, tuple)) else [images]


def to_row(index: int, raw: dict[str, Any], mode_column: str = "mode") -> PromptRow:
    """Validate one raw row and turn it into a PromptRow. Raises DataError naming the row and key."""
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"row {index}: 'prompt' must be a non-empty string, got {prompt!r:.80}")
    images = row_images(raw)
    for img in images:
        _check_image(index, img)
    mode = raw.get(mode_column)
    if mode is not None and mode not in MODES:
        raise DataError(f"row {index}: column '{mode_column}' must be 'fast' or 'deep', got {mode!r}")
    columns = {k: v for k, v in raw.items() if k not in ("prompt", "image", "images")}
    return PromptRow(index=index, prompt=prompt, images=list(images), answer=raw.get("answer"), columns=columns, mode=mode)


def _check_image(index: int, img: Any) -> None:
    from PIL import Image

    if isinstance(img, Image.Image):
        return
    if isinstance(img, dict) and (img.get("path") or img.get("bytes")):
        return
    if not isinstance(img, (str, os.PathLike)):
        raise DataError(f"row {index}: image must be a file path or a PIL image, got {type(img).__name__}")
    if not os.path.exists(img):
        raise DataError(f"row {index}: image file not found: {img}")


def open_image(img: Any, index: int | None = None):
    """Decode an image (path, PIL image, or datasets' {'path','bytes'} dict) to RGB; DataError names the file."""
    import io

    from PIL import Image

    where = f"row {index}: " if index is not None else ""
    try:
        if isinstance(img, Image.Image):
            return img.convert("RGB")
        if isinstance(img, dict):
            if img.get("bytes"):
                return Image.open(io.BytesIO(img["bytes"])).convert("RGB")
            img = img["path"]
        with Image.open(img) as im:
            return im.convert("RGB")
    except Exception as e:
        raise DataError(f"{where}image {img!r:.120} cannot be decoded: {e}") from e


class PromptStream:
    """Endless, seeded, resumable stream of prompt rows (reshuffled each epoch).

    `position` counts rows handed out so far; saving it in a checkpoint and passing it back continues the
    exact same order. `rows`: the row indices to draw from (None: all; rlkit/data/checks.py leaves bad ones out).
    """

    def __init__(self, ds, *, seed: int = 0, shuffle: bool = True, mode_column: str = "mode", position: int = 0,
                 rows: list[int] | None = None):
        self.rows = list(range(len(ds))) if rows is None else list(rows)
        if not self.rows:
            raise DataError("the data set is empty")
        self.ds, self.seed, self.shuffle, self.mode_column = ds, seed, shuffle, mode_column
        self.position = position

    def _order(self, epoch: int) -> list[int]:
        order = list(self.rows)
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[tuple[int, dict]]:
        """The next k (row index, raw row) pairs."""
        out = []
        n = len(self.rows)
        cache_epoch, order = None, None
        for _ in range(k):
            epoch, offset = divmod(self.position, n)
            if epoch != cache_epoch:
                cache_epoch, order = epoch, self._order(epoch)
            idx = order[offset]
            out.append((idx, self.ds[idx]))
            self.position += 1
        return out
