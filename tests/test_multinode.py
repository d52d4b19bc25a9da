"""Several nodes: rlkit joins an existing Ray cluster (`ray.address`) and places actors across its nodes.

A real 2-node cluster on one machine (`ray.cluster_utils.Cluster`, two raylets) in a fresh process, since a
process that started a loopback-only local Ray cannot host a cluster (tests/_multinode.py says what it checks).
"""
import json
import pathlib
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_grpo_on_a_two_node_cluster_places_pairs_per_node(tmp_path, tiny_text_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "tests/_multinode.py"), str(tmp_path / "run"), tiny_text_path],
                          cwd=root, capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["nodes"] == 2
    assert result["pairs_share_a_node"] and result["pairs_on_different_nodes"]
    assert result["steps"] == 2 and (pathlib.Path(result["checkpoint"]) / "COMPLETE").exists()
