"""Is RLPR's reward informative for the miniature's cold-started policy? A training-side diagnostic.

    .venv/bin/python examples/rlpr/diagnose.py [--out runs/rlpr_miniature] [--seed 0] [--arm cold_start] [--prompts 64]

Needs a run of `examples/rlpr/miniature.py`: the cold start (OUT/seed<S>/cold_start) or, with `--arm`, an arm's
final checkpoint (r' is then computed fresh by that policy, not taken from the arm's cache). On the first `--prompts`
distinct TRAINING prompts (never the held-out ones) it samples 8 deep responses each as GRPO does
(temperature 1, 48 tokens, vLLM), scores every sample with the RLPR reward exactly as the `rlpr` arm trains
(rewards/rlpr.py, debiased, mean per-token probability) and with exact match, and judges it with
examples/rlpr/grade.py. Prints and writes OUT/diagnose/seed<S>_<arm>.json:
- accuracy of the samples (judge) and mean RLPR reward of right and of wrong samples;
- groups whose samples all share one reward (nothing for GRPO to learn) and groups mixing right and wrong;
- within mixed groups, `auc`: the chance that a right sample's reward exceeds a wrong one's (ties count 1/2),
  for RLPR and for exact match: how well each training reward ranks what the judge calls right.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from rlkit.runtime_env import apply_defaults  # noqa: E402

apply_defaults(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", VLLM_LOGGING_LEVEL="ERROR")

import grade  # noqa: E402


def auc(right: list[float], wrong: list[float]) -> float | None:
    """P(a right sample's score > a wrong one's), ties 1/2; None when either side is empty.

    >>> auc([1.0, 0.5], [0.5]), auc([0.2], [0.2, 0.9])
    (0.75, 0.25)
    """
    if not right or not wrong:
        return None
    return sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / (len(right) * len(wrong))


def group_stats(groups: list[list[dict]]) -> dict:
    """Summary of sampled groups, each a list of {"right": bool, "rlpr": float, "exact": float}."""
    flat = [s for g in groups for s in g]
    right = [s for s in flat if s["right"]]
    wrong = [s for s in flat if not s["right"]]
    mixed = [g for g in groups if 0 < sum(s["right"] for s in g) < len(g)]
    aucs = {k: [a for a in (auc([s[k] for s in g if s["right"]], [s[k] for s in g if not s["right"]]) for g in mixed)
                if a is not None] for k in ("rlpr", "exact")}
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    return {"groups": len(groups), "samples": len(flat), "accuracy": len(right) / max(1, len(flat)),
            "rlpr_mean_right": mean([s["rlpr"] for s in right]), "rlpr_mean_wrong": mean([s["rlpr"] for s in wrong]),
            "groups_one_rlpr_value": sum(len({round(s["rlpr"], 9) for s in g}) == 1 for g in groups) / max(1, len(groups)),
            "groups_mixed": len(mixed) / max(1, len(groups)),
            "auc_rlpr_in_mixed": mean(aucs["rlpr"]), "auc_exact_in_mixed": mean(aucs["exact"])}


class HFPolicy:
    """`rewards.rlpr.PolicyAccess` over a local transformers causal LM (temperature 1, no grad)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def completion_logprobs(self, prompt_texts, images, completion_ids):
        import torch

        out = []
        with torch.no_grad():
            for text, ids in zip(prompt_texts, completion_ids):
                p = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                x = torch.tensor([p + list(ids)])
                logp = torch.log_softmax(self.model(input_ids=x).logits[0, :-1].float(), -1)
                out.append([float(logp[len(p) - 1 + j, t]) for j, t in enumerate(ids)])
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/rlpr_miniature")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arm", default="cold_start", help="cold_start or an arm of miniature.py (its last checkpoint)")
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args(argv)
    import miniature
    from rewards.basic import exact_match
    from rewards.rlpr import RLPRState, rlpr_scores
    from rlkit.models.loading import load_policy, tokenizer_of
    from rlkit.step.modes import render_prompt
    from rlkit.records import DEEP, PromptRow
    from rollout import RolloutRequest, SamplingConfig, make_engine

    out = pathlib.Path(args.out)
    model_dir = out / f"seed{args.seed}" / "cold_start"
    if args.arm != "cold_start":
        ckpts = sorted((out / f"seed{args.seed}" / args.arm / "checkpoints").glob("step_*/COMPLETE"),
                       key=lambda c: int(c.parent.name.split("_")[1]))
        model_dir = ckpts[-1].parent if ckpts else out / f"seed{args.seed}" / args.arm / "checkpoints"
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"diagnose: no model in {model_dir}; run examples/rlpr/miniature.py first")
    train, _ = miniature.build_data(out)
    rows, seen = [], set()
    for r in train:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            rows.append(r)
    rows = rows[: args.prompts]
    model, processor, _ = load_policy(str(model_dir))
    model.eval()
    tok = tokenizer_of(processor)
    ptexts = [render_prompt(processor, PromptRow(i, r["prompt"], [], None, {}), DEEP) for i, r in enumerate(rows)]
    engine = make_engine("vllm", model_path=str(model_dir), max_model_len=256, seed=args.seed)
    try:
        groups = engine.generate([RolloutRequest(prompt=p, images=[], n=8) for p in ptexts],
                                 SamplingConfig(temperature=1.0, max_tokens=48, n=8, seed=args.seed))
    finally:
        engine.close()
    texts = [c.text for g in groups for c in g]
    ids = [list(c.token_ids) for g in groups for c in g]
    rep = [r for r in rows for _ in range(8)]
    scores = rlpr_scores([r["prompt"] for r in rep], texts, policy=HFPolicy(model, tok),
                         answer=[r["answer"] for r in rep], prompt_text=[p for p in ptexts for _ in range(8)],
                         mode=[DEEP] * len(rep), completion_ids=ids, state=RLPRState())
    exact = exact_match(None, texts, answer=[r["answer"] for r in rep])
    judged = grade.judge(None, texts, answer=[{"accepted": r["accepted"], "distractors": r["distractors"]} for r in rep])
    samples = [{"type": r["type"], "right": bool(j), "rlpr": s.reward or 0.0, "exact": e or 0.0}
               for r, s, e, j in zip(rep, scores, exact, judged)]
    groups_s = [samples[i:i + 8] for i in range(0, len(samples), 8)]
    result = {"seed": args.seed, "arm": args.arm, "model": str(model_dir), "all": group_stats(groups_s),
              "by_type": {t: group_stats([g for g in groups_s if g[0]["type"] == t])
                          for t in sorted({s["type"] for s in samples})}}
    (out / "diagnose").mkdir(exist_ok=True)
    (out / "diagnose" / f"seed{args.seed}_{args.arm}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
