"""DPOWorker and run_dpo: sequence log-probs equal a direct forward, the first loss is log 2, cached and on-the-fly
references agree, micro-batching does not change the update, and the run directory matches GRPO's."""
import json
import math

import pytest
import torch

from preference import Candidate, EncodedPair, PromptInfo, build_pairs, pairs_to_dataset, save_dataset
from rlkit.config import ConfigError, load_config
from rlkit.data import open_image
from rlkit.data.easy_vqa import load_easy_vqa
from rlkit.drivers.dpo import DPOConfig, DPOWorker, run_dpo
from rlkit.step.modes import render_prompt
from rlkit.records import PromptRow

WRONG = {"yes": "no", "no": "yes"}


def vqa_pairs(worker, k=4):
    """Chosen: the right answer; rejected: a wrong one of another length (prompts of different lengths)."""
    ds = load_easy_vqa("train", limit=k, seed=0)
    tok, out = worker.tokenizer, []
    for i in range(k):
        row = PromptRow(i, ds[i]["prompt"], [open_image(ds[i]["image"])], None, {})
        text = render_prompt(worker.processor, row, "fast")
        right = ds[i]["answer"]
        wrong = WRONG.get(right, "blue circle" if right != "blue" else "red")
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in (right, wrong)]
        out.append(EncodedPair(text, row.images, ids[0], ids[1], i))
    return out


def direct_logp(worker, prompt_text, images, ids):
    """One unpadded sequence through the processor (mrope positions included), full logits, summed logprobs."""
    from rollout.testing import reference_logprobs

    with torch.no_grad():
        return sum(reference_logprobs(worker.model, worker.processor, prompt_text, images, ids)[1])


def test_sequence_logps_match_a_direct_forward(tiny_vlm_path):
    w = DPOWorker(tiny_vlm_path, micro_batch_size=4)  # 2 pairs per micro-batch
    pairs = vqa_pairs(w)
    ref = w.reference_logps(pairs)
    w.model.eval()
    for p, (c, r) in zip(pairs, ref):
        assert c == pytest.approx(direct_logp(w, p.prompt_text, p.images, p.chosen_ids), abs=1e-4)
        assert r == pytest.approx(direct_logp(w, p.prompt_text, p.images, p.rejected_ids), abs=1e-4)


def snapshot(w):
    return {k: v.detach().clone() for k, v in w.model.state_dict().items()}


def test_first_step_cached_vs_on_the_fly_and_micro_batching(tiny_vlm_path):
    a = DPOWorker(tiny_vlm_path, micro_batch_size=2, lr=1e-3)  # one pair per micro-batch, cached reference
    b = DPOWorker(tiny_vlm_path, micro_batch_size=64, lr=1e-3, reference_path=tiny_vlm_path)  # on the fly, one pass
    for w in (a, b):  # SGD: the update is the gradient itself (Adam's first step is sign-like, amplifying float noise)
        w.optimizer = torch.optim.SGD([p for p in w.model.parameters() if p.requires_grad], lr=1.0)
        w.scheduler = torch.optim.lr_scheduler.LambdaLR(w.optimizer, lambda step: 1.0)
    pairs = vqa_pairs(a)
    ref = a.reference_logps(pairs)
    ma = a.dpo_step(pairs, ref)
    mb = b.dpo_step(pairs)
    # policy == reference at the first step: delta = 0, loss = -log sigmoid(0) = log 2, accuracy 0
    assert ma["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert ma["train/rewards/accuracies"] == 0.0 and ma["train/rewards/margins"] == pytest.approx(0, abs=1e-7)
    for k in ("train/loss", "train/grad_norm", "train/logps/chosen", "train/logps/rejected"):
        assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k
    sa, sb = snapshot(a), snapshot(b)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    # after the update the chosen completions gained relative to the rejected ones
    assert a.dpo_eval(pairs, ref)["eval/rewards/margins"] > 0
    assert b.dpo_eval(pairs)["eval/rewards/margins"] == pytest.approx(a.dpo_eval(pairs, ref)["eval/rewards/margins"],
                                                                       rel=1e-4)


def test_scheduler_state_round_trips(tiny_vlm_path, tmp_path):
    w = DPOWorker(tiny_vlm_path, lr=1e-3, lr_schedule="cosine", warmup_steps=1, total_steps=4)
    pairs = vqa_pairs(w, 2)
    ref = w.reference_logps(pairs)
    m1 = w.dpo_step(pairs, ref)
    assert m1["train/lr"] == 0.0  # transformers' warm-up starts at 0
    w.dpo_step(pairs, ref)
    w.save(str(tmp_path / "ck"))
    v = DPOWorker(str(tmp_path / "ck"), lr=1e-3, lr_schedule="cosine", warmup_steps=1, total_steps=4)
    v.load_trainer_state(str(tmp_path / "ck"))
    assert v.step == 2 and v.optimizer.param_groups[0]["lr"] == pytest.approx(w.optimizer.param_groups[0]["lr"])
    with pytest.raises(ValueError, match="no reference"):
        v.dpo_step(pairs)


# ------------------------------------------------------------------------------------------------ driver
def write_pairs(tmp_path, n=6, with_ids=False):
    ds = load_easy_vqa("train", limit=n, seed=2)
    prompts = [PromptInfo(ds[i]["prompt"], [ds[i]["image"]], row=i) for i in range(n)]
    groups = [[Candidate(ds[i]["answer"], 0.0), Candidate(WRONG.get(ds[i]["answer"], "a blue shape"), -1.0)]
              for i in range(n)]
    pairs, _ = build_pairs(groups, balance_length=False)
    data = pairs_to_dataset(prompts, groups, pairs)
    if not with_ids:  # a plain TRL data set: rendered and tokenised by the trainer
        data = data.remove_columns(["prompt_text", "chosen_ids", "rejected_ids"])
    return str(save_dataset(data, tmp_path / "pairs"))


def test_run_dpo_layout_accuracy_and_resume(tiny_vlm_path, tmp_path):
    out = tmp_path / "run"
    args = [f"output_dir={out}", f"model.path={tiny_vlm_path}", f"data.path={write_pairs(tmp_path)}",
            "dpo.batch_size=3", "dpo.epochs=2", "dpo.lr_schedule=constant", "dpo.warmup_ratio=0", "trainer.lr=2e-3",
            "logging.progress=false"]
    summary = run_dpo(load_config(DPOConfig, None, args))
    assert summary["step"] == 4 and (out / "checkpoints" / "step_4" / "COMPLETE").exists()
    assert (out / "config.yaml").exists() and (out / "ref_logps.json").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["eval/rewards/accuracies"] == 0.0 and lines[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert lines[-1]["eval/rewards/accuracies"] > 0.5 and lines[-1]["eval/loss"] < math.log(2)
    # resume: two more steps from step 4 (same cached reference, same pair order)
    more = run_dpo(load_config(DPOConfig, None, args + ["dpo.max_steps=6"]), resume=True)
    assert more["step"] == 6
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="dpo.loss.*registered: hinge, ipo, sigmoid"):
        run_dpo(load_config(DPOConfig, None, ["dpo.loss=kto", "data.path=x"]))
    with pytest.raises(ConfigError, match="data.path"):
        run_dpo(load_config(DPOConfig, None, []))
    with pytest.raises(ConfigError, match="did you mean 'dpo.beta'"):
        load_config(DPOConfig, None, ["dpo.betta=0.2"])
    with pytest.raises(ConfigError, match="dpo.reference"):
        run_dpo(load_config(DPOConfig, None, ["dpo.reference=none", "data.path=x"]))
