"""The `rlkit` command.

    rlkit grpo --config FILE [key.sub=value ...] [--resume | --overwrite]
    rlkit dpo --config FILE [key.sub=value ...] [--resume | --overwrite]
    rlkit rlaifv --config FILE [key.sub=value ...] [--overwrite]
    rlkit eval --config FILE --checkpoint DIR [--out PATH] [--split test] [--limit N] [key.sub=value ...]
    rlkit ablation --config FILE [key.sub=value ...]
    rlkit build-tiny --kind vlm|text --out DIR [--tokenizer small|qwen] [--data easy_vqa]

Config errors are printed as one line naming the key, with exit status 2, before anything starts; a reward that
keeps failing (rlkit/step/reward_health.py) stops a run with one such line, naming the reward and the last checkpoint.
Ctrl-C and SIGTERM are one line too (exit status 130 and 143): in a run, after its clean-up, naming the checkpoint
`--resume` continues from.
grpo, dpo and rlaifv print rlkit's own lines, a progress bar and a summary at the end; the output of vLLM, Ray
and transformers goes to output_dir/logs/ (`--verbose`: to the console too; rlkit/console.py).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys


OVERWRITE_HELP = "output_dir holds another run: move it to <output_dir>.old-<time> (nothing is deleted) and start anew"


def _quiet_defaults() -> None:
    from rlkit.runtime_env import apply_defaults

    apply_defaults()


def _claim(cfg, args) -> None:
    """A new run's output_dir is claimed (refused when it holds another run; --overwrite moves that run aside)
    before the run's log folder is made in it, so the log folder never lands inside the run moved aside. The
    driver's own check (rlkit/run/rundir.py open_run) then finds the folder free."""
    from rlkit.run.rundir import claim_new

    if not args.resume:
        claim_new(cfg.output_dir, args.overwrite)


def interrupted_line(e) -> str:
    """Where an interrupted run stands: its newest intact checkpoint, which `--resume` continues from, or none."""
    from rlkit.run.checkpoint import latest
    from rlkit.run.rundir import holds_run

    try:
        last, held = latest(e.output_dir), holds_run(e.output_dir)
    except OSError:
        last, held = None, True
    if last:
        where = f"newest checkpoint {last}; --resume continues from it"
    elif held:
        where = "no checkpoint written yet: start again with --overwrite (moves this run aside) or a new output_dir"
    else:
        where = "nothing written yet: the same command starts it again"
    return f"{e.command} {e.how}; {where}" + (f"; logs in {e.log_dir}" if e.log_dir else "")


