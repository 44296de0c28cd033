"""Tests for jkt.jacobian: every estimator against an independent jax.jacrev reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jkt import jacobian as jj
from jkt import losses


def make_cnn(key, channels=4, classes=5, in_ch=3, act=jax.nn.relu):
    """A small conv -> act -> 2x2 max-pool -> conv -> act -> GAP -> dense network.

    Returns ``(params, apply, features)``: ``apply(params, x) -> (B, K)`` logits and
    ``features(params, x) -> (B, H/2, W/2, C)`` the tap after the second conv.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "c1": jax.random.normal(k1, (3, 3, in_ch, channels)) / 3.0,
        "c2": jax.random.normal(k2, (3, 3, channels, channels)) / 4.0,
        "w": jax.random.normal(k3, (channels, classes)),
    }

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def features(p, x):
        h = act(conv(x, p["c1"]))
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return act(conv(h, p["c2"]))

    def apply(p, x):
        return jnp.mean(features(p, x), axis=(1, 2)) @ p["w"].astype(x.dtype)

    return params, apply, features


def per_example_jacrev(fn, x):
    """Independent reference: jax.jacrev of each example on its own, (B, K, *D)."""
    return jnp.stack([jax.jacrev(lambda xb: fn(xb[None])[0])(x[b]) for b in range(x.shape[0])])


def rel_err(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.fixture(scope="module")
def setup():
    params, apply, features = make_cnn(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    fn = lambda z: apply(params, z)
    return fn, x, per_example_jacrev(fn, x)


def test_label_and_top_rows_match_jacrev(setup):
    fn, x, jac = setup
    logits = fn(x)
    labels = jnp.array([4, 0, 2])
    _, g = jj.vjp_input(fn, x, jj.select_cotangent(logits, "label", labels=labels))
    assert rel_err(g, jac[jnp.arange(3), labels]) < 1e-5
    top = jnp.argmax(logits, -1)
    _, g = jj.vjp_input(fn, x, jj.select_cotangent(logits, "top"))
    assert rel_err(g, jac[jnp.arange(3), top]) < 1e-5


def test_full_jacobian_matches_jacrev(setup):
    fn, x, jac = setup
    y, full = jj.full_jacobian(fn, x)
    chex.assert_shape(full, (3, 5, 8, 8, 3))
    chex.assert_trees_all_close(y, fn(x))
    assert rel_err(full, jac) < 1e-5


def test_pullbacks_of_one_forward_pass_match_jacrev(setup):
    """``pullback`` / ``output_pullbacks`` / ``jacobian_rows``, the pieces every estimator
    (and the loss composer) is built from: per-output pullbacks of a dict-valued function
    weight the other outputs zero; ``aux`` passes through."""
    fn, x, jac = setup
    y, pull, aux = jj.pullback(lambda z: ({"a": fn(z), "b": 2 * fn(z)}, "aux"), x,
                               has_aux=True)
    assert aux == "aux"
    pulls = jj.output_pullbacks(y, pull)
    top = jnp.argmax(y["a"], -1)
    v = jj.select_cotangent(y["a"], "top")
    assert rel_err(pulls["a"](v), jac[jnp.arange(3), top]) < 1e-5
    assert rel_err(pulls["b"](v), 2 * jac[jnp.arange(3), top]) < 1e-5
    assert rel_err(pull({"a": v, "b": v}), 3 * jac[jnp.arange(3), top]) < 1e-5
    rows = jj.jacobian_rows(pulls["b"], y["b"])
    chex.assert_shape(rows, (3, 5, 8, 8, 3))
    assert rel_err(rows, 2 * jac) < 1e-5


def test_unrolled_and_vmapped_jacobian_rows_agree_to_second_order():
    """Both layouts of ``jacobian_rows`` give the same Jacobian and the same parameter
    gradient of a loss on it (the second-order path a Jacobian-matching step runs), within
    float32 rounding; both match ``jax.jacrev`` in float64. The default unrolls on a CPU
    and maps for many outputs."""
    params, apply, _ = make_cnn(jax.random.key(3), classes=4)
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))

    def loss(p, unroll, dtype=jnp.float32):
        p = jax.tree.map(lambda a: a.astype(dtype), p)
        y, pull = jj.pullback(lambda z: apply(p, z), x.astype(dtype))
        return jnp.sum(jj.jacobian_rows(pull, y, unroll=unroll) ** 2)

    grads = {u: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, u)
             for u in (True, False)}
    chex.assert_trees_all_close(grads[True], grads[False], rtol=1e-5, atol=1e-6)
    with jax.enable_x64():
        ref = jax.grad(lambda p: jnp.sum(jax.vmap(jax.jacrev(
            lambda z: apply(p, z[None])[0]))(x.astype(jnp.float64)) ** 2))(
            jax.tree.map(lambda a: a.astype(jnp.float64), params))
    chex.assert_trees_all_close(grads[True][1], jax.tree.map(np.float32, ref), rtol=1e-4,
                                atol=1e-5)

    def convolutions(unroll, classes=4):
        """Convolutions in the program of a Jacobian loss's parameter gradient."""
        q, f, _ = make_cnn(jax.random.key(3), classes=classes)

        def loss_k(q):
            y, pull = jj.pullback(lambda z: f(q, z), x)
            return jnp.sum(jj.jacobian_rows(pull, y, unroll=unroll) ** 2)

        return jax.jit(jax.grad(loss_k)).lower(q).as_text().count("convolution")

    # Unrolled: K pullbacks' convolutions each; mapped: one batched set. The default
    # unrolls on a CPU up to UNROLL_MAX_OUTPUTS outputs.
    assert convolutions(True) > 2 * convolutions(False)
    assert convolutions(None) == convolutions(True)
    k = jj.UNROLL_MAX_OUTPUTS + 1
    assert convolutions(None, classes=k) == convolutions(False, classes=k)


