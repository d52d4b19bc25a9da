"""Write examples/rlpr/phrases.jsonl: questions whose reference answers are short free-form phrases.

    python examples/rlpr/make_data.py [--rows 1000] [--seed 0] [--out examples/rlpr/phrases.jsonl]

Why this data set: RLPR is for answers that are known but not checkable by a rule. A reply such as "It is
Wednesday, two days later." is right, yet `exact_match` against "Wednesday" says 0; RLPR instead scores how
likely the policy finds "Wednesday" after its own reasoning. Seven generated families (columns `prompt`,
`answer`, `type`, and `reasoning`: the worked steps a cold start writes in its think block), deterministic from
the seed, offline:

    days      What day comes 3 days after Friday?                -> Monday
    months    Which month comes 2 months after March?            -> May
    words     Write the number 42 in words.                      -> forty-two
    colors    What color do you get by mixing blue and yellow?   -> green
    opposite  What is the opposite of "early"?                   -> late
    plural    What is the plural of "mouse"?                     -> mice
    time      What time is it 3 hours after 11 o'clock?          -> two o'clock
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple",
         ("red", "white"): "pink", ("black", "white"): "gray", ("blue", "white"): "light blue",
         ("red", "green"): "brown"}
OPPOSITES = {"early": "late", "hot": "cold", "up": "down", "open": "closed", "full": "empty", "light": "dark",
             "fast": "slow", "old": "young", "strong": "weak", "wet": "dry", "loud": "quiet", "rich": "poor",
             "heavy": "light", "above": "below", "inside": "outside", "first": "last", "win": "lose"}
PLURALS = {"mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese", "man": "men",
           "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves",
           "box": "boxes", "city": "cities", "ox": "oxen", "cactus": "cacti", "sheep": "sheep", "fish": "fish"}
ORD = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def in_words(n: int) -> str:
    """0..99 in English words.

    >>> in_words(42), in_words(17), in_words(80)
    ('forty-two', 'seventeen', 'eighty')
    """
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("-" + ONES[ones] if ones else "")


def row(rng: random.Random, kind: str) -> dict:
    """One question of `kind`: prompt and answer (the columns of phrases.jsonl), plus what the generator knows
    about it, used by the miniature (examples/rlpr/miniature.py): `reasoning` (the worked steps a cold start
    writes in the think block), `accepted` (every answer the held-out judge counts as right, paraphrases of the
    reference included) and `distractors` (the other values of the family: an answer naming one is refused)."""
    if kind == "days":
        d, k = rng.randrange(7), rng.randint(1, 6)
        steps = [DAYS[(d + i) % 7] for i in range(1, k + 1)]
        ans = DAYS[(d + k) % 7]
        return {"prompt": f"What day comes {k} days after {DAYS[d]}?", "answer": ans,
                "reasoning": f"{DAYS[d]}, then " + ", ".join(steps) + ".",
                "accepted": [ans, ans[:3]], "distractors": [x for x in DAYS if x != ans]}
    if kind == "months":
        m, k = rng.randrange(12), rng.randint(1, 11)
        steps = [MONTHS[(m + i) % 12] for i in range(1, k + 1)]
        ans = MONTHS[(m + k) % 12]
        return {"prompt": f"Which month comes {k} months after {MONTHS[m]}?", "answer": ans,
                "reasoning": f"{MONTHS[m]}, then " + ", ".join(steps) + ".",
                "accepted": [ans] + ([ans[:3]] if len(ans) > 3 else []),
                "distractors": [x for x in MONTHS if x != ans]}
    if kind == "words":
        n = rng.randint(0, 99)
        ans = in_words(n)
        tens, ones = divmod(n, 10)
        reasoning = f"{n} is {tens} tens and {ones} ones." if n >= 20 else f"{n} is a number below twenty."
        return {"prompt": f"Write the number {n} in words.", "answer": ans, "reasoning": reasoning,
                "accepted": sorted({ans, ans.replace("-", " ")}),
                "distractors": [in_words(x) for x in range(100) if x != n]}
    if kind == "colors":
        (a, b), c = rng.choice(sorted(MIXES.items()))
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        colours = sorted(set(MIXES.values()))
        return {"prompt": f"What color do you get by mixing {a} and {b} paint?", "answer": c,
                "reasoning": f"Mixing {a} with {b}.", "accepted": [c] + (["pale blue"] if c == "light blue" else []),
                "distractors": [x for x in colours if x != c]}
    if kind == "opposite":
        w, o = rng.choice(sorted(OPPOSITES.items()))
        return {"prompt": f'What is the opposite of "{w}"?', "answer": o, "reasoning": f"The word is {w}.",
                "accepted": [o] + (["shut"] if o == "closed" else []), "distractors": [w]}
    if kind == "plural":
        w, p = rng.choice(sorted(PLURALS.items()))
        return {"prompt": f'What is the plural of "{w}"?', "answer": p, "reasoning": f"The word is {w}.",
                "accepted": [p], "distractors": [w] if w != p else []}
    h, k = rng.randint(1, 12), rng.randint(1, 11)
    end = (h + k - 1) % 12 + 1
    steps = [ORD[(h + i - 1) % 12 + 1] for i in range(1, k + 1)]
    return {"prompt": f"What time is it {k} hours after {ORD[h]} o'clock?", "answer": f"{ORD[end]} o'clock",
            "reasoning": f"{ORD[h]}, then " + ", ".join(steps) + ".",
            "accepted": [f"{ORD[end]} o'clock", f"{end} o'clock", f"{end}:00", ORD[end], str(end)],
            "distractors": [f"{ORD[x]} o'clock" for x in range(1, 13) if x != end]
                           + [f"{x} o'clock" for x in range(1, 13) if x != end]}


KINDS = ("days", "months", "words", "colors", "opposite", "plural", "time")


PHRASES_COLUMNS = ("prompt", "answer", "type", "reasoning")  # the columns of phrases.jsonl (reasoning: the cold start's think block)


def make(rows: int = 1000, seed: int = 0, columns: tuple[str, ...] | None = PHRASES_COLUMNS) -> list[dict]:
    """`rows` generated questions, deterministic from `seed`, with `columns` (None: all that `row` knows)."""
    rng = random.Random(f"rlpr-phrases-{seed}")
    out = []
    for i in range(rows):
        kind = KINDS[i % len(KINDS)]
        r = {**row(rng, kind), "type": kind}
        out.append(r if columns is None else {k: r[k] for k in columns})
    rng.shuffle(out)
    return out


def is_held_out(prompt: str, percent: int = 30) -> bool:
    """Whether a prompt belongs to the held-out split: by a hash of its text, so every copy of a duplicated
    prompt lands on the same side and no held-out question is ever trained on (about `percent` % of them)."""
    import hashlib

    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 100 < percent


def split_rows(rows: list[dict], percent: int = 30) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows with each prompt once) split by `is_held_out`."""
    train, held, seen = [], [], set()
    for r in rows:
        if not is_held_out(r["prompt"], percent):
            train.append(r)
        elif r["prompt"] not in seen:
            seen.add(r["prompt"])
            held.append(r)
    return train, held


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).with_name("phrases.jsonl")))
    args = ap.parse_args()
    data = make(args.rows, args.seed)
    pathlib.Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"wrote {len(data)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
