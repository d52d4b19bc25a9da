"""The ablation: cold-start rows in both formats (labels cover exactly the target, prompts rendered per mode),
the report (table numbers and plot) from hand-built metrics files, the configs; a slow end-to-end run."""
import json
import pathlib

import pytest
import torch

from rewards import exact_match
from rewards.structure import format_ok
from rlkit.drivers.sft import IGNORE_INDEX, build_sft_batch, mode_rows

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain_tok():
    from rlkit.data.arith_chain import load_arith_chain
    from rlkit.models.tokenizers import train_small_tokenizer

    rows = [dict(r) for r in load_arith_chain("train", limit=200)]
    texts = [r["prompt"] for r in rows] + [r["answer"] for r in mode_rows(rows)]
    return train_small_tokenizer(texts, 400), rows


def test_mode_rows_targets(chain_tok):
    _, rows = chain_tok
    out = mode_rows(rows[:3])
    assert [r["mode"] for r in out] == ["fast", "deep"] * 3
    fast, deep = out[0], out[1]
    assert fast["answer"] == rows[0]["answer"] and fast["prompt"] == deep["prompt"] == rows[0]["prompt"]
    assert deep["answer"] == f"<think>\n{rows[0]['reasoning']}\n</think>\n\n{rows[0]['answer']}"
    # the format reward and the answer reader accept both targets in their modes
    assert format_ok(deep["answer"], "deep") and format_ok(fast["answer"], "fast")
    assert not format_ok(deep["answer"], "fast")
    assert exact_match(["q", "q"], [fast["answer"], deep["answer"]], answer=[rows[0]["answer"]] * 2) == [1.0, 1.0]
    assert [r["mode"] for r in mode_rows(rows[:2], modes=["deep"])] == ["deep", "deep"]
    with pytest.raises(ValueError, match="row 0: a deep cold-start row needs"):
        mode_rows([{"prompt": "q", "answer": "1"}])
    with pytest.raises(ValueError, match="modes"):
        mode_rows(rows[:1], modes=["medium"])


def test_labels_cover_exactly_the_target_in_both_modes(chain_tok):
    tok, rows = chain_tok
    out = mode_rows(rows[:2])  # fast, deep, fast, deep: one batch mixing both modes
    batch = build_sft_batch(tok, [r["prompt"] for r in out], None, [r["answer"] for r in out],
                            modes=[r["mode"] for r in out])
    assert "mm_token_type_ids" not in batch  # a text tokenizer: nothing for mrope
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for i, r in enumerate(out):
        enable = r["mode"] == "deep"
        prompt = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": r["prompt"]}]}],
                                         tokenize=False, add_generation_prompt=True, enable_thinking=enable)
        assert prompt.endswith("<|im_start|>assistant\n" if enable else "<|im_start|>assistant\n<think>\n\n</think>\n\n")
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tok(r["answer"], add_special_tokens=False)["input_ids"] + [eos]
        ids, labels, n = batch["input_ids"][i], batch["labels"][i], int(batch["attention_mask"][i].sum())
        assert ids[:n].tolist() == p_ids + t_ids
        assert labels[: len(p_ids)].tolist() == [IGNORE_INDEX] * len(p_ids)
        assert labels[len(p_ids):n].tolist() == t_ids
        assert (labels[n:] == IGNORE_INDEX).all()
        assert tok.decode(labels[labels != IGNORE_INDEX]) == r["answer"] + "<|im_end|>"
    # digits and operators are their own tokens: a deep target's steps tokenise as the text reads
    pieces = tok.tokenize("12 - 3 = 9")
    assert [p.strip("Ġ") for p in pieces if p.strip("Ġ")] == ["1", "2", "-", "3", "=", "9"]
    with pytest.raises(ValueError, match="modes"):
        build_sft_batch(tok, ["q"], None, ["1"], modes=["fast", "deep"])


def test_sft_trains_on_mixed_modes(chain_tok):
    from rlkit.models.tiny import TinySpec, build_text_model
    from rlkit.drivers.sft import SFTConfig, answer_loss, sft

    tok, rows = chain_tok
    torch.set_num_threads(1)
    model = build_text_model(tok, TinySpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64), seed=0)
    out = mode_rows(rows[:8])
    batch = build_sft_batch(tok, [r["prompt"] for r in out], None, [r["answer"] for r in out],
                            modes=[r["mode"] for r in out])
    with torch.no_grad():
        before = float(answer_loss(model, batch))
    res = sft(model, tok, out, SFTConfig(lr=3e-3, batch_size=16, max_steps=20, seed=0))
    with torch.no_grad():
        after = float(answer_loss(model, batch))
    assert res.steps == 20 and after < before - 0.5, (before, after)


