"""Comparing two computations of the same optimizer update (sharded vs replicate, streamed vs whole, two ranks
vs one, ...), with a bound that follows from the arithmetic and so holds on any CPU.

The two sides differ only in how rows are split into micro-batches, parts or ranks, so their gradients differ
by summation-order rounding, dg. AdamW's step is lr * m / (sqrt(v) + eps); its derivative in the gradient is at
most lr / eps. With the default eps (1e-8) and lr 1e-2 that factor is 1e6: an element whose gradient is near
eps turns a rounding-sized dg into a step-sized difference, and which elements do so depends on the CPU's
rounding (on an AMD EPYC, 5e-4 of the update where the test was written against 1e-4). Hence:

- `SMOOTH_ADAM`: the tests that compare weights after Adam steps set eps 1e-3, so the factor is
  lr / eps = 10 and the weights move by ~10 dg;
- `EXACT`: the policy runs in float64 where the test allows it (worker-level tests; an end-to-end run with
  vLLM stays float32), so dg ~ 1e-7 of the gradient's scale: float64 everywhere except transformers'
  RMSNorm, which computes in float32 (one float32 ulp, 6e-8 relative, per activation);
- `assert_same_update`: per tensor, |got - ref| <= rel * |ref - base| in norm. With both settings the measured
  worst tensor is ~5e-7 of its update (tests/test_fsdp.py, 8 optimizer steps), so rel 1e-4 leaves a margin
  of 200; a wrong slice, a missing pass or an averaged gradient moves the update by O(1).
"""
import torch

SMOOTH_ADAM = {"adam_eps": 1e-3}
EXACT = {"dtype": "float64", **SMOOTH_ADAM}


def assert_same_update(got: dict, ref: dict, base: dict, rel: float = 1e-4) -> None:
    """Every tensor of `got` within `rel` of `ref`'s update from `base` (in norm); the update moved something."""
    assert set(got) == set(ref)
    assert any(not torch.equal(ref[k].to(base[k].dtype), base[k]) for k in ref), "the update moved nothing"
    for k in ref:
        update = float((ref[k].double() - base[k].double()).norm())
        diff = float((got[k].double() - ref[k].double()).norm())
        assert diff <= rel * update + 1e-9, (k, diff, update)
