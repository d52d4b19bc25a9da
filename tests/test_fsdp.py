"""trainer.strategy fsdp2 (rlkit/policy/sharding.py): 2 FSDP2 ranks (gloo on CPU, torch.multiprocessing) take the same
optimizer steps as 1 replicate worker on the same batch.

- tiny text model, after one and after two train steps (weights, loss, grad norm);
- uneven slices: 5 rows over 2 ranks with micro-batches of 2 (one rank runs 2 passes, the other 1 real + 1
  padding pass) and a mini-batch of 1 row (one rank has an empty slice);
- tiny VLM (the vision tower runs outside the root forward to encode each distinct image once), also with
  gradient checkpointing;
- a NaN advantage skips the step on both ranks; a checkpoint written under fsdp2 has the replicate format
  (from_pretrained loads it; load_trainer_state restores the same optimizer state under either strategy);
- the config refuses unknown strategies and fsdp2 with LoRA.
"""
import math
import os
import pathlib

import pytest
import torch
from _updates import EXACT, assert_same_update

# float64 and Adam eps 1e-3: two computations of one update compared after optimizer steps (tests/_updates.py)
KW = dict(lr=1e-2, micro_batch_size=2, **EXACT)


def _text_items(worker):
    from test_scale import _items

    items = _items(worker)[:5]
    return items


def _vlm_items(worker):
    from test_worker import vqa_items

    items = vqa_items(worker, k=3, per=2)  # a a b b c c
    return [items[i] for i in (0, 1, 2, 4, 5)]  # rank 0: (a a) encodes a once; rank 1: (b c) plain, then (c)


def _rank_main(rank, world, tmp, path, kw, kind, steps, nan, save, load_from, parts=None):
    """One rank: join the group, train `steps` steps (streamed in `parts`, (lo, hi) item ranges, when given:
    rlkit/policy/streaming.py), write its results to tmp/rank{rank}.pt."""
    torch.set_num_threads(1)
    from rlkit.policy.worker import PolicyWorker

    w = PolicyWorker(path, strategy="fsdp2", **kw)
    w.join_group(f"file://{tmp}/rendezvous", 0, rank, world)
    assert w.optimizer.param_groups[0]["eps"] == kw["adam_eps"]  # kept when sharding rebuilds AdamW
    if load_from:
        w.load_trainer_state(load_from)
    items = _text_items(w) if kind == "text" else _vlm_items(w)
    if nan:
        items[-1].advantage = math.nan  # on the last rank's slice only
    out = {"metrics": [], "weights": []}
    for _ in range(steps):
        if parts:
            for lo, hi in parts:
                w.train_part(items[lo:hi])
            out["metrics"].append(w.train_finish())
        else:
            out["metrics"].append(w.train_step(items))
        sd = w.state_dict()  # collective: every rank calls it; rank 0 gets the full weights
        out["weights"].append({k: v.clone() for k, v in sd.items()})
    out["logprobs"] = w.compute_logprobs(items[:2])
    if save:
        w.save(save)
    opt = w.optimizer.state_dict()["state"]
    out["optim_local"] = {i: {k: v.to_local().clone() if hasattr(v, "to_local") else v for k, v in s.items()}
                          for i, s in opt.items()}
    torch.save(out, pathlib.Path(tmp) / f"rank{rank}.pt")
    w.leave_group()