def test_jvp_equals_j_times_u(setup):
    fn, x, jac = setup
    u = jj.input_tangent(jax.random.key(2), x)
    y, jv = jj.jvp_input(fn, x, u)
    chex.assert_shape(jv, (3, 5))
    ref = jnp.einsum("bkhwc,bhwc->bk", jac, u)
    assert rel_err(jv, ref) < 1e-5


def sphere_variance(m):
    """Closed-form variance of vᵀMv for v uniform on the sphere of radius √K, M (..., K, K)
    symmetric: E[(vᵀMv)²] = K/(K+2)·(tr(M)² + 2 tr(M²)) and E[vᵀMv] = tr(M), so
    Var = 2(K ‖M‖_F² - tr(M)²)/(K+2)."""
    k = m.shape[-1]
    tr = jnp.trace(m, axis1=-2, axis2=-1)
    return 2 * (k * jnp.sum(m * m, axis=(-2, -1)) - tr**2) / (k + 2)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_sphere_probe_moments_match_closed_form(k):
    """Sphere probes: rows of norm √K, E[vvᵀ] = I, E[vᵀMv] = tr M, and the fourth moment
    E[(vᵀMv)²] = K/(K+2)·(tr(M)² + 2 tr(M²)) for M = AAᵀ, checked by Monte Carlo."""
    n = 200_000
    v = jj.select_cotangent(jnp.zeros((n, k)), "sphere", key=jax.random.key(40))
    chex.assert_shape(v, (n, k))
    np.testing.assert_allclose(jnp.linalg.norm(v, axis=-1), np.sqrt(k), rtol=1e-5)
    np.testing.assert_allclose(v.T @ v / n, np.eye(k), atol=0.02)
    a = jax.random.normal(jax.random.key(41), (k, 3 * k))
    m = a @ a.T
    q = jnp.einsum("nk,kl,nl->n", v, m, v)
    tr, tr2 = jnp.trace(m), jnp.trace(m @ m)
    np.testing.assert_allclose(jnp.mean(q), tr, rtol=0.01)
    np.testing.assert_allclose(jnp.mean(q**2), k / (k + 2) * (tr**2 + 2 * tr2), rtol=0.02)
    np.testing.assert_allclose(jnp.var(q), sphere_variance(m), rtol=0.03)


def test_sphere_and_rademacher_variances_are_not_ordered():
    """Neither probe dominates: Rademacher is exact for diagonal M, sphere for M ∝ I, and
    for M = 11ᵀ (all-equal entries) the sphere's variance is the smaller."""
    k = 5
    rad = lambda m: 2 * (jnp.sum(m * m) - jnp.sum(jnp.diag(m) ** 2))
    diag = jnp.diag(jnp.arange(1.0, k + 1))
    ones = jnp.ones((k, k))
    assert rad(diag) == 0 < sphere_variance(diag)
    assert sphere_variance(ones) < rad(ones)
    np.testing.assert_allclose(sphere_variance(3 * jnp.eye(k)), 0, atol=1e-5)


