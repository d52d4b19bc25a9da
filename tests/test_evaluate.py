"""Held-out evaluation per mode (rlkit.drivers.evaluate) and the `rlkit eval` command, on a tiny real text model.

The tiny model's weights are perturbed (seeded) so that its greedy answers vary in text and length (the freshly
initialised one repeats one token up to the limit); every number is checked against an independent greedy
decode with transformers and an independent call of the reward function.
"""
import json
import shutil

import pytest
import torch

from rewards import RewardScorer, RewardSpec, exact_match, think_format
from rlkit.run import checkpoint as ckpt
from rlkit.cli import main
from rlkit.config import ConfigError, GRPOConfig, load_config
from rlkit.data import DataError
from rlkit.drivers.evaluate import (HeldOutEval, accuracy_reward_name, evaluate_modes, load_eval_rows, resolve_checkpoint,
                            reward_score_fn)
from rlkit.models.loading import ModelLoadError
from rlkit.step.modes import render_prompt
from rlkit.records import PromptRow

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(tiny_text_path, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_text_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_text_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        head = model.get_output_embeddings().weight  # EOS wins where a frequent token would: varied lengths
        head[tok.eos_token_id] = 1.1 * head[196]
    out = tmp_path_factory.mktemp("tiny_text_perturbed")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def greedy_reference(path, rows, mode):
    """transformers `generate`, one prompt at a time, greedy: (texts, ids with the stop token kept)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts, ids = [], []
    for row in rows:
        prompt = tok(render_prompt(tok, row, mode), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=MAX_TOKENS, do_sample=False)
        new = out[0, prompt["input_ids"].shape[1]:].tolist()
        ids.append(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
    return texts, ids


def arithmetic_rows(n):
    return load_eval_rows(load_config(GRPOConfig, None, ["data.source=arithmetic", f"data.eval_limit={n}"]))


def test_evaluate_modes_matches_an_independent_greedy_decode(model_dir):
    from transformers import AutoTokenizer

    from rollout import make_engine

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = arithmetic_rows(8)
    ref = {m: greedy_reference(model_dir, rows, m) for m in ("fast", "deep")}
    assert len({len(i) for i in ref["fast"][1] + ref["deep"][1]}) > 2, "the test model should vary in length"
    # even rows: the right answer is what the model says in fast mode; odd rows: something it never says
    rows = [PromptRow(r.index, r.prompt, [], ref["fast"][0][i] if i % 2 == 0 else "no such answer", r.columns)
            for i, r in enumerate(rows)]
    answers = [r.answer for r in rows]
    seen = {}
    specs = [RewardSpec(name="exact_match"), RewardSpec(name="format")]
    engine = make_engine("vllm", model_path=model_dir, max_model_len=512, kv_cache_gib=0.25, seed=0)
    try:
        with RewardScorer(specs, isolation="inline") as scorer:
            grade = reward_score_fn(scorer, "exact_match", tok)

            def score(rows_, mode, texts, ids):
                seen[mode] = (list(texts), [list(x) for x in ids])
                return grade(rows_, mode, texts, ids)

            res = evaluate_modes(engine, tok, rows, modes=["fast", "deep"], score_fn=score, max_tokens=MAX_TOKENS)
            fmt = evaluate_modes(engine, tok, rows, modes=["fast", "deep"], max_tokens=MAX_TOKENS,
                                 score_fn=reward_score_fn(scorer, "format", tok))
            # a held-out prompt over max_model_len (512): answered with nothing, graded wrong, counted
            long_row = PromptRow(99, "a b c d " * 400, [], "x", {})
            with_long = evaluate_modes(engine, tok, rows + [long_row], modes=["fast"], score_fn=grade,
                                       max_tokens=MAX_TOKENS)
    finally:
        engine.close()
    for mode in ("fast", "deep"):
        texts, ids = ref[mode]
        assert seen[mode] == (texts, ids), mode  # the engine's greedy answers are the reference's
        expect_acc = sum(exact_match([""] * len(rows), texts, answer=answers)) / len(rows)
        assert res[mode] == {"accuracy": pytest.approx(expect_acc), "tokens_mean": pytest.approx(
            sum(map(len, ids)) / len(rows)), "n": len(rows)}
        # the reward sees the sample's mode: the format rule differs between fast and deep
        expect_fmt = sum(think_format([""] * len(rows), texts, mode=[mode] * len(rows))) / len(rows)
        assert fmt[mode]["accuracy"] == pytest.approx(expect_fmt)
    assert 0 < res["fast"]["accuracy"] < 1  # half the rows were made right on purpose
    assert with_long["fast"] == {"accuracy": pytest.approx(res["fast"]["accuracy"] * len(rows) / (len(rows) + 1)),
                                 "tokens_mean": pytest.approx(res["fast"]["tokens_mean"] * len(rows) / (len(rows) + 1)),
                                 "n": len(rows) + 1, "prompt_too_long": 1}
    assert res["fast"]["tokens_mean"] != res["deep"]["tokens_mean"]


def test_evaluate_modes_refuses_bad_scores(model_dir):
    from rollout import make_engine

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = make_engine("hf", model_path=model_dir)
    rows = arithmetic_rows(2)
    with pytest.raises(ValueError, match="score_fn returned 1 scores for 2 rows"):
        evaluate_modes(engine, tok, rows, modes=["fast"], score_fn=lambda *a: [1.0], max_tokens=2)
    with pytest.raises(ValueError, match=r"score of row 1 \(fast\) must be a finite number or None, got 'yes'"):
        evaluate_modes(engine, tok, rows, modes=["fast"], score_fn=lambda *a: [1.0, "yes"], max_tokens=2)
    res = evaluate_modes(engine, tok, rows, modes=["fast"], score_fn=lambda *a: [None, 1.0], max_tokens=2)
    assert res["fast"]["accuracy"] == 0.5  # None counts as not right
    with pytest.raises(ValueError, match="unknown mode 'slow'"):
        evaluate_modes(engine, tok, rows, modes=["slow"], score_fn=lambda *a: [0, 0], max_tokens=2)


def test_held_out_schedule():
    cfg = load_config(GRPOConfig, None, ["trainer.eval_every=3", "max_steps=7"])
    ev = HeldOutEval(cfg, [], None, None, None)
    assert [s for s in range(0, 8) if ev.due(s)] == [0, 3, 6, 7]


def test_accuracy_reward_and_eval_config_checks():
    assert accuracy_reward_name("", ["exact_match", "format"]) == "exact_match"
    assert accuracy_reward_name("format", ["exact_match", "format"]) == "format"
    with pytest.raises(ConfigError, match="config key 'trainer.accuracy_reward': 'acc' is not a configured reward "
                                          r"\(rewards: exact_match, format\)"):
        accuracy_reward_name("acc", ["exact_match", "format"])
    from rlkit.run.checks import check_grpo

    for override, key in [("trainer.eval_modes=[fast, slow]", "trainer.eval_modes"),
                          ("trainer.eval_modes=[]", "trainer.eval_modes"),
                          ("trainer.eval_modes=[deep, deep]", "trainer.eval_modes"),
                          ("trainer.eval_every=-1", "trainer.eval_every"),
                          ("data.eval_limit=-5", "data.eval_limit"),
                          ("algorithm.mode_groups=modes", "algorithm.mode_groups")]:
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            check_grpo(load_config(GRPOConfig, None, [override]))


def test_held_out_rows_and_their_errors(tmp_path):
    rows = arithmetic_rows(5)
    assert len(rows) == 5 and all(r.answer is not None for r in rows)
    train = load_eval_rows(load_config(GRPOConfig, None, ["data.source=arithmetic", "data.eval_split=train",
                                                          "data.eval_limit=5"]))
    assert [r.prompt for r in train] != [r.prompt for r in rows]  # test and train splits differ
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    with pytest.raises(ConfigError, match="config key 'data.eval_source': data.source .*train.jsonl is a local file"):
        load_eval_rows(load_config(GRPOConfig, None, [f"data.source={f}"]))
    held = tmp_path / "test.jsonl"
    held.write_text(json.dumps({"prompt": "7+1?", "answer": "8"}) + "\n" + json.dumps({"prompt": "9+1?"}) + "\n")
    cfg = load_config(GRPOConfig, None, [f"data.source={f}", f"data.eval_source={held}"])
    with pytest.raises(DataError, match="test.jsonl .*row 1: 'answer' is missing"):
        load_eval_rows(cfg)
    cfg.data.on_bad_row = "skip"
    assert [(r.prompt, r.answer) for r in load_eval_rows(cfg)] == [("7+1?", "8")]
    with pytest.raises(ConfigError, match="config key 'data.eval_split': cannot load split 'dev' of arithmetic"):
        load_eval_rows(load_config(GRPOConfig, None, ["data.source=arithmetic", "data.eval_split=dev"]))


def write_checkpoint(run_dir, model_dir, step):
    """A checkpoint laid out as `rlkit grpo` writes it: checkpoints/step_N (model files, run_state, COMPLETE)."""
    staging = ckpt.staging_dir(run_dir, step)
    shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    return ckpt.finalize(run_dir, step, staging, {"step": step})


def test_resolve_checkpoint(tmp_path, model_dir):
    run = tmp_path / "run"
    write_checkpoint(run, model_dir, 1)
    step2 = write_checkpoint(run, model_dir, 2)
    (ckpt.checkpoints_dir(run) / ".step_3.tmp").mkdir()  # an unfinished one is never picked
    assert resolve_checkpoint(step2) == step2
    assert resolve_checkpoint(run) == step2 and resolve_checkpoint(run / "checkpoints") == step2
    with pytest.raises(ModelLoadError, match=f"checkpoint not found: {tmp_path}/nope"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=f"checkpoint {tmp_path}/empty is not a model folder"):
        resolve_checkpoint(tmp_path / "empty")


def test_rlkit_eval_end_to_end_vllm_and_hf(tmp_path, model_dir, capsys):
    """`rlkit eval` on a run directory: the newest checkpoint in vLLM, then the same with rollout.engine=hf."""
    run = tmp_path / "run"
    step = write_checkpoint(run, model_dir, 1)
    common = ["data.source=arithmetic", f"rollout.max_tokens={MAX_TOKENS}", "rollout.max_model_len=512",
              "rollout.kv_cache_gib=0.25", "rewards=[{name: format}, {name: exact_match}]"]
    assert main(["eval", "--checkpoint", str(run), "--limit", "6", *common]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["checkpoint"] == str(step) and report["split"] == "test" and report["n"] == 6
    assert report["accuracy_reward"] == "format" and report["config"]["data"]["source"] == "arithmetic"
    rows = arithmetic_rows(6)
    for mode in ("fast", "deep"):
        texts, ids = greedy_reference(model_dir, rows, mode)
        expect = sum(think_format([""] * 6, texts, mode=[mode] * 6)) / 6
        assert report["modes"][mode] == {"accuracy": pytest.approx(expect),
                                         "tokens_mean": pytest.approx(sum(map(len, ids)) / 6), "n": 6}
    assert "fast: accuracy" in capsys.readouterr().out
    out = tmp_path / "hf" / "e.json"
    assert main(["eval", "--checkpoint", str(step), "--out", str(out), "--limit", "6", "--split", "test", *common,
                 "rollout.engine=hf", "trainer.eval_modes=[deep]"]) == 0
    hf = json.loads(out.read_text())
    assert list(hf["modes"]) == ["deep"] and hf["modes"]["deep"] == report["modes"]["deep"]


def test_rlkit_eval_errors_name_what_is_wrong(tmp_path, model_dir, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "no_such_ckpt"), "data.source=arithmetic"]) == 2
    assert f"checkpoint not found: {tmp_path}/no_such_ckpt" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    assert main(["eval", "--checkpoint", str(tmp_path / "notes"), "data.source=arithmetic"]) == 2
    assert "is not a model folder (no config.json)" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", model_dir, "data.source=arithmetic", "trainer.accuracy_reward=acc"]) == 2
    assert "config key 'trainer.accuracy_reward': 'acc' is not a configured reward" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", model_dir, "--limit", "-1", "data.source=arithmetic"]) == 2
    assert "--limit: must be >= 0" in capsys.readouterr().err
