"""Tests for jkt.losses: constants, propositions 1-2 by Monte Carlo, second-order grads."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jkt import jacobian as jj
from jkt import losses


def mlp(key, d=6, hidden=16, k=3, act=jax.nn.relu, maxpool=True):
    """ReLU MLP with a 2-to-1 max-pool over hidden units (piecewise linear), (B, d) -> (B, k)."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (d, hidden)) / np.sqrt(d)
    b1 = jax.random.normal(k2, (hidden,))
    w2 = jax.random.normal(k3, (hidden // 2 if maxpool else hidden, k))
    params = {"w1": w1, "b1": b1, "w2": w2}

    def apply(p, x):
        h = act(x @ p["w1"] + p["b1"])
        if maxpool:
            h = jnp.max(h.reshape(h.shape[0], -1, 2), axis=-1)
        return h @ p["w2"]

    return params, apply


def test_hand_computed_constants():
    s = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    t = jnp.array([[0.0, 4.0], [1.0, -1.0]])
    np.testing.assert_allclose(losses.match_activations(s, t), [5.0, 2.0])
    np.testing.assert_allclose(losses.match_jacobians(s, t), [5.0, 2.0])
    np.testing.assert_allclose(losses.jacobian_norm(t), [16.0, 2.0])
    # eq. 10: unit vectors (1,2)/√5 and (0,1): |.|² = 1/5 + (2/√5 - 1)²
    np.testing.assert_allclose(
        losses.match_jacobians(s, t, normalize=True),
        [0.2 + (2 / np.sqrt(5) - 1) ** 2, 1.0], rtol=1e-6)
    logits = jnp.array([[0.0, jnp.log(3.0)]])
    np.testing.assert_allclose(losses.cross_entropy(logits, jnp.array([1])), [np.log(4 / 3)],
                               rtol=1e-6)
    f = jnp.arange(8.0).reshape(1, 2, 2, 2)
    np.testing.assert_allclose(losses.attention_map(f), [[[1.0, 13.0], [41.0, 85.0]]])


def test_normalized_match_is_safe_at_zero():
    z = jnp.zeros((2, 3, 3))
    t = jnp.ones((2, 3, 3))
    val, grad = jax.value_and_grad(lambda s: losses.match_jacobians(s, t, normalize=True).sum())(z)
    np.testing.assert_allclose(val, 2.0)
    chex.assert_tree_all_finite(grad)
    g2 = jax.grad(lambda s: losses.match_attention(s, s).sum())(t)
    chex.assert_tree_all_finite(g2)


def test_attention_losses_scale_invariant_and_zero_on_equal_maps():
    key1, key2 = jax.random.split(jax.random.key(0))
    a = jax.random.uniform(key1, (3, 5, 5))
    b = jax.random.uniform(key2, (3, 5, 5))
    for variant in ("paper", "at_code"):
        base = losses.match_attention(a, b, variant)
        chex.assert_shape(base, (3,))
        np.testing.assert_allclose(losses.match_attention(7.0 * a, 0.01 * b, variant), base,
                                   rtol=1e-5)
        np.testing.assert_allclose(losses.match_attention(a, 3 * a, variant), 0.0, atol=1e-6)
    # eq. 9 is the (unsquared) distance of unit vectors; the code variant its mean square.
    ua = a.reshape(3, -1) / jnp.linalg.norm(a.reshape(3, -1), axis=1, keepdims=True)
    ub = b.reshape(3, -1) / jnp.linalg.norm(b.reshape(3, -1), axis=1, keepdims=True)
    np.testing.assert_allclose(losses.match_attention(a, b), jnp.linalg.norm(ua - ub, axis=1),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.match_attention(a, b, "at_code"),
                               jnp.mean((ua - ub) ** 2, axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown variant"):
        losses.match_attention(a, b, "nope")
    with pytest.raises(ValueError, match=r"\(3, 5, 5\).*\(3, 4, 4\)"):
        losses.match_attention(a, b[:, :4, :4])


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError,
                       match=r"student shape \(2, 3\) does not match teacher shape \(2, 4\)"):
        losses.match_activations(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="match_jacobians"):
        losses.match_jacobians(jnp.ones((2, 3, 3)), jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="cross_entropy"):
        losses.cross_entropy(jnp.ones((2, 3)), jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        losses.attention_map(jnp.ones((2, 3, 3)))


def _mc_noisy_loss(loss_fn, x, sigma, n, key):
    """E_ξ[loss(x + ξ)] with antithetic pairs ±ξ, ξ ~ N(0, σ² I); float64."""
    xi = sigma * jax.random.normal(key, (n, *x.shape), jnp.float64)
    vals = 0.5 * (jax.vmap(lambda e: loss_fn(x + e))(xi) + jax.vmap(lambda e: loss_fn(x - e))(xi))
    return jnp.mean(vals, axis=0)


def test_proposition_1_monte_carlo():
    """E_ξ Σ_k (T_k(x+ξ) - S_k(x+ξ))² = clean + σ² Σ_k ‖∇T_k - ∇S_k‖² for a ReLU/max-pool net."""
    with jax.enable_x64(True):
        pt, ft = mlp(jax.random.key(1))
        ps, fs = mlp(jax.random.key(2))
        pt = jax.tree.map(lambda a: a.astype(jnp.float64), pt)
        ps = jax.tree.map(lambda a: a.astype(jnp.float64), ps)
        x = jax.random.normal(jax.random.key(3), (4, 6), jnp.float64)
        teacher, student = (lambda z: ft(pt, z)), (lambda z: fs(ps, z))
        sigma = 1e-3
        noisy = _mc_noisy_loss(lambda z: losses.match_activations(student(z), teacher(z)),
                               x, sigma, 200_000, jax.random.key(4))
        clean = losses.match_activations(student(x), teacher(x))
        _, js = jj.full_jacobian(student, x)
        _, jt = jj.full_jacobian(teacher, x)
        jac_term = losses.match_jacobians(js, jt)
        np.testing.assert_allclose(noisy, clean + sigma**2 * jac_term, rtol=1e-2)
        # The strong check: the noise-induced excess *is* the Jacobian term (< 1 % rel.).
        np.testing.assert_allclose((noisy - clean) / sigma**2, jac_term, rtol=1e-2)


def test_proposition_2_monte_carlo():
    """E_ξ Σ_k (y_k - S_k(x+ξ))² = clean + σ² Σ_k ‖∇S_k‖²."""
    with jax.enable_x64(True):
        ps, fs = mlp(jax.random.key(5))
        ps = jax.tree.map(lambda a: a.astype(jnp.float64), ps)
        x = jax.random.normal(jax.random.key(6), (4, 6), jnp.float64)
        y = jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3, dtype=jnp.float64)
        student = lambda z: fs(ps, z)
        sigma = 1e-3
        noisy = _mc_noisy_loss(lambda z: losses.match_activations(student(z), y),
                               x, sigma, 200_000, jax.random.key(7))
        clean = losses.match_activations(student(x), y)
        _, js = jj.full_jacobian(student, x)
        np.testing.assert_allclose((noisy - clean) / sigma**2, losses.jacobian_norm(js), rtol=1e-2)


def test_jacobian_matching_second_order_grads():
    """check_grads(order=2) w.r.t. the student's parameters, through the double backprop."""
    with jax.enable_x64(True):
        ps, fs = mlp(jax.random.key(8), act=jnp.tanh, maxpool=False)
        pt, ft = mlp(jax.random.key(9), act=jnp.tanh, maxpool=False)
        ps = jax.tree.map(lambda a: a.astype(jnp.float64), ps)
        pt = jax.tree.map(lambda a: a.astype(jnp.float64), pt)
        x = jax.random.normal(jax.random.key(10), (3, 6), jnp.float64)
        labels = jnp.array([0, 2, 1])
        v = jj.select_cotangent(jnp.zeros((3, 3), jnp.float64), "label", labels=labels)
        _, gt = jj.vjp_input(lambda z: ft(pt, z), x, v)

        def loss(p, normalize):
            _, gs = jj.vjp_input(lambda z: fs(p, z), x, v)
            return jnp.mean(losses.match_jacobians(gs, gt, normalize=normalize))

        for normalize in (False, True):
            check_grads(lambda p, n=normalize: loss(p, n), (ps,), order=2, modes=["rev"])
        check_grads(lambda p: jnp.mean(losses.jacobian_norm(jj.vjp_input(
            lambda z: fs(p, z), x, v)[1])), (ps,), order=2, modes=["rev"])


def test_cross_entropy_forms_against_jacrev():
    """Eq. 3 penalty and eq. 2 cross term against brute-force per-output Jacobians."""
    ps, fs = mlp(jax.random.key(11), act=jnp.tanh, maxpool=False)
    pt, ft = mlp(jax.random.key(12), act=jnp.tanh, maxpool=False)
    x = jax.random.normal(jax.random.key(13), (2, 6))
    s_prob = lambda z: jax.nn.softmax(fs(ps, z))
    t_prob = lambda z: jax.nn.softmax(ft(pt, z))
    _, js = jj.full_jacobian(s_prob, x)
    _, jt = jj.full_jacobian(t_prob, x)
    y = jax.nn.one_hot(jnp.array([1, 2]), 3)
    pen = losses.ce_noise_penalty(js, s_prob(x), y)
    cross = losses.ce_noise_cross_term(jt, js, s_prob(x))
    for b in range(2):
        jlog = jax.jacrev(lambda xb: jnp.log(s_prob(xb[None])[0]))(x[b])  # (K, D)
        jtb = jax.jacrev(lambda xb: t_prob(xb[None])[0])(x[b])
        np.testing.assert_allclose(pen[b], jnp.sum(y[b] * jnp.sum(jlog**2, -1)), rtol=1e-5)
        np.testing.assert_allclose(cross[b], -jnp.sum(jtb * jlog), rtol=1e-5)


class JitAndBatchOfOneTest(parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_all_losses(self):
        key = jax.random.key(0)
        s, t = jax.random.normal(key, (2, 1, 4))
        js, jt = jax.random.normal(key, (2, 1, 4, 6, 6, 3))
        fs, ft = jax.random.normal(key, (2, 1, 6, 6, 5))

        @self.variant
        def run(s, t, js, jt, fs, ft):
            probs = jax.nn.softmax(s)
            return {
                "ce": losses.cross_entropy(s, jnp.array([2])),
                "act": losses.match_activations(s, t),
                "jac": losses.match_jacobians(js, jt),
                "jac10": losses.match_jacobians(js, jt, normalize=True),
                "norm": losses.jacobian_norm(js),
                "att": losses.match_attention(losses.attention_map(fs), losses.attention_map(ft)),
                "att_code": losses.match_attention(losses.attention_map(fs),
                                                   losses.attention_map(ft), "at_code"),
                "eq3": losses.ce_noise_penalty(js, probs, jax.nn.one_hot(jnp.array([1]), 4)),
                "eq2": losses.ce_noise_cross_term(jt, js, probs),
            }

        out = run(s, t, js, jt, fs, ft)
        for v in out.values():
            chex.assert_shape(v, (1,))
        chex.assert_tree_all_finite(out)
