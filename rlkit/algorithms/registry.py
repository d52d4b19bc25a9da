"""Name -> function registries for the pure RL algorithms.

Why: the trainer looks every algorithm up from the config (``algorithm.advantage: grpo``) and never
branches on a name. A registry that refuses duplicates makes two modules claiming the same name a loud
import-time error instead of a silent override, and an unknown name in a config fails with the list of
names that do exist.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, TypeVar

F = TypeVar("F", bound=Callable)


class Registry:
    """A mapping from names to functions of one kind (e.g. ``"advantage estimator"``).

    Usage::

        LOSSES = Registry("policy loss")

        @LOSSES.register("ppo_clip")
        def ppo_clip(logprobs, old_logprobs, advantages, mask, **opts): ...

        LOSSES.get("ppo_clip")   # -> ppo_clip;  LOSSES.get("ppo") -> ValueError listing "ppo_clip"
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._fns: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that registers ``fn`` under ``name``; raises ValueError if the name is taken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(fn: F) -> F:
            if name in self._fns:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered "
                    f"(by {self._fns[name].__module__}.{self._fns[name].__qualname__})"
                )
            self._fns[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        """The function registered as ``name``; ValueError naming the registered ones otherwise."""
        try:
            return self._fns[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> List[str]:
        """Registered names, sorted."""
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._fns)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


ADVANTAGES = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
KL_ESTIMATORS = Registry("KL estimator")
AGGREGATIONS = Registry("loss aggregation")
CORRECTIONS = Registry("off-policy correction")  # rlkit/algorithms/corrections.py