def test_random_estimators_are_unbiased_and_variances_as_derived():
    """Output-space (Gaussian, Rademacher, sphere) and input-space probes vs the full loss.

    For A = J_s - J_t (K x D) per example: Gaussian probes in either space have variance
    2‖AAᵀ‖_F²; Rademacher output probes 2(‖AAᵀ‖_F² - Σ diag(AAᵀ)²); sphere output probes
    2(K ‖AAᵀ‖_F² - tr(AAᵀ)²)/(K+2), measured below the Gaussian's on this network.
    """
    ps, fs, _ = make_cnn(jax.random.key(10))
    pt, ft, _ = make_cnn(jax.random.key(11))
    x = jax.random.normal(jax.random.key(12), (2, 8, 8, 3))
    student, teacher = (lambda z: fs(ps, z)), (lambda z: ft(pt, z))
    _, js = jj.full_jacobian(student, x)
    _, jt = jj.full_jacobian(teacher, x)
    exact = losses.match_jacobians(js, jt)  # (B,)
    a = (js - jt).reshape(2, 5, -1)
    aat = jnp.einsum("bkd,bld->bkl", a, a)
    var_gauss = 2 * jnp.sum(aat**2, axis=(1, 2))
    var_rad = var_gauss - 2 * jnp.sum(jnp.diagonal(aat, axis1=1, axis2=2) ** 2, -1)
    var_sphere = sphere_variance(aat)

    logits = student(x)

    @functools.partial(jax.jit, static_argnums=1)
    def output_space(key, mode):
        v = jj.select_cotangent(logits, mode, key=key)
        _, gs = jj.vjp_input(student, x, v)
        _, gt = jj.vjp_input(teacher, x, v)
        return losses.match_jacobians(gs, gt)

    @jax.jit
    def input_space(key):
        u = jj.input_tangent(key, x)
        _, s = jj.jvp_input(student, x, u)
        _, t = jj.jvp_input(teacher, x, u)
        return losses.match_activations(s, t)

    # 80,000 network passes: compiled with LLVM's optimisation on (the suite turns it
    # off, conftest.py), which runs them several times faster.
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2})
    def draw(keys):
        return {
            "random": jax.lax.map(lambda k: output_space(k, "random"), keys, batch_size=2000),
            "rademacher": jax.lax.map(lambda k: output_space(k, "rademacher"), keys,
                                      batch_size=2000),
            "sphere": jax.lax.map(lambda k: output_space(k, "sphere"), keys, batch_size=2000),
            "jvp": jax.lax.map(input_space, keys, batch_size=2000),
        }

    samples = draw(jax.random.split(jax.random.key(13), 20000))
    for name, s in samples.items():
        mean = jnp.mean(s, 0)
        # Monte-Carlo standard error is below 1.5 % here; allow 5 %.
        np.testing.assert_allclose(mean, exact, rtol=0.05, err_msg=name)
    np.testing.assert_allclose(jnp.var(samples["random"], 0), var_gauss, rtol=0.15)
    np.testing.assert_allclose(jnp.var(samples["jvp"], 0), var_gauss, rtol=0.15)
    np.testing.assert_allclose(jnp.var(samples["rademacher"], 0), var_rad, rtol=0.15)
    np.testing.assert_allclose(jnp.var(samples["sphere"], 0), var_sphere, rtol=0.15)
    assert np.all(var_rad < var_gauss)
    assert np.all(var_sphere < var_gauss)
    # Measured per-draw spread: the sphere probe's is below the Gaussian probe's.
    assert np.all(jnp.std(samples["sphere"], 0) < jnp.std(samples["random"], 0))


def test_attention_map_jacobian_matches_bruteforce():
    pt, _, ft = make_cnn(jax.random.key(20), channels=6)
    ps, _, fs = make_cnn(jax.random.key(21), channels=3)
    x = jax.random.normal(jax.random.key(22), (2, 10, 10, 3))
    window = jj.pooling_window((5, 5), 0.4)
    assert window == (2, 2)
    t_fn, s_fn = (lambda z: ft(pt, z)), (lambda z: fs(ps, z))
    t_pooled, pixel, t_grad = jj.attention_map_jacobian(t_fn, x, window)
    s_pooled, _, s_grad = jj.attention_map_jacobian(s_fn, x, window, pixel)
    chex.assert_shape([t_pooled, s_pooled, pixel], (2, 4, 4))
    for b in range(2):
        i, j = np.unravel_index(int(jnp.argmax(t_pooled[b])), t_pooled.shape[1:])
        for fn, grad in ((t_fn, t_grad), (s_fn, s_grad)):
            ref = jax.jacrev(lambda xb, fn=fn: jj.pooled_attention(fn(xb[None]), window)[0])(x[b])
            assert rel_err(grad[b], ref[i, j]) < 1e-5
    loss = losses.match_jacobians(s_grad, t_grad, normalize=True)
    chex.assert_shape(loss, (2,))
    assert np.all((loss >= 0) & (loss <= 4))