# ------------------------------------------------------------------------------------------------ report
def _metrics(path, evals, steps, tokens_per_step):
    """A metrics.jsonl as run_grpo writes it (step lines with tokens/sampled_total) plus eval lines."""
    lines, total = [], 0
    for s in range(1, steps + 1):
        total += tokens_per_step
        lines.append({"step": s, "reward/mean": 0.5, "tokens/sampled": tokens_per_step, "tokens/sampled_total": total})
    for step, fast, deep in evals:
        lines.append({"step": step, "tokens_sampled_total": step * tokens_per_step,
                      "eval/fast/accuracy": fast, "eval/fast/tokens_mean": 2.0,
                      "eval/deep/accuracy": deep, "eval/deep/tokens_mean": 30.0})
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))


def test_report_from_hand_built_metrics(tmp_path):
    from PIL import Image

    from rlkit.drivers.ablation import curve_from_metrics, final_scores, tokens_to_reach, write_report

    _metrics(tmp_path / "deep.jsonl", [(0, 0.2, 0.4), (10, 0.25, 0.5), (20, 0.3, 0.6)], 20, 1000)
    _metrics(tmp_path / "hyb.jsonl", [(0, 0.2, 0.4), (10, 0.4, 0.6), (20, 0.5, 0.65)], 20, 550)
    deep, hyb = curve_from_metrics(tmp_path / "deep.jsonl"), curve_from_metrics(tmp_path / "hyb.jsonl")
    assert [r["step"] for r in deep] == [0, 10, 20] and deep[-1]["tokens_sampled_total"] == 20000
    assert final_scores(hyb) == {"fast": {"accuracy": 0.5, "tokens_mean": 2.0}, "deep": {"accuracy": 0.65, "tokens_mean": 30.0}}
    assert tokens_to_reach(deep, "deep", 0.6) == 20000 and tokens_to_reach(hyb, "deep", 0.6) == 5500
    assert tokens_to_reach(hyb, "deep", 0.9) is None
    runs = {name: {"deep_ratio": ratio, "steps": 20, "tokens_sampled_total": curve[-1]["tokens_sampled_total"],
                   "wall_s": wall, "curve": curve, "final": final_scores(curve)}
            for name, ratio, curve, wall in (("deep_only", 1.0, deep, 300.0), ("hybrid", 0.5, hyb, 200.0))}
    result = {"source": "arith_chain", "seed": 0, "held_out": {"split": "test", "n": 300, "reward": "exact_match"},
              "runs": runs, "wall_s": 600.0}
    paths = write_report(result, tmp_path / "report")
    md = paths["md"].read_text()
    assert "| cold start | - | 0 | 0.200 | 0.400 | 2.0 | 30.0 | 0 | - |" in md
    assert "| deep_only | 1 | 20 | 0.300 | 0.600 | 2.0 | 30.0 | 20,000 | 300 s |" in md
    assert "| hybrid | 0.5 | 20 | 0.500 | 0.650 | 2.0 | 30.0 | 11,000 | 200 s |" in md
    assert "hybrid / deep-only: 0.55" in md
    # target = 0.4 + 0.9 * (0.6 - 0.4) = 0.58: deep-only first at step 20 (20,000 tokens), hybrid at step 10 (5,500)
    assert ("Deep-mode target = 90% of deep-only's gain (0.400 -> 0.600): 0.580; first reached by deep-only after "
            "20,000 sampled tokens, hybrid after 5,500 (0.28 of deep-only's)") in md
    assert json.loads(paths["json"].read_text())["runs"]["hybrid"]["final"]["deep"]["accuracy"] == 0.65
    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300


def test_report_when_hybrid_never_reaches(tmp_path):
    from rlkit.drivers.ablation import curve_from_metrics, final_scores, report_table

    _metrics(tmp_path / "deep.jsonl", [(0, 0.2, 0.4), (10, 0.3, 0.7)], 10, 1000)
    _metrics(tmp_path / "hyb.jsonl", [(0, 0.2, 0.4), (10, 0.5, 0.6)], 10, 500)
    runs = {name: {"deep_ratio": r, "steps": 10, "tokens_sampled_total": c[-1]["tokens_sampled_total"], "wall_s": 1.0,
                   "curve": c, "final": final_scores(c)}
            for name, r, c in (("deep_only", 1.0, curve_from_metrics(tmp_path / "deep.jsonl")),
                               ("hybrid", 0.5, curve_from_metrics(tmp_path / "hyb.jsonl")))}
    assert "hybrid at no evaluated point" in report_table({"runs": runs})  # target 0.67 > the hybrid's 0.6


