"""Run by tests/test_multinode.py in a fresh process: a 2-node Ray cluster on this machine (Ray's own
`ray.cluster_utils.Cluster`: two raylets, as `ray start` would give on two hosts), joined through `ray.address`.

Checks, printing one JSON line: with `ray.placement: colocate` and `STRICT_SPREAD`, worker i and rank i share a
node and the two pairs sit on different nodes; then a 2-step GRPO run with 2 workers and 2 ranks (their gloo
group rendezvouses over TCP at rank 0's node address, the cluster path) completes and writes its checkpoint.
"""
import json
import sys

from ray.cluster_utils import Cluster


def main(out_dir: str, model: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    import ray

    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import _engines, _placement, _policy, run_grpo
    from rlkit.distributed.orchestration import init_ray

    overrides = [f"output_dir={out_dir}", f"ray.address={cluster.address}", "ray.placement=colocate",
                 "ray.placement_strategy=STRICT_SPREAD", "rollout.num_workers=2", "trainer.num_ranks=2",
                 "rollout.num_cpus=0.5", "trainer.num_cpus=0.5", "rollout.engine=hf", "logging.progress=false",
                 "model.path=tiny:text", "data.source=arithmetic", "max_steps=2", "rollout.n=2",
                 "rollout.max_tokens=4", "trainer.prompts_per_step=2"]
    cfg = load_config(GRPOConfig, None, overrides)
    init_ray(cfg.ray.address)
    result = {"nodes": len({n["NodeID"] for n in ray.nodes() if n["Alive"]})}
    where = _placement(cfg)
    policy = _policy(cfg, model, model, out_dir, where)
    engine = _engines(cfg, model, where)
    try:
        ranks = policy.where_placed()
        workers = ray.get([a.where.remote() for a in engine.actors])
        result["pairs_share_a_node"] = all(w["node"] == r["node"] for w, r in zip(workers, ranks))
        result["pairs_on_different_nodes"] = ranks[0]["node"] != ranks[1]["node"]
    finally:
        engine.close()
        policy.close()
        where.remove()
    last = run_grpo(cfg)
    result["steps"] = last["step"]
    result["checkpoint"] = last.get("checkpoint", "")
    ray.shutdown()
    cluster.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
