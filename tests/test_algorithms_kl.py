"""KL estimators k1, k2, k3 against hand-derived numbers and exact expectations."""


import pytest
import torch

from rlkit.algorithms import KL_ESTIMATORS, get_kl_estimator

T = torch.tensor


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def test_hand_values():
    # lp = log 0.25, ref = log 0.5: ref - lp = log 2 = 0.693147, r = 2.
    # k1 = lp - ref = -0.693147; k2 = 0.5 * 0.693147^2 = 0.240227; k3 = (2 - 1) - 0.693147 = 0.306853.
    # Second column: ref = lp -> all 0.
    lp = torch.log(T([[0.25, 0.3]]))
    ref = torch.log(T([[0.5, 0.3]]))
    close(get_kl_estimator("k1")(lp, ref), [[-0.693147, 0.0]])
    close(get_kl_estimator("k2")(lp, ref), [[0.240227, 0.0]])
    close(get_kl_estimator("k3")(lp, ref), [[0.306853, 0.0]])


def test_k1_and_k3_are_unbiased_in_exact_expectation():
    # p = [0.5, 0.5], q = [0.25, 0.75]: KL(p || q) = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 (0.693147 - 0.405465)
    # = 0.143841. E_p[k] = sum_x p(x) k(x) for x over the two tokens; E_p[k3] = sum q - 1 + KL = KL.
    p, q = T([[0.5, 0.5]], dtype=torch.float64), T([[0.25, 0.75]], dtype=torch.float64)
    kl = 0.143841
    for name in ("k1", "k3"):
        close((p * get_kl_estimator(name)(p.log(), q.log())).sum(), kl)
    # k2 is biased: E_p[0.5 log^2 r] = 0.5 (0.5 * 0.480453 + 0.5 * 0.164402) = 0.161214 != 0.143841.
    close((p * get_kl_estimator("k2")(p.log(), q.log())).sum(), 0.161214)


def test_shapes_nonnegativity_and_gradient():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 5, generator=g).requires_grad_()
    ref = torch.randn(3, 5, generator=g)
    for name in KL_ESTIMATORS.names():
        out = get_kl_estimator(name)(lp, ref)
        assert out.shape == (3, 5)
    assert (get_kl_estimator("k2")(lp, ref) >= 0).all() and (get_kl_estimator("k3")(lp, ref) >= 0).all()
    # d k3 / d lp = 1 - exp(ref - lp); the reference gets no gradient.
    get_kl_estimator("k3")(lp, ref).sum().backward()
    close(lp.grad, 1 - torch.exp(ref - lp.detach()))


def test_extreme_padding_values_stay_finite():
    out = get_kl_estimator("k3")(T([[float("-inf"), 0.0]]), T([[0.0, 1e6]]))
    assert torch.isfinite(out).all()


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        get_kl_estimator("k3")(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError) as err:
        get_kl_estimator("k4")
    assert all(n in str(err.value) for n in ("k1", "k2", "k3"))
    with pytest.raises(ValueError, match="already registered"):
        KL_ESTIMATORS.register("k3")(lambda lp, ref: lp)