def run_ranks(tmp_path, path, kw, kind="text", steps=1, world=2, nan=False, save="", load_from="", parts=None):
    import torch.multiprocessing as mp

    tmp = tmp_path / f"ranks-{len(list(tmp_path.iterdir()))}"
    tmp.mkdir()
    mp.start_processes(_rank_main, args=(world, str(tmp), path, kw, kind, steps, nan, save, load_from, parts),
                       nprocs=world, start_method="spawn", join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def replicate(path, kw, kind="text", steps=1, nan=False):
    from rlkit.policy.worker import PolicyWorker

    w = PolicyWorker(path, **kw)
    items = _text_items(w) if kind == "text" else _vlm_items(w)
    if nan:
        items[-1].advantage = math.nan
    metrics, weights = [], []
    for _ in range(steps):
        metrics.append(w.train_step(items))
        weights.append({k: v.clone() for k, v in w.state_dict().items()})
    return w, metrics, weights


def assert_same(got_w, got_m, ref_w, ref_m, base):
    """The same update as one worker: weights within 1e-4 of the update (tests/_updates.py derives the bound;
    KW runs in float64 with Adam eps 1e-3), loss and grad norm to 1e-4 relative (grad norm before clipping:
    averaged instead of summed gradients would halve it)."""
    assert_same_update(got_w, ref_w, base)
    for k in ("train/loss", "train/grad_norm", "train/tokens", "train/update_skipped"):
        assert got_m[k] == pytest.approx(ref_m[k], rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("kw", [
    dict(KW),  # 5 rows, micro 2: rank 0 has rows 0-1 (1 pass), rank 1 rows 2-4 (2 passes): rank 0 pads one
    dict(KW, mini_batch_size=3, ppo_epochs=2, kl_coef=0.1),  # 8 optimizer steps, old logprobs, a KL term
], ids=["uneven-passes", "mini-batches-epochs-kl"])
def test_fsdp2_two_ranks_match_one_replicate_over_two_steps(tiny_text_path, tmp_path, kw):
    from rlkit.policy.worker import PolicyWorker

    base = {k: v.clone() for k, v in PolicyWorker(tiny_text_path).state_dict().items()}
    w, ref_m, ref_w = replicate(tiny_text_path, kw, steps=2)
    r0, r1 = run_ranks(tmp_path, tiny_text_path, kw, steps=2)
    assert r1["weights"] == [{}, {}]  # the full state dict is gathered on rank 0 only
    for step in range(2):
        assert_same(r0["weights"][step], r0["metrics"][step], ref_w[step], ref_m[step], base)
        assert r1["metrics"][step]["train/loss"] == pytest.approx(r0["metrics"][step]["train/loss"], rel=1e-6)
    for a, b in zip(r0["logprobs"], w.compute_logprobs(_text_items(w)[:2])):
        assert a == pytest.approx(b, abs=1e-5)


def test_fsdp2_streamed_parts_match_one_replicate(tiny_text_path, tmp_path):
    """A streamed step (rollout.stream_chunks) under fsdp2: parts of 1 and 4 rows (the 1-row part leaves rank 0
    with padding passes only) accumulate into the same update as one replicate train_step over all 5."""
    from rlkit.policy.worker import PolicyWorker

    base = {k: v.clone() for k, v in PolicyWorker(tiny_text_path).state_dict().items()}
    kw = KW
    _, ref_m, ref_w = replicate(tiny_text_path, kw, steps=2)
    r0, r1 = run_ranks(tmp_path, tiny_text_path, kw, steps=2, parts=[(0, 1), (1, 5)])
    for step in range(2):
        assert_same(r0["weights"][step], r0["metrics"][step], ref_w[step], ref_m[step], base)
        assert r1["metrics"][step]["train/grad_norm"] == pytest.approx(r0["metrics"][step]["train/grad_norm"])


def test_fsdp2_empty_slice_does_not_hang(tiny_text_path, tmp_path):
    """mini_batch_size 1: every optimizer step has one row, so rank 0's slice is empty (padding passes only)."""
    kw = dict(KW, mini_batch_size=1, shuffle_minibatches=False)
    from rlkit.policy.worker import PolicyWorker

    base = {k: v.clone() for k, v in PolicyWorker(tiny_text_path).state_dict().items()}
    _, ref_m, ref_w = replicate(tiny_text_path, kw)
    r0, _ = run_ranks(tmp_path, tiny_text_path, kw)
    assert_same(r0["weights"][0], r0["metrics"][0], ref_w[0], ref_m[0], base)


@pytest.mark.parametrize("gc", [False, True], ids=["plain", "gradient-checkpointing"])
def test_fsdp2_vlm_vision_tower_path(tiny_vlm_path, tmp_path, gc):
    """Images a a b c c: rank 0's micro-batch repeats an image (rlkit/policy/vision.py encodes it once, calling the
    vision tower unit before the root), rank 1's does not; under fsdp2 both take the same path (a rank on the
    plain path would all-gather the root first: the ranks' collectives would not meet)."""
    from rlkit.policy.worker import PolicyWorker

    base = {k: v.clone() for k, v in PolicyWorker(tiny_vlm_path).state_dict().items()}
    kw = dict(KW, gradient_checkpointing=gc)
    _, ref_m, ref_w = replicate(tiny_vlm_path, kw, kind="vlm")
    r0, _ = run_ranks(tmp_path, tiny_vlm_path, kw, kind="vlm")
    assert_same(r0["weights"][0], r0["metrics"][0], ref_w[0], ref_m[0], base)
    assert any(not torch.equal(ref_w[0][k], base[k]) for k in ref_w[0] if "visual" in k)  # the tower trained


def test_fsdp2_nan_skip_agrees(tiny_text_path, tmp_path):
    from rlkit.policy.worker import PolicyWorker

    base = {k: v.clone() for k, v in PolicyWorker(tiny_text_path).state_dict().items()}
    r0, r1 = run_ranks(tmp_path, tiny_text_path, KW, nan=True)
    for r in (r0, r1):  # the NaN sits in rank 1's slice: both ranks skip
        assert r["metrics"][0]["train/update_skipped"] == 1.0 and r["metrics"][0]["train/skipped_updates"] == 1.0
    assert all(torch.equal(r0["weights"][0][k], base[k]) for k in base)


def test_fsdp2_checkpoint_resumes_under_either_strategy(tiny_text_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlkit.policy.worker import PolicyWorker

    base = {k: v.clone() for k, v in PolicyWorker(tiny_text_path).state_dict().items()}
    ck = str(tmp_path / "ck")
    r0, r1 = run_ranks(tmp_path, tiny_text_path, KW, steps=2, save=ck)
    w, ref_m, ref_w = replicate(tiny_text_path, KW, steps=2)
    assert_same(r0["weights"][1], r0["metrics"][1], ref_w[1], ref_m[1], base)
    loaded = AutoModelForCausalLM.from_pretrained(ck).state_dict()  # the replicate format: from_pretrained loads it
    assert set(loaded) <= set(r0["weights"][1])
    w.save(str(tmp_path / "ck-replicate"))
    from safetensors import safe_open

    keys = lambda d: set(safe_open(str(pathlib.Path(d) / "model.safetensors"), "pt").keys())
    assert keys(ck) == keys(tmp_path / "ck-replicate")  # the same file: a tied output head is not written twice
    assert all(torch.equal(loaded[k], r0["weights"][1][k]) for k in loaded)
    state = torch.load(pathlib.Path(ck) / "trainer_state.pt", weights_only=False)
    ref_opt = w.optimizer.state_dict()
    assert state["step"] == 2 and state["optimizer"]["param_groups"] == ref_opt["param_groups"]
    assert set(state["optimizer"]["state"]) == set(ref_opt["state"])
    for i, s in ref_opt["state"].items():  # the full optimizer state under replicate's parameter ids
        saved = state["optimizer"]["state"][i]
        assert torch.equal(saved["step"], s["step"])
        for k in ("exp_avg", "exp_avg_sq"):  # gathered exactly from the two ranks' shards; ~ replicate's
            assert torch.equal(saved[k], torch.cat([r0["optim_local"][i][k], r1["optim_local"][i][k]]))
            assert (saved[k] - s[k]).norm() <= 1e-4 * s[k].norm() + 1e-9, (i, k)
    rep = PolicyWorker(ck, **KW)  # resume under replicate
    rep.load_trainer_state(ck)
    assert rep.step == 2
    # resume under fsdp2: each rank holds its slices of the same state
    s0, s1 = run_ranks(tmp_path, ck, KW, steps=0, load_from=ck)
    full = rep.optimizer.state_dict()["state"]
    for i, s in full.items():
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(torch.cat([s0["optim_local"][i][k], s1["optim_local"][i][k]]), s[k])


@pytest.mark.parametrize("override,match", [("trainer.strategy=zero3", "trainer.strategy"),
                                            ("model.lora={r: 4}", "model.lora")])
def test_strategy_is_checked(override, match, tmp_path):
    from rlkit.config import ConfigError, GRPOConfig, load_config
    from rlkit.run.checks import check_grpo

    cfg = load_config(GRPOConfig, None, [f"output_dir={tmp_path}", "trainer.strategy=fsdp2", override])
    with pytest.raises(ConfigError, match=match):
        check_grpo(cfg)


def test_gpu_fsdp_script_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_fsdp.py (run on a GPU with NCCL) also runs on CPU with gloo: fsdp2 on a 1-rank group
    takes exactly replicate's steps, the checkpoint's AdamW state included, and the steps moved the weights."""
    import json
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_fsdp.json"
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, str(root / "benchmarks/gpu_fsdp.py"), "--device", "cpu", "--sizes", "tiny",
                    "--steps", "2", "--prompts", "2", "--n", "2", "--tokens", "6", "--out", str(out)],
                   check=True, env=env, cwd=root, timeout=300)
    result = json.loads(out.read_text())
    assert not result["errors"]
    (row,) = result["rows"]
    assert row["same_keys"] and row["replicate"]["rel_update"] > 1e-3
    assert row["max_rel_weight_diff"] < 1e-6 and row["max_rel_adam_diff"] < 1e-6
    assert row["fsdp2"]["grad_norms"] == pytest.approx(row["replicate"]["grad_norms"], rel=1e-6)


@pytest.fixture(scope="module")
def ray_local():
    from rlkit.distributed.orchestration import init_ray, shutdown

    init_ray("", 4)
    yield
    shutdown()


def test_policy_group_fans_leader_calls_out_under_fsdp2(tiny_text_path, ray_local, tmp_path):
    """PolicyGroup (Ray actors, as the GRPO driver uses it): under fsdp2 the leader's calls run RLPR's scoring,
    the weight sync's state dict and the checkpoint on every rank (each forward all-gathers), with rank 0's
    result; under replicate the leader stays rank 0's actor."""
    import ray

    from rlkit.distributed.orchestration import spawn
    from rlkit.distributed.pool import PolicyGroup, PolicyRank
    from rlkit.policy.worker import PolicyWorker

    single = PolicyWorker(tiny_text_path, **KW)
    base = {k: v.clone() for k, v in single.state_dict().items()}
    items = _text_items(single)
    expected = single.train_step(items)
    group = PolicyGroup(lambda rank: spawn(PolicyRank, tiny_text_path, num_cpus=0.5, strategy="fsdp2",
                                           **KW), 2,
                        strategy="fsdp2")
    try:
        assert group.sharded
        got = group.train_step(items)
        lp = group.compute_logprobs(items[:2])  # RLPR's path (rlkit.run.build.PolicyLogprobs)
        weights = ray.get(group.state_dict())  # the sync's object ref: rank 0's full weights
        group.save(str(tmp_path / "ck"))
    finally:
        group.close()
    assert got["train/grad_norm"] == pytest.approx(expected["train/grad_norm"], rel=1e-4)
    for a, b in zip(lp, single.compute_logprobs(items[:2])):
        assert a == pytest.approx(b, abs=1e-5)
    assert_same_update(weights, single.state_dict(), base)
    assert (tmp_path / "ck" / "trainer_state.pt").exists() and (tmp_path / "ck" / "config.json").exists()
    for strategy in ("replicate", "fsdp2"):  # one rank: no group, nothing sharded: rank 0 alone
        one = PolicyGroup(lambda rank: object(), 1, strategy=strategy)
        assert not one.sharded


@pytest.mark.slow
def test_grpo_fsdp2_two_ranks_match_one_rank(tmp_path):
    """The GRPO driver end to end (vLLM rollout, Ray ranks) with the KL penalty in the reward, so the driver
    calls `policy.reference_kl` every step: 2 fsdp2 ranks sample the same completions and end with the
    same weights as 1 rank (same seed)."""
    from safetensors.torch import load_file

    from test_scale import _jsonl, _run

    kl = ("algorithm.kl_coef=0.05", "algorithm.kl_in_reward=true")
    a = _run(tmp_path, "one", *kl)
    b = _run(tmp_path, "fsdp", *kl, "trainer.num_ranks=2", "trainer.strategy=fsdp2")
    sa, sb = _jsonl(tmp_path / "one/samples.jsonl"), _jsonl(tmp_path / "fsdp/samples.jsonl")
    assert [s["completion"] for s in sa] == [s["completion"] for s in sb]
    ma, mb = _jsonl(tmp_path / "one/metrics.jsonl"), _jsonl(tmp_path / "fsdp/metrics.jsonl")
    for x, y in zip(ma, mb):
        assert y["train/loss"] == pytest.approx(x["train/loss"], rel=1e-4, abs=1e-6)
        assert y["kl/reward_seq_k1_mean"] == pytest.approx(x["kl/reward_seq_k1_mean"], rel=1e-3, abs=1e-5)
    wa = load_file(pathlib.Path(a["checkpoint"]) / "model.safetensors")
    wb = load_file(pathlib.Path(b["checkpoint"]) / "model.safetensors")
    base = load_file(tmp_path / "one/base_model/model.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        update = (wa[k] - base[k]).norm()
        assert (wb[k] - wa[k]).norm() <= 1e-3 * update + 1e-6, k
