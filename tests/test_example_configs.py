"""Every shipped example config loads with its driver's config class and passes that driver's checks, and
its comments name only files that exist and no patch that is still to come (issue #15: comments must be true).

DRIVERS lists every examples/**/*.yaml by hand, so a new example must be added here (the first test fails
otherwise)."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

DRIVERS = {
    "examples/ablation/ablation.yaml": "ablation",
    "examples/ablation/ablation_gpu.yaml": "ablation",
    "examples/arithmetic/grpo.yaml": "grpo",
    "examples/easy_vqa/grpo.yaml": "grpo",
    "examples/rewards/grpo_my_reward.yaml": "grpo",
    "examples/rlaifv/dpo.yaml": "dpo",
    "examples/rlaifv/rlaifv.yaml": "rlaifv",
    "examples/rlaifv/rlaifv_real.yaml": "rlaifv",
    "examples/recipe/recipe.yaml": "recipe",
    "examples/recipe/recipe_no_rlpr.yaml": "recipe",
    "examples/rlpr/grpo_rlpr.yaml": "grpo",
    "examples/smollm2/grpo.yaml": "grpo",
}
YAMLS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").rglob("*.y*ml"))


def test_every_example_config_has_a_driver():
    assert YAMLS == sorted(DRIVERS), "add the new example config to DRIVERS with the command that runs it"


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_example_config_loads_with_its_driver(name):
    from rlkit.config import load_config
    from rlkit.run.checks import check_grpo

    path, driver = ROOT / name, DRIVERS[name]
    if driver == "ablation":
        from rlkit.drivers.ablation import load_ablation_config

        grpo, _ = load_ablation_config(path)
        check_grpo(grpo)
    elif driver == "grpo":
        from rlkit.config import GRPOConfig

        check_grpo(load_config(GRPOConfig, path))
    elif driver == "recipe":  # examples/recipe/run.py: recipe keys + a `grpo:` section checked as rlkit grpo's
        import importlib.util
        import sys

        spec = importlib.util.spec_from_file_location("recipe_run", ROOT / "examples/recipe/run.py")
        run = importlib.util.module_from_spec(spec)
        sys.modules["recipe_run"] = run  # dataclasses look their module up
        spec.loader.exec_module(run)
        run.load(path, [])
    elif driver == "dpo":
        from rlkit.drivers.dpo import DPOConfig, check_dpo

        check_dpo(load_config(DPOConfig, path))
    else:
        from rlkit.drivers.rlaifv import RLAIFVConfig, check_rlaifv

        check_rlaifv(load_config(RLAIFVConfig, path))
    # the command a comment gives for this file names its driver
    for cmd in re.findall(r"rlkit (\w+) --config (\S+)", path.read_text()):
        if cmd[1] == name:
            assert cmd[0] == driver, f"{name}: its comment runs it with 'rlkit {cmd[0]}'"


PATH = re.compile(r"\b((?:examples|docs|rlkit|benchmarks|tests)/[\w./-]*\w\.(?:py|md|yaml|jsonl|txt))\b")


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_example_comments_are_current(name):
    comments = "\n".join(line.split("#", 1)[1] for line in (ROOT / name).read_text().splitlines() if "#" in line)
    for ref in PATH.findall(comments):
        assert (ROOT / ref).exists(), f"{name}: a comment names {ref}, which does not exist"
    stale = re.search(r"(once|until)[^.\n]*(patch|merged)", comments, re.IGNORECASE)
    assert not stale, f"{name}: a comment waits for a patch: {stale.group(0)!r}"