def test_a_rerun_moves_the_previous_run_aside(tmp_path):
    from rlkit.drivers.ablation import fresh_run_dir

    run = tmp_path / "hybrid"
    assert fresh_run_dir(run) is None
    for i in (1, 2):
        run.mkdir()
        (run / "metrics.jsonl").write_text(f"run {i}\n")
        assert fresh_run_dir(run) == tmp_path / f"hybrid.previous-{i}" and not run.exists()
    assert (tmp_path / "hybrid.previous-2" / "metrics.jsonl").read_text() == "run 2\n"


# ------------------------------------------------------------------------------------------------ configs
def test_example_configs_load_and_validate():
    from rlkit.drivers.ablation import load_ablation_config

    grpo, abl = load_ablation_config(ROOT / "examples/ablation/ablation.yaml")
    assert grpo.data.source == "arith_chain" and grpo.model.path == "tiny:text"
    assert abl.deep_only_ratio == 1.0 and 0 < abl.hybrid_deep_ratio < 1 and abl.eval.split != grpo.data.split
    grpo, abl = load_ablation_config(ROOT / "examples/ablation/ablation_gpu.yaml")
    assert "VL" in grpo.model.path and grpo.rollout.engine == "vllm" and abl.cold_start.steps > 0
    assert abl.cold_start.modes == ["fast", "deep"]
    # what the loader cannot see: the loss options and reward kwargs must fit the registered functions
    import inspect

    from rewards import RewardScorer
    from rlkit.algorithms import get_policy_loss
    from rlkit.drivers.grpo import reward_specs

    assert set(grpo.algorithm.loss_opts) <= set(inspect.signature(get_policy_loss(grpo.algorithm.policy_loss)).parameters)
    from rewards.registry import get_reward

    scorer = RewardScorer(reward_specs(grpo))  # unknown reward names raise
    assert {p.name for p in scorer.plans} == {"math_accuracy", "exact_match", "format", "length"}
    for r in grpo.rewards:  # rewards take **columns, so a misspelt keyword would pass silently: check by name
        assert set(r.kwargs) <= set(inspect.signature(get_reward(r.name)).parameters), r.name
    grpo, abl = load_ablation_config(ROOT / "examples/ablation/ablation.yaml",
                                     ["ablation.cold_start.steps=7", "max_steps=3", "ablation.eval.modes=[deep]"])
    assert (abl.cold_start.steps, grpo.max_steps, abl.eval.modes) == (7, 3, ["deep"])


@pytest.mark.parametrize("override, key", [
    ("ablation.cold_start.stepz=3", "ablation.cold_start.stepz"),
    ("ablation.hybrid_deep_ratio=1.5", "ablation.hybrid_deep_ratio"),
    ("ablation.eval.modes=[medium]", "ablation.eval.modes"),
    ("ablation.eval.split=train", "ablation.eval.split"),
    ("ablation.eval.reward=nope", "ablation.eval.reward"),
    ("ablation.eval.every=0", "ablation.eval.every"),
    ("ablation.seeds=[1,1]", "ablation.seeds"),
    ("trainer.lrr=1", "trainer.lrr"),
])
def test_bad_ablation_keys_are_named(override, key):
    from rlkit.drivers.ablation import load_ablation_config
    from rlkit.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_ablation_config(ROOT / "examples/ablation/ablation.yaml", [override])


