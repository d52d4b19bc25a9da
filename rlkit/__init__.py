"""rlkit.

Old import paths: modules moved into the layered tree (docs/ARCHITECTURE.md) are still importable under their
old names for a release: `import rlkit.grpo` gives the module `rlkit.drivers.grpo` itself (the same object,
so attributes and monkeypatches agree). Aliases, not files left at the old paths: a moved file keeps its
history (git follows the rename), and a second copy of a name cannot drift.
"""
import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {f"rlkit.{old}": f"rlkit.{pkg}.{old}" for pkg, olds in {
    "drivers": ("grpo", "dpo", "rlaifv", "rlaifv_checks", "ablation", "ablation_eval", "evaluate", "sft", "vqa_eval"),
    "run": ("checkpoint", "rundir", "runlog"),
    "distributed": ("orchestration", "pool", "resources"),
    "step": ("collect", "modes", "filters", "mode_metrics", "reward_health"),
    "policy": ("worker", "batching", "vision", "lora", "sharding", "streaming"),
}.items() for old in olds}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `rlkit.<old>` as the module at its new path (`MOVED`)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # importlib sets __spec__ to the alias's: exec_module puts it back
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldPaths())
