"""RLAIF-V in miniature: does feedback on a policy's claims make a tiny vision-language policy hallucinate less?

    .venv/bin/python examples/rlaifv/miniature.py                 # both seeds, both labelers (docs/rlaifv.md)
    .venv/bin/python examples/rlaifv/miniature.py --seeds 0 --arms strong --rounds 1 --held 100   # a quick look

Per seed, one command runs (CPU, offline; the design is fixed in docs/rlaifv.md, "RLAIF-V in miniature"):
1. data (seed-independent): the easy-VQA images whose colour and shape are both given by their questions
   (hallucination.py's truth; 2,435 train and 603 test images): the train ones minus a dev split of DEV_IMAGES,
   and as the held-out set the first HELD of a fixed permutation of the *test* ones, described once, greedily.
2. a tiny VLM policy (weight seed = seed) and a supervised cold start (COLD_STEPS) on half descriptions
   ("Describe the image." -> "The color is red. The shape is a circle.") and half yes/no claim questions in the
   labeler's template ("Is the following statement about the image true? "The shape is a circle." ..." -> yes/no),
   so the policy can describe and can label its own claims (self-feedback);
3. the stronger labeler: another tiny VLM (weight seed 1000 + seed) trained only on yes/no claim questions,
   LABELER_STEPS (twice as many), and both labelers' accuracy on the dev split's claims (half true, half false);
4. from the cold start, `rlkit.drivers.rlaifv.run_round` rounds for each labeler setting (ARMS): sample 4 descriptions
   per image at temperature 0.7, split claims, ask the labeler, score -(rejected claims), pairs, DPO; the next
   round starts from the newest checkpoint;
5. held-out descriptions of the cold start and of every round's checkpoint, graded by hallucination.py.
Writes OUT/results/seed<S>_<what>.json as each part finishes (a rerun skips parts already there; --force redoes
them), then OUT/rlaifv_miniature.{json,md,png} over every result present.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(HERE)]

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch)

apply_defaults(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")

import hallucination as H  # noqa: E402
import mini_report as R  # noqa: E402
import qa_labeler as Q  # noqa: E402

DEV_IMAGES, HELD, DATA_SEED = 300, 500, 0
COLD_STEPS, LABELER_STEPS, SFT_LR, SFT_BATCH = 200, 400, 1e-3, 32
ARMS = {"strong": "the labeler", "self": "policy"}  # arm -> labeler.path ("the labeler": the trained one)
ROUND = dict(rounds=3, prompts_per_round=128, n=4, temperature=0.7, max_tokens=24, dpo_lr=5e-4, dpo_epochs=2,
             dpo_batch=8, beta=0.1)
DESIGN_DPO_LR = 5e-4  # the design's rate; another --dpo-lr is a follow-up, its arms named "<arm>@lr<rate>"


def arm_key(arm: str) -> str:
    """The name of an arm's run directory and results: the arm, tagged with the DPO rate when it is not the design's."""
    return arm if ROUND["dpo_lr"] == DESIGN_DPO_LR else f"{arm}@lr{ROUND['dpo_lr']:g}"


# ------------------------------------------------------------------------------------------------ data
def image_truth(split: str) -> list[tuple[str, str, str]]:
    """(image path, colour, shape) of every easy-VQA image of `split` that has both a colour and a shape question,
    in image-id order (the others are asked yes/no questions only about one attribute)."""
    from rlkit.data.easy_vqa import _rows

    cols = _rows(split)
    truth: dict[int, dict] = {}
    for img_id, path, q, a, t in zip(cols["image_id"], cols["image"], cols["prompt"], cols["answer"], cols["type"]):
        d = truth.setdefault(img_id, {"path": path})
        if t in ("color", "shape"):
            if d.get(t, a) != a:
                raise ValueError(f"easy-VQA {split} image {img_id}: two {t} answers ({d[t]}, {a}) for {q!r}")
            d[t] = a
    return [(d["path"], d["color"], d["shape"]) for _, d in sorted(truth.items()) if "color" in d and "shape" in d]


def build_data(out: pathlib.Path) -> dict:
    """train / dev / held-out images, and the prompt file the rounds sample from (OUT/data/describe.jsonl)."""
    train = image_truth("train")
    random.Random(f"rlaifv-miniature-{DATA_SEED}").shuffle(train)
    dev, train = train[:DEV_IMAGES], train[DEV_IMAGES:]
    test = image_truth("test")
    random.Random(f"rlaifv-miniature-held-{DATA_SEED}").shuffle(test)
    held = test[:HELD]
    (out / "data").mkdir(parents=True, exist_ok=True)
    path = out / "data" / "describe.jsonl"
    text = "".join(json.dumps({"prompt": H.DESCRIBE_PROMPT, "image": p, "color": c, "shape": s}) + "\n"
                   for p, c, s in train)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return {"train": train, "dev": dev, "held": held, "prompts": str(path)}


def qa_row(image, color: str, shape: str, attr: str) -> dict:
    """An open question about one attribute of the image, answered with the truth (qa_labeler's questions)."""
    return {"prompt": Q.QUESTIONS[attr], "image": image, "answer": color if attr == "color" else shape}


def cold_rows(train, seed: int, describe_share: float = 0.5) -> list[dict]:
    """Policy cold start rows: for each training image a description (share `describe_share`) or an open
    question about a random attribute (so the policy can also label its own claims, qa_labeler.py)."""
    rng = random.Random(f"rlaifv-miniature-cold-{seed}")
    return [{"prompt": H.DESCRIBE_PROMPT, "image": p, "answer": H.description(c, s)} if rng.random() < describe_share
            else qa_row(p, c, s, rng.choice(sorted(H.ATTRIBUTES))) for p, c, s in train]


def labeler_rows(train, seed: int) -> list[dict]:
    """The strong labeler's rows: both open questions about every training image (no descriptions)."""
    return [qa_row(p, c, s, a) for p, c, s in train for a in sorted(H.ATTRIBUTES)]


# ------------------------------------------------------------------------------------------------ models
def build_and_train(out: pathlib.Path, name: str, weight_seed: int, rows: list[dict], steps: int, vocab_texts,
                    seed: int) -> str:
    """A tiny VLM built with the miniature's vocabulary and `steps` supervised steps on `rows` (reused if done)."""
    import torch

    from rlkit.drivers.cold_start import ensure_thinking_template
    from rlkit.models.loading import build_tiny, load_policy
    from rlkit.drivers.sft import SFTConfig, sft

    target = out / name
    marker = target / "DONE.json"
    stamp = {"steps": steps, "rows": len(rows), "weight_seed": weight_seed, "lr": SFT_LR, "batch": SFT_BATCH}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return str(target)
    base = out / f"{name}_base"
    build_tiny("vlm", base, texts=vocab_texts, seed=weight_seed, image_size=84, vision_depth=2, vision_init_std=0.2)
    model, processor, _ = load_policy(str(base), "float32")
    ensure_thinking_template(processor)
    torch.manual_seed(seed)
    res = sft(model, processor, rows, SFTConfig(lr=SFT_LR, batch_size=SFT_BATCH, max_steps=steps, seed=seed,
                                                warmup_steps=10, log_every=max(1, steps // 4)), output_dir=target)
    (target / "sft.json").write_text(json.dumps({"seconds": res.seconds, "losses": res.losses[-10:]}))
    marker.write_text(json.dumps(stamp))
    return str(target)


def vocab_texts(train) -> list[str]:
    from rewards.rlaifv import STATEMENT_TEMPLATE

    from rlkit.data.easy_vqa import COLORS, SHAPES

    claims = [H.attribute_claim(a, v) for a, vals in H.ATTRIBUTES.items() for v in vals]
    return ([H.DESCRIBE_PROMPT, Q.COLOR_Q, Q.SHAPE_Q, "yes", "no", *COLORS, *SHAPES]
            + [H.description(c, s) for c in COLORS for s in SHAPES]
            + [STATEMENT_TEMPLATE.format(claim=c) for c in claims]) * 20


def dev_check(model_path: str, dev, seed: int) -> dict:
    """The labeler accuracy of `model_path` (as a qa_labeler.QALabeler) on the dev split's claims (P(yes) > P(no))."""
    claims = H.dev_claims(dev, seed=0)
    probs = Q.QALabeler(model_path).yes_no_probs([c["question"] for c in claims], [[c["image"]] for c in claims])
    return H.verdict_accuracy(probs, claims)


def describe(model_path: str, held) -> list[str]:
    """Greedy descriptions (fast mode, at most ROUND['max_tokens'] tokens) of the held-out images."""
    from rlkit.data import open_image
    from rlkit.models.loading import load_processor
    from rlkit.drivers.sft import render_prompt
    from rollout import RolloutRequest, SamplingConfig, make_engine

    processor = load_processor(model_path)
    prompt = render_prompt(processor, H.DESCRIBE_PROMPT, has_image=True)
    engine = make_engine("hf", model_path=model_path)
    try:
        outs = engine.generate([RolloutRequest(prompt, [open_image(p)], request_id=i) for i, (p, _, _) in enumerate(held)],
                               SamplingConfig(temperature=0.0, max_tokens=ROUND["max_tokens"], n=1))
    finally:
        engine.close()
    return [o[0].text for o in outs]


def evaluate(model_path: str, held) -> dict:
    t = time.perf_counter()
    texts = describe(model_path, held)
    graded = [H.grade_description(x, c, s) for x, (_, c, s) in zip(texts, held)]
    return {**H.aggregate(graded), "samples": texts[:8], "eval_s": time.perf_counter() - t}


def rounds_config(out: pathlib.Path, seed: int, arm: str, start: str, labeler: str, prompts: str, rounds: int):
    from rlkit.config import _build
    from rlkit.drivers.rlaifv import RLAIFVConfig, check_rlaifv

    r = ROUND
    tree = {"output_dir": str(out / arm_key(arm)), "seed": seed, "rounds": rounds, "prompts_per_round": r["prompts_per_round"],
            "prompt_mode": "fast", "model": {"path": start},
            "data": {"source": prompts, "check_rows": 0},
            "rollout": {"engine": "hf", "n": r["n"], "temperature": r["temperature"], "max_tokens": r["max_tokens"]},
            "labeler": {"path": labeler if ARMS[arm] != "policy" else "policy", "splitter": "rule",
                        "questioner": "rule", "accept_odds": 1.0, "calibrate": False, "batch_size": 64},
            "pairs": {"threshold": 1.0, "k": 2, "length_balance": True},
            "dpo": {"loss": "sigmoid", "beta": r["beta"], "reference": "cached", "epochs": r["dpo_epochs"],
                    "batch_size": r["dpo_batch"], "lr_schedule": "constant", "warmup_ratio": 0.0},
            "trainer": {"lr": r["dpo_lr"], "micro_batch_size": 16}, "logging": {"progress": False}}
    cfg = _build(RLAIFVConfig, tree, "")
    check_rlaifv(cfg)
    return cfg


def round_diagnostics(run_dir: pathlib.Path, r: int, truth_rows: list[dict]) -> dict:
    """From a round's audit and pairs: the labeler's verdict accuracy on the round's own claims (by the ground
    truth) and how many pairs are right by it."""
    from preference import load_preference_dataset

    rdir = run_dir / f"round_{r}"
    right = total = 0
    for line in (rdir / "audit.jsonl").read_text().splitlines():
        a = json.loads(line)
        t = truth_rows[a["row"]]
        for c in a.get("claims") or []:
            v = H.claim_verdict(c["claim"], t["color"], t["shape"])
            if v != "unchecked" and c.get("accepted") is not None:
                total += 1
                right += (v == "correct") == bool(c["accepted"])
    out = {"labeler_on_round_claims": right / total if total else float("nan"), "round_claims": total}
    summary = json.loads((rdir / "round.json").read_text())
    out.update({k: summary.get(k) for k in ("pairs/kept", "pairs/candidates", "claims/rejected_frac", "score/mean",
                                            "dpo/rewards/accuracies", "time/sample_s", "time/score_s", "time/dpo_s")})
    if (rdir / "pairs" / "dataset_info.json").exists() and summary.get("pairs/kept"):
        ds = load_preference_dataset(rdir / "pairs")
        rows = [(x["chosen"][-1]["content"], x["rejected"][-1]["content"], truth_rows[x["row"]]["color"],
                 truth_rows[x["row"]]["shape"]) for x in ds]
        out.update({f"pairs_{k}": v for k, v in H.pair_agreement(rows).items()})
    return out


def run_rounds(cfg, arm: str, policy: str, labeler: str, force: bool = False) -> None:
    """`rlkit.drivers.rlaifv.run_round` for every round, with a qa_labeler.QALabeler as the labeler: the trained labeler
    (arm "strong", loaded once) or the round's own model (arm "self"). Complete rounds are kept on a rerun."""
    from rlkit.drivers.ablation import fresh_run_dir
    from rlkit.config import dump_config
    from rlkit.data import load_source
    from rlkit.drivers.rlaifv import run_round
    from rlkit.run.labeler import LabelerResources

    out = pathlib.Path(cfg.output_dir)
    if force or not (out / "config.yaml").exists():
        moved = fresh_run_dir(out)
        if moved:
            print(f"rlaifv miniature: the previous {arm} run was moved to {moved}")
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    ds = load_source(cfg.data.source, cfg.data.split)
    shared = LabelerResources(Q.QALabeler(labeler)) if ARMS[arm] != "policy" else None
    model = policy
    for r in range(1, cfg.rounds + 1):
        done = out / f"round_{r}" / "round.json"
        summary = (json.loads(done.read_text()) if done.exists()
                   else run_round(cfg, r, model, ds, shared or LabelerResources(Q.QALabeler(model))))
        print(f"rlaifv miniature: {arm} round {r}: {int(summary['pairs/kept'])} pairs, rejected "
              f"{summary['claims/rejected_frac']:.2f} of the claims", flush=True)
        model = summary.get("checkpoint") or model


def _write(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def run_seed(seed: int, args, data: dict) -> None:
    out = pathlib.Path(args.out)
    sdir, res = out / f"seed{seed}", out / "results"
    res.mkdir(parents=True, exist_ok=True)
    held = data["held"][:args.held]
    done = lambda what: (res / f"seed{seed}_{what}.json").exists() and not args.force  # noqa: E731
    texts = vocab_texts(data["train"])
    t = time.perf_counter()
    policy = build_and_train(sdir, "policy_cold", seed, cold_rows(data["train"], seed), args.cold_steps, texts, seed)
    labeler = build_and_train(sdir, "labeler", 1000 + seed, labeler_rows(data["train"], seed), args.labeler_steps,
                              texts, seed)
    print(f"rlaifv miniature: seed {seed}: cold start and labeler ready ({time.perf_counter() - t:.0f} s)", flush=True)
    if not done("dev"):
        _write(res / f"seed{seed}_dev.json", {"seed": seed, "policy": dev_check(policy, data["dev"], seed),
                                              "labeler": dev_check(labeler, data["dev"], seed)})
    if not done("round0"):
        _write(res / f"seed{seed}_round0.json", {"seed": seed, "arm": "cold_start", "round": 0,
                                                 **evaluate(policy, held)})
    truth_rows = [json.loads(x) for x in pathlib.Path(data["prompts"]).read_text().splitlines()]
    for arm in args.arms:
        key = arm_key(arm)
        if all(done(f"{key}_round{r}") for r in range(1, args.rounds + 1)):
            continue
        cfg = rounds_config(sdir, seed, arm, policy, labeler, data["prompts"], args.rounds)
        t = time.perf_counter()
        run_rounds(cfg, arm, policy, labeler, force=args.force)
        wall = time.perf_counter() - t
        model = policy
        for r in range(1, args.rounds + 1):
            summary = json.loads((pathlib.Path(cfg.output_dir) / f"round_{r}" / "round.json").read_text())
            model = summary.get("checkpoint") or model
            if done(f"{key}_round{r}"):
                continue
            _write(res / f"seed{seed}_{key}_round{r}.json",
                   {"seed": seed, "arm": key, "round": r, "model": model, "rounds_wall_s": wall,
                    **round_diagnostics(pathlib.Path(cfg.output_dir), r, truth_rows), **evaluate(model, held)})
        print(f"rlaifv miniature: seed {seed}, {key}: {args.rounds} rounds in {wall:.0f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--rounds", type=int, default=ROUND["rounds"])
    ap.add_argument("--cold-steps", type=int, default=COLD_STEPS)
    ap.add_argument("--labeler-steps", type=int, default=LABELER_STEPS)
    ap.add_argument("--prompts-per-round", type=int, default=ROUND["prompts_per_round"])
    ap.add_argument("--dpo-lr", type=float, default=DESIGN_DPO_LR, help="DPO rate (not the design's: a follow-up arm)")
    ap.add_argument("--held", type=int, default=HELD, help="held-out images described (the first ones)")
    ap.add_argument("--out", default="runs/rlaifv_miniature")
    ap.add_argument("--force", action="store_true", help="redo parts whose result file exists")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    ROUND["prompts_per_round"] = args.prompts_per_round
    ROUND["dpo_lr"] = args.dpo_lr
    out = pathlib.Path(args.out)
    t = time.perf_counter()
    if not args.report_only:
        data = build_data(out)
        print(f"rlaifv miniature: {len(data['train'])} training images, {len(data['dev'])} dev, "
              f"{min(args.held, len(data['held']))} held-out", flush=True)
        for seed in args.seeds:
            run_seed(seed, args, data)
    R.report(out, time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
