"""Dependencies point down: the leaf packages never import the drivers, the policy worker or Ray."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "rollout": ("rlkit", "ray", "rewards", "preference"),
    "rewards": ("rlkit.grpo", "rlkit.worker", "rlkit.orchestration", "rlkit.cli", "ray", "rollout"),
    "preference": ("rlkit.grpo", "rlkit.worker", "rlkit.orchestration", "rlkit.cli", "ray", "rollout"),
    "rlkit/algorithms": ("rlkit.grpo", "rlkit.worker", "rlkit.orchestration", "ray", "rollout", "rewards",
                         "transformers", "vllm"),
}
RAY_ALLOWED = {"rlkit/orchestration.py", "rlkit/pool.py", "rlkit/warm_start.py", "rlkit/grpo.py"}


def imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_leaf_packages_do_not_import_upwards():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for f in (ROOT / pkg).rglob("*.py"):
            for mod in imports(f):
                if any(mod == x or mod.startswith(x + ".") for x in forbidden):
                    bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not bad, bad


def test_only_orchestration_and_drivers_import_ray():
    bad = []
    for f in list((ROOT / "rlkit").rglob("*.py")) + list((ROOT / "rollout").rglob("*.py")) + list((ROOT / "rewards").rglob("*.py")):
        rel = str(f.relative_to(ROOT))
        if rel in RAY_ALLOWED:
            continue
        if any(m == "ray" or m.startswith("ray.") for m in imports(f)):
            bad.append(rel)
    assert not bad, bad