def test_pooled_attention_is_average_of_attention_map():
    f = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
    a = losses.attention_map(f)
    pooled = jj.pooled_attention(f, (3, 3))
    chex.assert_shape(pooled, (1, 4, 4))
    np.testing.assert_allclose(pooled[0, 1, 2], jnp.mean(a[0, 1:4, 2:5]), rtol=1e-6)
    assert jj.pooling_window((56, 56), 1.0) == (56, 56)
    assert jj.pooling_window((56, 56), None) == (1, 1)
    assert jj.pooling_window((56, 56)) == (11, 11)


def test_mismatched_attention_sizes_are_refused():
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 4\).*\(2, 4, 4, 4\)"):
        jj.check_same_spatial((2, 8, 8, 4), (2, 4, 4, 4))
    pt, _, ft = make_cnn(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    _, pixel, _ = jj.attention_map_jacobian(lambda z: ft(pt, z), x, (1, 1))
    big = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    with pytest.raises(ValueError, match="equal spatial size"):
        jj.attention_map_jacobian(lambda z: ft(pt, z), big, (1, 1), pixel)


def test_select_cotangent_errors_and_values():
    logits = jnp.array([[0.0, 3.0, 1.0]])
    with pytest.raises(ValueError, match="unknown mode 'bogus'"):
        jj.select_cotangent(logits, "bogus")
    with pytest.raises(ValueError, match="needs labels"):
        jj.select_cotangent(logits, "label")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jj.select_cotangent(logits, "random")
    with pytest.raises(ValueError, match="labels must be"):
        jj.select_cotangent(logits, "label", labels=jnp.array([0, 1]))
    np.testing.assert_array_equal(jj.select_cotangent(logits, "top"), [[0, 1, 0]])
    np.testing.assert_array_equal(
        jj.select_cotangent(logits, "label", labels=jnp.array([2])), [[0, 0, 1]])
    r = jj.select_cotangent(jnp.zeros((4, 3)), "rademacher", key=jax.random.key(0))
    assert set(np.unique(r).tolist()) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jj.select_cotangent(logits, "sphere")
    for dtype in (jnp.float32, jnp.bfloat16):
        v = jj.select_cotangent(jnp.zeros((4, 7), dtype), "sphere", key=jax.random.key(1))
        assert v.dtype == dtype
        np.testing.assert_allclose(jnp.linalg.norm(v.astype(jnp.float32), axis=-1),
                                   np.sqrt(7), rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)
    assert "sphere" in jj.COTANGENT_MODES


def test_shape_errors():
    fn = lambda z: z.reshape(z.shape[0], -1)[:, :3]
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="cotangent shape"):
        jj.vjp_input(fn, x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="tangent shape"):
        jj.jvp_input(fn, x, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"outputs \(B, K\)"):
        jj.full_jacobian(lambda z: z.sum(-1), x)


class JitAndBatchOfOneTest(parameterized.TestCase):
    """Every public function under jax.jit and without, on a batch of 1."""

    def setUp(self):
        super().setUp()
        params, apply, features = make_cnn(jax.random.key(30))
        self.fn = lambda z: apply(params, z)
        self.feat = lambda z: features(params, z)
        self.x = jax.random.normal(jax.random.key(31), (1, 8, 8, 3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_all(self):
        fn, feat, x = self.fn, self.feat, self.x
        key = jax.random.key(0)

        @self.variant
        def run(x, key):
            logits = fn(x)
            out = {}
            for mode in ("label", "top", "random", "rademacher", "sphere"):
                v = jj.select_cotangent(logits, mode, labels=jnp.array([1]), key=key)
                out[mode] = jj.vjp_input(fn, x, v)[1]
            out["jvp"] = jj.jvp_input(fn, x, jj.input_tangent(key, x))[1]
            out["full"] = jj.full_jacobian(fn, x)[1]
            out["att"] = jj.attention_map_jacobian(feat, x, (2, 2))[2]
            return out

        out = run(x, key)
        for mode in ("label", "top", "random", "rademacher", "sphere", "att"):
            chex.assert_shape(out[mode], (1, 8, 8, 3))
        chex.assert_shape(out["jvp"], (1, 5))
        chex.assert_shape(out["full"], (1, 5, 8, 8, 3))
        chex.assert_tree_all_finite(out)
