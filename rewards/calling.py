"""Calling one reward function the way TRL does, on a whole batch or one sample at a time.

Why its own module: the in-process runner and the worker process must call rewards identically (keywords,
async, column slicing, checking what comes back), so both import this. It imports nothing heavy.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import math
import os
import traceback
from typing import Callable, Iterator

_SIG_CACHE: dict = {}


def _accepts(fn: Callable) -> tuple[bool, frozenset]:
    """(takes **kwargs, named parameters) of `fn`."""
    try:
        return _SIG_CACHE[fn]
    except (KeyError, TypeError):
        pass
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        found = (True, frozenset())
    else:
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        found = (var_kw, frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)))
    try:
        _SIG_CACHE[fn] = found
    except TypeError:  # unhashable callable object
        pass
    return found


def unknown_kwargs(fn: Callable, names) -> list[str]:
    """The keyword names `fn` cannot take (empty when it has **kwargs)."""
    var_kw, params = _accepts(fn)
    return [] if var_kw else [n for n in names if n not in params]


def call_reward(fn: Callable, prompts: list, completions: list, columns: dict, kwargs: dict) -> list:
    """`fn(prompts=..., completions=..., **columns, **kwargs)`, as TRL calls it; async callables are awaited.

    Keywords the function does not accept are dropped (unless it has **kwargs), so a five-minute reward
    may be `def score(completions, answer): ...`. Bound `kwargs` win over columns of the same name.
    """
    args = {"prompts": prompts, "completions": completions, **columns, **kwargs}
    var_kw, params = _accepts(fn)
    if not var_kw:
        args = {k: v for k, v in args.items() if k in params}
    result = fn(**args)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable):
    return await awaitable


def slice_columns(columns: dict, idx: list[int], n: int) -> dict:
    """Columns restricted to the samples `idx`: list/tuple columns of length `n` are indexed, others passed as-is."""
    return {k: ([v[i] for i in idx] if isinstance(v, (list, tuple)) and len(v) == n else v) for k, v in columns.items()}


class BadReturn(Exception):
    """A reward's return value as a whole is unusable (not a list, or the wrong number of values); its text
    starts with the kind ("wrong type: ", "wrong length: ")."""


def check_values(values, n: int) -> list[tuple[float | None, str | None]]:
    """A reward's return value as `n` outcomes (value, error): a float, or None with error None (does not apply),
    or None with an error for a value that is not a number ("wrong type: ...") or not finite ("not finite: ...":
    NaN or an infinity is a failure of that sample, never used). Raises `BadReturn` when the whole return value is
    unusable."""
    if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise BadReturn(f"wrong type: a reward must return a list of float | None, got {type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise BadReturn(f"wrong length: returned {len(values)} values for {n} completions")
    out: list[tuple[float | None, str | None]] = []
    for v in values:
        if v is None:
            out.append((None, None))
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            out.append((None, f"wrong type: returned a {type(v).__name__} ({v!r:.40}), not a float or None"))
            continue
        out.append((f, None) if math.isfinite(f) else (None, f"not finite: returned {f}"))
    return out


_HARNESS = (__file__,)


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple:
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple(sorted({os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib", "purelib", "platlib")
                         if paths.get(k)}))


def where(exc: BaseException) -> str:
    """'file:line' where `exc` was raised: the innermost frame outside this module, the standard library and
    installed packages (the reward's own code), else the innermost frame; '' without a traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename not in _HARNESS]
    if not frames:
        return ""
    libs = _library_dirs()
    own = [f for f in frames if not f.filename.startswith("<") and not os.path.realpath(f.filename).startswith(libs)]
    f = (own or frames)[-1]
    return f"{f.filename}:{f.lineno}"


def error_text(exc: BaseException) -> str:
    """A failure's text: a `BadReturn`'s own text, else "Type: message (at file:line)"."""
    if isinstance(exc, BadReturn):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    text = text if len(text) <= 500 else text[:497] + "..."
    at = where(exc)
    return f"{text} (at {at})" if at else text


def per_sample(fn: Callable, prompts: list, completions: list, columns: dict, kwargs: dict,
               stop=lambda: False) -> Iterator[tuple[int, float | None, str | None]]:
    """Call `fn` on each sample alone; yields (index, value, error). `stop()` ends the loop early."""
    n = len(completions)
    for i in range(n):
        if stop():
            return
        try:
            vals = call_reward(fn, [prompts[i]], [completions[i]], slice_columns(columns, [i], n), kwargs)
            value, error = check_values(vals, 1)[0]
            yield i, value, error
        except Exception as e:  # noqa: BLE001 - a reward's failure is data, reported with its sample
            yield i, None, error_text(e)


def batch(fn: Callable, prompts: list, completions: list, columns: dict,
          kwargs: dict) -> tuple[list | None, str | None]:
    """Call `fn` once on the whole batch; (outcomes, None) with one (value, error) per sample, or (None, error)."""
    try:
        return check_values(call_reward(fn, prompts, completions, columns, kwargs), len(completions)), None
    except Exception as e:  # noqa: BLE001
        return None, error_text(e)