def test_ablation_fields_are_documented():
    import dataclasses

    from rlkit.drivers import ablation as A
    from rlkit.config_docs import _comments

    for cls in (A.AblationSection, A.ColdStartSection, A.EvalSection):
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in _comments(cls)
                   and not dataclasses.is_dataclass(f.default_factory() if callable(f.default_factory) else f.default)]
        assert not missing, f"{cls.__name__} fields without a comment: {missing}"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_rlkit_ablation_end_to_end(tmp_path, capsys):
    """`rlkit ablation` at a toy size: one cold start, both runs from it, curves at every step, the report."""
    from PIL import Image

    from rlkit.cli import main

    out = tmp_path / "abl"
    rc = main(["ablation", "--config", str(ROOT / "examples/ablation/ablation.yaml"), f"output_dir={out}",
               "max_steps=2", "rollout.n=2", "trainer.prompts_per_step=2", "rollout.max_tokens=12",
               "logging.progress=false", "ablation.cold_start.steps=3", "ablation.cold_start.limit=64",
               "ablation.eval.limit=6", "ablation.eval.every=1", "ablation.eval.max_tokens=12", "ablation.seeds=[]"])
    assert rc == 0
    assert "| deep_only | 1 | 2 |" in capsys.readouterr().out
    result = json.loads((out / "ablation.json").read_text())
    cold = result["cold_start"]["checkpoint"]
    assert pathlib.Path(cold) == out / "cold_start"
    for name, ratio in (("deep_only", 1.0), ("hybrid", 0.5)):
        run = result["runs"][name]
        assert run["deep_ratio"] == ratio and run["steps"] == 2
        assert [r["step"] for r in run["curve"]] == [0, 1, 2]
        totals = [r["tokens_sampled_total"] for r in run["curve"]]
        assert totals[0] == 0 and totals[1] > 0 and totals[2] > totals[1]
        metrics = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in metrics if "reward/mean" in m]  # training records (eval records lie between them)
        assert run["tokens_sampled_total"] == steps[-1]["tokens/sampled_total"] == totals[-1]
        assert set(run["final"]) == {"fast", "deep"} and all(0 <= v["accuracy"] <= 1 for v in run["final"].values())
        import yaml

        assert yaml.safe_load((out / name / "config.yaml").read_text())["model"]["path"] == cold  # the same start
    assert result["runs"]["deep_only"]["train"]["deep"]["share"] == 1.0
    start = [{k: v for k, v in result["runs"][r]["curve"][0].items() if k.startswith("eval/") or k == "step"}
             for r in ("deep_only", "hybrid")]
    assert start[0] == start[1] and "eval/deep/accuracy" in start[0]  # both start from the same cold-start policy
    with Image.open(out / "ablation.png") as im:
        assert im.format == "PNG"


@pytest.mark.slow
def test_rlkit_ablation_two_seeds_end_to_end(tmp_path, capsys):
    """`rlkit ablation` with `ablation.seeds` at a toy size: one ablation per seed in seed_<s>, each with its own
    model and data seed and the same held-out rows, then the comparison over seeds (table, plot)."""
    from rlkit.cli import main

    out = tmp_path / "abl"
    rc = main(["ablation", "--config", str(ROOT / "examples/ablation/ablation.yaml"), f"output_dir={out}",
               "max_steps=2", "rollout.n=2", "trainer.prompts_per_step=2", "rollout.max_tokens=12",
               "logging.progress=false", "ablation.cold_start.steps=3", "ablation.cold_start.limit=64",
               "ablation.eval.limit=6", "ablation.eval.every=1", "ablation.eval.max_tokens=12", "ablation.seeds=[0,1]"])
    assert rc == 0
    assert "Verdict (deep mode, pre-registered rule)" in capsys.readouterr().out
    res = json.loads((out / "ablation_seeds.json").read_text())
    assert res["seeds"] == [0, 1] and set(res["summary"]) == {"fast", "deep"}
    held = []
    for s in (0, 1):
        r = json.loads((out / f"seed_{s}" / "ablation.json").read_text())
        assert r["seed"] == s and [c["step"] for c in r["runs"]["hybrid"]["curve"]] == [0, 1, 2]
        held.append(r["held_out"])
        import yaml

        cfg = yaml.safe_load((out / f"seed_{s}" / "hybrid" / "config.yaml").read_text())
        assert (cfg["seed"], cfg["model"]["seed"]) == (s, s)
    assert held[0] == held[1] and len(held[0]["rows_sha256"]) == 64  # the same held-out rows for every seed
    assert (out / "ablation_seeds.png").stat().st_size > 0 and "| 1 |" in (out / "ablation_seeds.md").read_text()


def test_gpu_data_rows_from_hand_built_examples():
    """The GPU data script's conversions (the script itself needs the hub and is not run here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_gpu_data", ROOT / "examples/ablation/make_gpu_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = mod.math_row({"problem": "Area of the square?", "solution": "<think>side 3, so 3*3</think><answer>9</answer>"})
    assert (row["answer"], row["math_answer"], row["doc_answer"], row["reasoning"]) == ("9", "9", None, "side 3, so 3*3")
    row = mod.math_row({"problem": "x?", "solution": "Add them: 2+2.\nSo \\boxed{4}"})
    assert row["answer"] == "4" and row["reasoning"].startswith("Add them")
    assert mod.math_row({"problem": "x?", "solution": ""}) is None
    row = mod.doc_row({"question": "What is the date?", "answers": ["", "May 5", "5 May"]})
    assert (row["answer"], row["doc_answer"], row["math_answer"], row["reasoning"]) == ("May 5", "May 5", None, "")
    assert mod.doc_row({"question": "q", "answers": []}) is None
