"""A reward written in five minutes, and how rlkit runs it.

A reward is a plain function with TRL's signature: it gets the prompts, the completions and every dataset
column by keyword (plus `mode`, `completion_ids`, ...), and returns one float per completion, or None where
it does not apply. Nothing to import from rlkit. Plug it into a GRPO config by path:

    rewards:
      - {name: math_accuracy, weight: 1.0}
      - {path: examples/rewards/my_reward.py:score, weight: 0.2, kwargs: {max_words: 4}}

Run this file to see the scorer use it next to a built-in reward:

    python examples/rewards/my_reward.py
"""
import re

_NUMBER = re.compile(r"-?\d+")


def score(prompts, completions, answer, max_words: int = 3, **kwargs):
    """Concise and right: 1.0 when the reply is the reference number in at most `max_words` words, shrinking
    by 0.1 per extra word; 0.0 when the number is wrong or missing; None for rows without a reference.

    >>> score(["What is 2 + 2?"] * 4, ["4", "It is 4", "The sum of two and two is 4", "5"], answer=["4"] * 4)
    [1.0, 1.0, 0.5, 0.0]
    """
    out = []
    for completion, ref in zip(completions, answer):
        if ref is None:
            out.append(None)
            continue
        text = completion if isinstance(completion, str) else completion[-1]["content"]  # TRL's message form too
        text = text.rsplit("</think>", 1)[-1]  # judge the answer, not the reasoning
        numbers = _NUMBER.findall(text)
        if not numbers or numbers[-1] != str(ref).strip():
            out.append(0.0)
            continue
        extra = max(0, len(text.split()) - max_words)
        out.append(round(max(0.0, 1.0 - 0.1 * extra), 6))
    return out


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # run from a checkout
    from rewards import RewardScorer, RewardSpec

    here = os.path.relpath(os.path.abspath(__file__))
    specs = [RewardSpec(name="math_accuracy", weight=1.0),
             RewardSpec(path=f"{here}:score", weight=0.2, kwargs={"max_words": 4}),
             RewardSpec(name="format", weight=0.1)]
    prompts = ["What is 3 + 4? Answer with a number."] * 5 + ["Name a colour."]
    completions = ["<think>3 plus 4 is 7</think>7", "7", "<think>hmm</think>The answer, after careful thought, is 7",
                   "<think>3+4=8?</think>8", "<think>never finished", "blue"]
    columns = {"answer": ["7"] * 5 + [None], "mode": ["deep", "fast", "deep", "deep", "deep", "fast"]}
    with RewardScorer(specs, timeout_s=5.0) as scorer:
        result = scorer(prompts, completions, columns)
    names = list(result.per_reward)
    print(f"{'completion':<58} " + " ".join(f"{n:>13}" for n in names) + f" {'total':>7}")
    for i, c in enumerate(completions):
        vals = " ".join(f"{'None' if result.per_reward[n][i] is None else format(result.per_reward[n][i], '.2f'):>13}"
                        for n in names)
        print(f"{c[:58]!r:<58} {vals} {result.total[i]:>7.2f}")
    for key, value in result.stats().items():
        print(f"{key:<40} {value:.3f}")
    print("failures:", [str(f) for f in result.failures] or "none")
