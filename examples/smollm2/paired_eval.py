"""Paired before/after comparison on the held-out split (one-off measurement for README.md; not tested): greedy
answers of the base model and of each seed's final checkpoint on the same 300 problems, graded by task.final_number;
the gain's standard error from the per-problem differences. Run from the repository root after both seeds."""
import json
import math
import sys
sys.path.insert(0, "examples/smollm2")
import task  # noqa: E402

from rlkit.models.loading import load_processor  # noqa: E402
from rlkit.records import PromptRow  # noqa: E402
from rlkit.step.modes import render_prompt  # noqa: E402
from rollout import RolloutRequest, SamplingConfig, make_engine  # noqa: E402

rows = [json.loads(l) for l in open("runs/smollm2/arith_test.jsonl")]


def grade(path):
    tok = load_processor(path)
    eng = make_engine("vllm", model_path=path, max_model_len=512, kv_cache_gib=1, seed=0)
    try:
        reqs = [RolloutRequest(render_prompt(tok, PromptRow(i, r["prompt"], [], r["answer"], {}), "fast"), [], request_id=i) for i, r in enumerate(rows)]
        outs = eng.generate(reqs, SamplingConfig(temperature=0.0, max_tokens=48))
    finally:
        eng.close()
    return task.final_number([""] * len(rows), [g[0].text for g in outs], answer=[r["answer"] for r in rows])


if __name__ == "__main__":
    base = grade("runs/smollm2/base")
    out = {"base": sum(base) / len(base)}
    for s in (0, 1):
        after = grade(f"runs/smollm2/grpo_seed{s}/checkpoints/step_24")
        n = len(rows)
        d = [a - b for a, b in zip(after, base)]
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        out[f"seed{s}"] = {"after": sum(after) / n, "gain": mean, "paired_se": sd / math.sqrt(n),
                           "gain_in_paired_se": mean / (sd / math.sqrt(n)), "fixed": sum(x > 0 for x in d), "broken": sum(x < 0 for x in d)}
    print(json.dumps(out))
