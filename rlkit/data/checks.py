"""The prompt data checked before any worker starts: every row a step could draw, up to `data.check_rows`.

What a step would find when it draws a row (rlkit/step/collect.py: `to_row`, `open_image`, the answer), found here
instead, before Ray and the engines start: a prompt that is not a non-empty string, a missing answer, a bad
mode value, an image file that does not exist or does not decode. Each distinct image is decoded once (a data
set of 38k questions on 4k pictures decodes 4k files). The scan reads whole Arrow columns (no per-row `datasets`
calls, no image decoded twice) and stops after `limit` rows (0: no scan; -1: every row); rows past it are checked when drawn.

`data.on_bad_row: error` (default): the first bad row stops the run, one line naming the row and the key or
file. `skip`: every bad row found is counted, reported in one line (with the first reason) and left out of the
prompt stream; only when no row is usable does it stop.
"""
from __future__ import annotations

import dataclasses
import time

from rlkit.data import DataError, open_image, row_images
from rlkit.records import MODES


@dataclasses.dataclass
class RowCheck:
    """What the scan found: `usable` row indices (None: every row), `bad` messages, rows checked of `total`."""

    usable: list | None
    bad: list
    checked: int
    total: int
    seconds: float = 0.0

    slow_s = 5.0  # a scan longer than this says how long it took and which key bounds it

    def notices(self) -> list[str]:
        """Lines for the console: the bad rows left out (with the first reason); the scan's time when slow."""
        out = []
        if self.bad:
            out.append(f"rlkit: data: {len(self.bad)} bad row(s) of {self.checked} checked left out "
                       f"(data.on_bad_row: skip); first: {self.bad[0]}")
        if self.seconds > self.slow_s:
            out.append(f"rlkit: data: checked {self.checked} of {self.total} rows in {self.seconds:.0f} s "
                       "(data.check_rows: how many; 0: off)")
        return out


def check_rows(ds, *, limit: int = -1, on_bad_row: str = "error", mode_column: str = "mode",
               need_answer: bool = True) -> RowCheck:
    """Check the first `limit` rows of `ds` (canonical columns; -1: all, 0: none) as a step would use them."""
    t0 = time.perf_counter()
    total = len(ds)
    n = total if limit < 0 else min(limit, total)
    if n == 0:
        return RowCheck(None, [], 0, total)
    table = ds.with_format("arrow")[:n]  # Arrow columns: no per-row objects, images stay {path, bytes}
    column = {c: table.column(c).to_pylist() for c in ("prompt", "answer", "image", "images", mode_column)
              if c in table.column_names}
    decoded: dict = {}  # image key -> error message or "" (decoded)
    bad, usable = [], []
    for i in range(n):
        why = _row_problem(i, {c: v[i] for c, v in column.items()}, mode_column, need_answer, decoded)
        if why is None:
            usable.append(i)
            continue
        if on_bad_row == "error":
            raise DataError(why)
        bad.append(why)
    if not usable:
        raise DataError(f"no usable row among the {n} checked (data.on_bad_row: skip); first: {bad[0]}")
    took = time.perf_counter() - t0
    if not bad:
        return RowCheck(None, [], n, total, took)
    return RowCheck(usable + list(range(n, total)), bad, n, total, took)


def _row_problem(i: int, raw: dict, mode_column: str, need_answer: bool, decoded: dict) -> str | None:
    """The message a step would raise for row `i` (rlkit.data.to_row, open_image, the answer), None if fine."""
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return f"row {i}: 'prompt' must be a non-empty string, got {prompt!r:.80}"
    if need_answer and raw.get("answer") is None:
        return f"row {i}: 'answer' is missing or empty"
    mode = raw.get(mode_column)
    if mode is not None and mode not in MODES:
        return f"row {i}: column '{mode_column}' must be 'fast' or 'deep', got {mode!r}"
    for img in row_images(raw):
        key = _key(img)
        if key is None:
            return f"row {i}: image must be a file path or a PIL image, got {type(img).__name__}"
        if key not in decoded:
            decoded[key] = _decode_problem(img)
        if decoded[key]:
            return f"row {i}: {decoded[key]}"
    return None


def _key(img):
    """A hashable identity of an image value (its path, or its bytes' id); None for a value that is no image."""
    from PIL import Image

    if isinstance(img, str):
        return img
    if isinstance(img, dict) and (img.get("path") or img.get("bytes")):
        return img.get("path") or id(img["bytes"])
    if isinstance(img, Image.Image):
        return id(img)
    return None


def _decode_problem(img) -> str:
    import os

    path = img if isinstance(img, str) else (img.get("path") if isinstance(img, dict) and not img.get("bytes")
                                             else None)
    if path is not None and not os.path.exists(path):
        return f"image file not found: {path}"
    try:
        open_image(img)
    except DataError as e:
        return str(e)
    return ""
