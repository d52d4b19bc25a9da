"""Write examples/rlpr/phrases.jsonl: questions whose reference answers are short free-form phrases.

    python examples/rlpr/make_data.py [--rows 1000] [--seed 0] [--out examples/rlpr/phrases.jsonl]

Why this data set: RLPR is for answers that are known but not checkable by a rule. A reply such as "It is
Wednesday, two days later." is right, yet `exact_match` against "Wednesday" says 0; RLPR instead scores how
likely the policy finds "Wednesday" after its own reasoning. Seven generated families (columns `prompt`,
`answer`, `type`), deterministic from the seed, offline:

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
    if kind == "days":
        d, k = rng.randrange(7), rng.randint(1, 6)
        return {"prompt": f"What day comes {k} days after {DAYS[d]}?", "answer": DAYS[(d + k) % 7]}
    if kind == "months":
        m, k = rng.randrange(12), rng.randint(1, 11)
        return {"prompt": f"Which month comes {k} months after {MONTHS[m]}?", "answer": MONTHS[(m + k) % 12]}
    if kind == "words":
        n = rng.randint(0, 99)
        return {"prompt": f"Write the number {n} in words.", "answer": in_words(n)}
    if kind == "colors":
        (a, b), c = rng.choice(sorted(MIXES.items()))
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        return {"prompt": f"What color do you get by mixing {a} and {b} paint?", "answer": c}
    if kind == "opposite":
        w, o = rng.choice(sorted(OPPOSITES.items()))
        return {"prompt": f'What is the opposite of "{w}"?', "answer": o}
    if kind == "plural":
        w, p = rng.choice(sorted(PLURALS.items()))
        return {"prompt": f'What is the plural of "{w}"?', "answer": p}
    h, k = rng.randint(1, 12), rng.randint(1, 11)
    return {"prompt": f"What time is it {k} hours after {ORD[h]} o'clock?", "answer": f"{ORD[(h + k - 1) % 12 + 1]} o'clock"}


KINDS = ("days", "months", "words", "colors", "opposite", "plural", "time")


def make(rows: int = 1000, seed: int = 0) -> list[dict]:
    rng = random.Random(f"rlpr-phrases-{seed}")
    out = []
    for i in range(rows):
        kind = KINDS[i % len(KINDS)]
        out.append({**row(rng, kind), "type": kind})
    rng.shuffle(out)
    return out


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
