"""The reward registry and loading rewards by path.

Why a registry: configs name rewards (`name: math_accuracy`), the loop looks them up and never branches on a
reward's name. It refuses duplicates, so two plug-ins cannot silently shadow each other or a built-in.
Why paths: a reward author plugs in `my_rewards.py:score` or `package.module:score` without touching rlkit.

What a reward may declare, as plain attributes on the callable (all optional):
- `needs = ("policy",)`: names of the model handles it uses. The scorer checks that its `resources` object has
  each as an attribute, passes it as the keyword `resources=`, and runs the reward in-process (model handles
  cannot cross into a subprocess).
- `batched = True`: call it once per batch instead of once per sample (for rewards that compare samples or
  amortise a set-up cost); a timeout or error then fails the whole call.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Callable

_REGISTRY: dict[str, Callable] = {}


def register_reward(name: str | None = None, fn: Callable | None = None, *, needs: tuple = (),
                    batched: bool | None = None):
    """Register `fn` under `name` (default: its `__name__`); usable as a decorator. Duplicates raise ValueError.

    >>> @register_reward("doc_always_one")
    ... def always_one(prompts, completions, **kwargs):
    ...     return [1.0 for _ in completions]
    >>> get_reward("doc_always_one")(["q"], ["a"])
    [1.0]
    >>> register_reward("doc_always_one", always_one)
    Traceback (most recent call last):
    ...
    ValueError: reward 'doc_always_one' is already registered (by rewards.registry.always_one)
    >>> unregister_reward("doc_always_one")
    """
    def add(f: Callable) -> Callable:
        key = name or getattr(f, "__name__", None)
        if not key or not isinstance(key, str):
            raise ValueError(f"register_reward needs a name for {f!r}")
        if ":" in key:
            raise ValueError(f"reward name {key!r} must not contain ':' (that form is a path)")
        if key in _REGISTRY:
            raise ValueError(f"reward {key!r} is already registered (by {_qualname(_REGISTRY[key])})")
        if not callable(f):
            raise TypeError(f"reward {key!r} is not callable: {f!r}")
        if needs:
            f.needs = tuple(needs)
        if batched is not None:
            f.batched = bool(batched)
        _REGISTRY[key] = f
        return f

    return add(fn) if fn is not None else add


def unregister_reward(name: str) -> None:
    """Remove a registered reward (tests and notebooks that re-register)."""
    _REGISTRY.pop(name, None)


def available_rewards() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def is_path(ref: str) -> bool:
    """True for `file.py:fn` / `package.module:fn`, False for a registered name."""
    return ":" in ref or ref.endswith(".py")


def get_reward(name_or_path: str, **kwargs) -> Callable:
    """The reward callable for a registered name or a path; `kwargs` are bound to it (its name is kept).

    >>> get_reward("exact_match")(prompts=["Capital of France?"], completions=["Paris."], answer=["paris"])
    [1.0]
    >>> get_reward("no_such_reward")
    Traceback (most recent call last):
    ...
    ValueError: unknown reward 'no_such_reward'; registered: ...
    """
    if is_path(name_or_path):
        fn = load_path(name_or_path)
    else:
        if name_or_path not in _REGISTRY:
            raise ValueError(
                f"unknown reward {name_or_path!r}; registered: {', '.join(available_rewards())} "
                "(or give a path: my_rewards.py:score / package.module:score)"
            )
        fn = _REGISTRY[name_or_path]
    return bind(fn, kwargs) if kwargs else fn


def bind(fn: Callable, kwargs: dict) -> Callable:
    """`fn` with keyword arguments bound, keeping `__name__` (TRL names rewards by it), `needs` and `batched`."""
    bound = functools.partial(fn, **kwargs)
    functools.update_wrapper(bound, fn)
    for attr in ("needs", "batched"):
        if hasattr(fn, attr):
            setattr(bound, attr, getattr(fn, attr))
    return bound


def load_path(path: str) -> Callable:
    """Load `file.py:attr` (relative to the working directory) or `package.module:attr`.

    Raises FileNotFoundError / ValueError naming the file or module and what it defines.
    """
    module_part, sep, attr = path.rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(f"reward path {path!r} must look like 'my_rewards.py:score' or 'package.module:score'")
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        module = _load_file(module_part)
        where = f"file {module_part!r}"
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as e:
            raise ValueError(f"reward path {path!r}: cannot import module {module_part!r}: {e}") from e
        where = f"module {module_part!r}"
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            raise ValueError(f"reward path {path!r}: {where} has no {attr!r}; "
                             f"it defines: {', '.join(defined) or 'nothing callable'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward path {path!r}: {attr!r} is not callable")
    return obj


def _load_file(file: str):
    full = os.path.abspath(file)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"reward file {file!r} not found (looked at {full})")
    mod_name = "rlkit_reward_" + "".join(c if c.isalnum() else "_" for c in os.path.basename(full)[:-3]) + "_" + (
        hashlib.sha1(full.encode()).hexdigest()[:8]
    )
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, full)
    if spec is None or spec.loader is None:
        raise ValueError(f"reward file {file!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(full)
    if folder not in sys.path:  # so a plug-in can import its sibling helpers
        sys.path.append(folder)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ValueError(f"reward file {file!r} failed to load: {type(e).__name__}: {e}") from e
    return module


def needs_of(fn: Callable) -> tuple:
    """The resources a reward declared (`fn.needs`), () for rule rewards."""
    needs = getattr(fn, "needs", ())
    return (needs,) if isinstance(needs, str) else tuple(needs or ())


def is_batched(fn: Callable) -> bool:
    return bool(getattr(fn, "batched", False))


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"
