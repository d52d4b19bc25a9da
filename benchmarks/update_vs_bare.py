"""The policy worker's `train_step` against a bare forward+backward+AdamW over the same sequences, in CPU time of
this one process (insensitive to other jobs on the machine), on benchmarks/vs_trl.py's realistic text model.

    python benchmarks/update_vs_bare.py [--reps 2]

16 prompts x 8 completions of 128 random tokens, micro-batches of 64, one thread. Prints the CPU seconds of each.
"""
from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch)

apply_defaults()

import argparse  # noqa: E402
import pathlib  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    import torch

    import vs_trl
    from rlkit.policy.batching import build_batch, encode_prompt
    from rlkit.step.modes import render_prompt
    from rlkit.records import TrainItem
    from rlkit.policy.worker import PolicyWorker

    torch.set_num_threads(1)
    case = vs_trl.Case("realistic", "text", 16, 8, 128)
    path = vs_trl.build_model(case, tempfile.mkdtemp(prefix="update-vs-bare-"))
    rows = vs_trl.prompt_rows(case, case.prompts)
    w = PolicyWorker(path, num_threads=1, micro_batch_size=vs_trl.MICRO_BATCH)
    tok, r = w.tokenizer, random.Random(0)
    texts = [render_prompt(w.processor, row, "fast") for row in rows]
    items = [TrainItem(t, [], [r.randrange(20, len(tok) - 30) for _ in range(case.tokens)], r.gauss(0, 1),
                       [-1.0] * case.tokens) for t in texts for _ in range(case.n)]
    total = sum(len(it.completion_ids) for it in items)

    def bare():
        enc = [encode_prompt(None, tok, t, []) for t in texts]
        prompts = [e for e in enc for _ in range(case.n)]
        w.optimizer.zero_grad(set_to_none=True)
        for s in range(0, len(items), vs_trl.MICRO_BATCH):
            b = build_batch(items[s:s + vs_trl.MICRO_BATCH], prompts[s:s + vs_trl.MICRO_BATCH], tok.pad_token_id)
            out = w.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=b["Tc"] + 1,
                          use_cache=False)
            logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, b["completion_ids"].unsqueeze(-1))
            (-(logp.squeeze(-1) * b["mask"]).sum() / total).backward()
        w.optimizer.step()

    for rep in range(args.reps):
        for name, fn in (("train_step", lambda: w.train_step(items)), ("bare", bare)):
            c0 = time.process_time()
            fn()
            print(f"rep {rep} {name}: {time.process_time() - c0:.3f} CPU s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