def cmd_grpo(args) -> int:
    from rlkit.config import GRPOConfig, load_config
    from rlkit.console import run_console
    from rlkit.drivers.grpo import run_grpo

    cfg = load_config(GRPOConfig, args.config, args.overrides)
    _claim(cfg, args)
    with run_console(cfg, "grpo", args.verbose) as run:
        run["summary"] = run_grpo(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_dpo(args) -> int:
    from rlkit.config import load_config
    from rlkit.console import run_console
    from rlkit.drivers.dpo import DPOConfig, run_dpo

    cfg = load_config(DPOConfig, args.config, args.overrides)
    _claim(cfg, args)
    with run_console(cfg, "dpo", args.verbose) as run:
        run["summary"] = run_dpo(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_rlaifv(args) -> int:
    from rlkit.config import load_config
    from rlkit.console import run_console
    from rlkit.drivers.rlaifv import RLAIFVConfig, run_rlaifv

    cfg = load_config(RLAIFVConfig, args.config, args.overrides)
    if args.overwrite:  # a rerun continues (complete rounds skipped); --overwrite moves the old run aside first
        _claim(cfg, args)
    with run_console(cfg, "rlaifv", args.verbose) as run:
        run["summary"] = run_rlaifv(cfg, overwrite=args.overwrite)
    return 0


def cmd_eval(args) -> int:
    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.evaluate import run_eval

    cfg = load_config(GRPOConfig, args.config, args.overrides)
    report = run_eval(cfg, args.checkpoint, out=args.out, split=args.split, limit=args.limit)
    for mode, r in report["modes"].items():
        print(f"{mode}: accuracy {r['accuracy']:.4f}  tokens_mean {r['tokens_mean']:.1f}  n {r['n']}")
    print(report["path"])
    return 0


def cmd_ablation(args) -> int:
    from rlkit.runtime_env import apply_defaults

    apply_defaults(VLLM_LOGGING_LEVEL="ERROR", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    from rlkit.drivers.ablation import load_ablation_config, run_ablation

    grpo, abl = load_ablation_config(args.config, args.overrides)
    result = run_ablation(grpo, abl)
    name = "ablation_seeds" if abl.seeds else "ablation"  # several seeds: rlkit/drivers/ablation_seeds.py
    print((pathlib.Path(grpo.output_dir) / f"{name}.md").read_text())
    print(f"rlkit ablation: wrote {name}.json, {name}.md, {name}.png in {grpo.output_dir} "
          f"({result['wall_s']:.0f} s)")
    return 0


def cmd_build_tiny(args) -> int:
    from rlkit.data import load_source
    from rlkit.models.loading import build_tiny

    texts = []
    if args.data:
        ds = load_source(args.data, "train")
        texts = list(ds["prompt"]) + [str(a) for a in ds["answer"]]
    path = build_tiny(args.kind, args.out, texts=texts, tokenizer=args.tokenizer, vocab_size=args.vocab_size, seed=args.seed)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`rlkit ...`; Ctrl-C (SIGTERM) anywhere is one line and exit 130 (143); in a run: where it stands, after its
    clean-up."""
    from rlkit.console import Interrupted, stop_on_sigterm, stop_words

    stop_on_sigterm()  # SIGTERM stops a run as Ctrl-C does
    try:
        return _main(argv)
    except Interrupted as e:  # Ctrl-C or SIGTERM in a run, after its clean-up (rlkit/console.py run_console)
        print(f"rlkit: {interrupted_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # before a run began (imports, config) or in a command without a run folder
        how, code = stop_words(e)
        print(f"rlkit: {how}", file=sys.stderr)
        return code


def _main(argv: list[str] | None) -> int:
    _quiet_defaults()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser = argparse.ArgumentParser(prog="rlkit", description="RL post-training of multimodal LLMs")
    sub = parser.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("grpo", help="train with GRPO")
    g.add_argument("--config", required=False, help="YAML config file")
    g.add_argument("--resume", action="store_true", help="continue the run in output_dir from its newest intact checkpoint")
    g.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    g.add_argument("-v", "--verbose", action="store_true",
                   help="also show vLLM/Ray/transformers INFO and WARNING output (always in output_dir/logs/)")
    g.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=3e-4 max_steps=20")
    g.set_defaults(fn=cmd_grpo)

    d = sub.add_parser("dpo", help="train with DPO on a preference data set (TRL columns)")
    d.add_argument("--config", required=False, help="YAML config file")
    d.add_argument("--resume", action="store_true", help="continue the run in output_dir from its newest intact checkpoint")
    d.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    d.add_argument("-v", "--verbose", action="store_true",
                   help="also show vLLM/Ray/transformers INFO and WARNING output (always in output_dir/logs/)")
    d.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dpo.beta=0.1 data.path=pairs/")
    d.set_defaults(fn=cmd_dpo)

    r = sub.add_parser("rlaifv", help="iterative RLAIF-V: sample, score claims, build pairs, DPO; complete rounds are skipped")
    r.add_argument("--config", required=False, help="YAML config file")
    r.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    r.add_argument("-v", "--verbose", action="store_true",
                   help="also show vLLM/Ray/transformers INFO and WARNING output (always in output_dir/logs/)")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=3 labeler.path=policy")
    r.set_defaults(fn=cmd_rlaifv)

    e = sub.add_parser("eval", help="held-out accuracy and mean tokens of a checkpoint in each thinking mode "
                                    "(trainer.eval_modes); writes eval.json")
    e.add_argument("--config", required=False, help="YAML config file (the run's config.yaml works)")
    e.add_argument("--checkpoint", required=True,
                   help="a model folder (e.g. output_dir/checkpoints/step_N), or a run directory: its newest checkpoint")
    e.add_argument("--out", default=None, help="where to write the report (default: CHECKPOINT/eval.json)")
    e.add_argument("--split", default=None, help="held-out split (default: data.eval_split)")
    e.add_argument("--limit", type=int, default=None, help="held-out rows (default: data.eval_limit; 0: all)")
    e.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.engine=hf trainer.eval_modes=[fast]")
    e.set_defaults(fn=cmd_eval)

    a = sub.add_parser("ablation", help="hybrid vs deep-only GRPO from one cold start: table and plot (docs/ablation.md)")
    a.add_argument("--config", required=False, help="YAML config file: a GRPO config plus an `ablation:` section")
    a.add_argument("overrides", nargs="*", help="dotted overrides, e.g. max_steps=100 ablation.cold_start.steps=300")
    a.set_defaults(fn=cmd_ablation)

    b = sub.add_parser("build-tiny", help="write a tiny deterministic policy (model + tokenizer/processor)")
    b.add_argument("--kind", choices=("text", "vlm"), required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--tokenizer", choices=("small", "qwen"), default="small")
    b.add_argument("--data", default="", help="train the small tokenizer on this data source's text (e.g. easy_vqa)")
    b.add_argument("--vocab-size", type=int, default=512)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=cmd_build_tiny)

    args = parser.parse_args(argv)
    from rlkit.config import ConfigError
    from rlkit.data import DataError
    from rlkit.models.loading import ModelLoadError
    from rlkit.step.modes import ModeError
    from preference import PreferenceDataError
    from rewards import RewardError
    from rlkit.run.checkpoint import DiskFullError
    from rlkit.distributed.resources import ResourceError

    try:
        return args.fn(args)
    except (ConfigError, DataError, ModelLoadError, ModeError, PreferenceDataError, RewardError,
            DiskFullError, ResourceError) as e:
        print(f"rlkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
