"""Tests for jkt.penalties: every estimator against jax.jacrev or its exact expectation,
functions, Linen and NNX give the same numbers, NNX in training mode under nnx.jit /
nnx.value_and_grad, the engine's loss shares the core, and clear errors."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx
from jacobian_test import make_cnn
from train_fixtures import one_line

from jkt import checkpoint, losses
from jkt import penalties as P
from jkt.train.objective import Objective, compose_losses

K = 5


def jacrev_pull(fn, x):
    """The reference pullback of the *batched* ``fn`` from ``jax.jacrev``:
    ``v (B, K) -> Σ_{c, k} v[c, k] ∂fn(x)[c, k]/∂x`` (with BatchNorm in training mode the
    examples are coupled, so every output example contributes)."""
    jac = jax.jacrev(fn)(x)  # (B, K, B, *D)
    return lambda v: jnp.tensordot(v, jac, axes=([0, 1], [0, 1]))


def jacrev_rows(fn, x):
    """All K rows ``(B, K, *D)`` of the batched ``fn`` by ``jax.jacrev``."""
    jac = jax.jacrev(fn)(x)
    return jnp.swapaxes(jnp.sum(jac, axis=0), 0, 1)


def reference(estimator, student, teacher, x, labels, key=None, normalize=False):
    """``(jac, jac_norm)`` batch means from ``jax.jacrev`` alone."""
    if estimator == "full":
        s, t = jacrev_rows(student, x), jacrev_rows(teacher, x)
    else:
        ref = teacher(x)
        v = {"label": lambda: jax.nn.one_hot(labels, ref.shape[1]),
             "top": lambda: jax.nn.one_hot(jnp.argmax(ref, -1), ref.shape[1])}[estimator]()
        s, t = jacrev_pull(student, x)(v), jacrev_pull(teacher, x)(v)
    return (jnp.mean(losses.match_jacobians(s, t, normalize=normalize)),
            jnp.mean(losses.jacobian_norm(s)))


@pytest.fixture(scope="module")
def nets():
    ps, fs, _ = make_cnn(jax.random.key(0), classes=K)
    pt, ft, _ = make_cnn(jax.random.key(1), classes=K)
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 3))
    return (lambda z: fs(ps, z)), (lambda z: ft(pt, z)), x, jnp.array([0, 3, 1])


# ---------------------------------------------------------------------------------------
# Estimators against jax.jacrev and their expectations.


@pytest.mark.parametrize("estimator", ["label", "top", "full"])
@pytest.mark.parametrize("normalize", [False, True])
def test_exact_estimators_match_jacrev(nets, estimator, normalize):
    student, teacher, x, labels = nets
    pen = jax.jit(lambda x: P.jacobian_penalties(
        student, x, labels, teacher=teacher, estimator=estimator, normalize=normalize,
        terms=("jac", "jac_norm")))(x)
    jac, jac_norm = reference(estimator, student, teacher, x, labels, normalize=normalize)
    chex.assert_trees_all_close(pen.terms, {"jac": jac, "jac_norm": jac_norm}, rtol=1e-5)
    chex.assert_trees_all_close((pen.logits, pen.teacher_logits), (student(x), teacher(x)),
                                rtol=1e-6)
    assert pen.aux is None


def test_jacobian_norm_needs_no_teacher(nets):
    student, teacher, x, labels = nets
    for estimator in ("label", "full"):
        pen = P.jacobian_penalties(student, x, labels, estimator=estimator)
        assert set(pen.terms) == {"jac_norm"} and pen.teacher_logits is None
        want = reference(estimator, student, teacher, x, labels)[1]
        chex.assert_trees_all_close(pen.terms["jac_norm"], want, rtol=1e-5)
    # "top" without a teacher takes the student's own top output.
    pen = P.jacobian_penalties(student, x, estimator="top")
    want = reference("top", student, student, x, labels)[1]
    chex.assert_trees_all_close(pen.terms["jac_norm"], want, rtol=1e-5)


@pytest.mark.parametrize("estimator", ["random", "rademacher", "sphere", "jvp"])
def test_random_estimators_average_to_the_full_loss(nets, estimator):
    """Unbiased: the mean over 4000 probes is the exact all-rows loss (jacrev)."""
    student, teacher, x, labels = nets
    exact = reference("full", student, teacher, x, labels)

    @jax.jit
    def draws(keys):
        return jax.lax.map(lambda k: P.jacobian_penalties(
            student, x, teacher=teacher, estimator=estimator, key=k,
            terms=("jac", "jac_norm")).terms, keys, batch_size=1000)

    got = draws(jax.random.split(jax.random.key(3), 4000))
    # Per-draw relative spread is below 0.9 here (README table): standard error < 2 %.
    chex.assert_trees_all_close(jax.tree.map(jnp.mean, got),
                                {"jac": exact[0], "jac_norm": exact[1]}, rtol=0.06)


@pytest.mark.parametrize("estimator", P.ESTIMATORS)
def test_engine_and_entry_point_share_the_jacobian_core(nets, estimator):
    """``compose_losses`` (the engine) and ``jacobian_penalties`` give equal terms."""
    student, teacher, x, labels = nets
    key = jax.random.key(4)
    objective = Objective(ce=0, jac=1, jac_norm=1, estimator=estimator, normalize=True)
    _, (terms, _, _) = compose_losses(objective, lambda z: ((student(z), {}), None),
                                      lambda z: (teacher(z), {}), x, labels, key)
    pen = P.jacobian_penalties(student, x, labels, teacher=teacher, estimator=estimator,
                               key=key, normalize=True, terms=("jac", "jac_norm"))
    chex.assert_trees_all_close(pen.terms, terms, rtol=1e-6)


class JitAndBatchOfOneTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_every_estimator_on_one_example(self):
        params, apply, _ = make_cnn(jax.random.key(5), classes=K)
        fn = lambda z: apply(params, z)
        x = jax.random.normal(jax.random.key(6), (1, 8, 8, 3))

        @self.variant
        def run(x, key):
            return {e: P.jacobian_penalties(fn, x, jnp.array([2]), teacher=lambda z: 2 * fn(z),
                                            estimator=e, key=key,
                                            terms=("jac", "jac_norm")).terms
                    for e in P.ESTIMATORS}

        out = run(x, jax.random.key(7))
        chex.assert_tree_all_finite(out)
        for e in P.ESTIMATORS:  # a teacher 2·S: the matching loss equals the norm penalty
            chex.assert_shape(out[e]["jac"], ())
            np.testing.assert_allclose(out[e]["jac"], out[e]["jac_norm"], rtol=1e-5)


# ---------------------------------------------------------------------------------------
# One network as a function, a Linen module and an NNX module.


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        h = nn.Conv(4, (3, 3))(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
        logits = nn.Dense(K)(jnp.mean(h, axis=(1, 2)))
        return (logits, {"bn": h}) if return_features else logits  # as jkt.models do


class NNXNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, K, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.mean(nnx.relu(self.bn(self.conv(x))), axis=(1, 2)))


def _linen_variables(seed):
    x = jnp.zeros((1, 8, 8, 3))
    v = LinenNet().init(jax.random.key(seed), x)
    rng = np.random.default_rng(seed)  # non-trivial BatchNorm statistics and affine
    v = jax.tree.map(lambda a: jnp.asarray(a + 0.3 * rng.normal(size=a.shape), a.dtype), v)
    stats = v["batch_stats"]["BatchNorm_0"]
    return {**v, "batch_stats": {"BatchNorm_0": {**stats, "var": jnp.abs(stats["var"])}}}


def _nnx_copy(v) -> NNXNet:
    """An NNXNet holding exactly the Linen variables ``v``."""
    m = NNXNet(rngs=nnx.Rngs(0))
    p, s = v["params"], v["batch_stats"]
    for var, value in [(m.conv.kernel, p["Conv_0"]["kernel"]), (m.conv.bias, p["Conv_0"]["bias"]),
                       (m.bn.scale, p["BatchNorm_0"]["scale"]),
                       (m.bn.bias, p["BatchNorm_0"]["bias"]),
                       (m.bn.mean, s["BatchNorm_0"]["mean"]), (m.bn.var, s["BatchNorm_0"]["var"]),
                       (m.head.kernel, p["Dense_0"]["kernel"]),
                       (m.head.bias, p["Dense_0"]["bias"])]:
        var[...] = value
    return m


def _copy(state) -> dict:
    """A host copy of an NNX state (a State refers to the live Variables)."""
    return jax.tree.map(np.array, nnx.to_pure_dict(state))


@pytest.fixture(scope="module")
def twins():
    sv, tv = _linen_variables(10), _linen_variables(11)
    x = jax.random.normal(jax.random.key(12), (4, 8, 8, 3))
    return sv, tv, x, jnp.array([1, 0, 4, 2])


@pytest.mark.parametrize("estimator", ["label", "full", "jvp"])
def test_function_linen_and_nnx_agree_in_training_mode(twins, estimator):
    """The student in training mode (batch statistics), the teacher in inference mode:
    a plain function, :class:`Linen` and NNX give the same terms, logits and new batch
    statistics, and match jax.jacrev of the batched function."""
    sv, tv, x, labels = twins
    net, key = LinenNet(), jax.random.key(13)
    kw = dict(estimator=estimator, key=key, terms=("jac", "jac_norm"))

    fn_pen = P.jacobian_penalties(
        lambda z: net.apply(sv, z, train=True, mutable=["batch_stats"]), x, labels,
        teacher=lambda z: net.apply(tv, z), has_aux=True, **kw)
    linen_pen = P.jacobian_penalties(
        P.Linen(net, sv, train=True, mutable=["batch_stats"]), x, labels,
        teacher=P.Linen(net, tv, train=False), **kw)
    student, teacher = _nnx_copy(sv), _nnx_copy(tv)
    nnx_pen = P.jacobian_penalties(student, x, labels, teacher=teacher, **kw)

    chex.assert_trees_all_close(linen_pen, fn_pen, rtol=1e-6)
    chex.assert_trees_all_close(nnx_pen.terms, linen_pen.terms, rtol=1e-4)
    chex.assert_trees_all_close(nnx_pen.logits, linen_pen.logits, rtol=1e-4, atol=1e-5)
    new_stats = linen_pen.aux["batch_stats"]["BatchNorm_0"]
    chex.assert_trees_all_close((student.bn.mean[...], student.bn.var[...]),
                                (new_stats["mean"], new_stats["var"]), rtol=1e-4, atol=1e-6)
    assert nnx_pen.aux is None
    if estimator != "jvp":
        want = reference(estimator,
                         lambda z: net.apply(sv, z, train=True, mutable=["batch_stats"])[0],
                         lambda z: net.apply(tv, z), x, labels)
        chex.assert_trees_all_close(linen_pen.terms, {"jac": want[0], "jac_norm": want[1]},
                                    rtol=1e-5)


def test_nnx_student_in_training_mode_under_nnx_transforms(twins):
    """nnx.jit + nnx.value_and_grad with BatchNorm in training mode: no TraceContextError,
    the statistics move once per step (as one plain forward pass moves them), the teacher
    runs in inference mode and is left untouched, and the gradients are those of the
    pure-function form."""
    sv, tv, x, labels = twins
    student, teacher = _nnx_copy(sv), _nnx_copy(tv)
    before = _copy(nnx.state(teacher))

    @nnx.jit
    def step(model, teacher, x, labels):
        def loss_fn(model):
            pen = P.jacobian_penalties(model, x, labels, teacher=teacher)
            return pen.terms["jac"] + jnp.mean(pen.logits ** 2), pen.terms

        return nnx.value_and_grad(loss_fn, has_aux=True)(model)

    (loss, terms), grads = step(student, teacher, x, labels)

    once = _nnx_copy(sv)
    once(x)  # one training-mode forward pass
    chex.assert_trees_all_close(_copy(nnx.state(student, nnx.BatchStat)),
                                _copy(nnx.state(once, nnx.BatchStat)), rtol=1e-6)
    chex.assert_trees_all_equal(_copy(nnx.state(teacher)), before)
    assert teacher.bn.use_running_average is False  # only its copy ran in eval mode

    net = LinenNet()

    def linen_loss(params):
        pen = P.jacobian_penalties(
            P.Linen(net, {**sv, "params": params}, train=True, mutable=["batch_stats"]), x,
            labels, teacher=P.Linen(net, tv))
        return pen.terms["jac"] + jnp.mean(pen.logits ** 2)

    want_loss, want = jax.value_and_grad(linen_loss)(sv["params"])
    np.testing.assert_allclose(loss, want_loss, rtol=1e-4)
    grads = nnx.to_pure_dict(grads)
    np.testing.assert_allclose(grads["conv"]["kernel"], want["Conv_0"]["kernel"], rtol=2e-3,
                               atol=1e-5)
    np.testing.assert_allclose(grads["head"]["kernel"], want["Dense_0"]["kernel"], rtol=2e-3,
                               atol=1e-5)


def test_teacher_artifact_is_renormalised_like_the_engine(twins):
    """A ``jkt.checkpoint.Teacher`` runs in inference mode; ``input_mean``/``input_std``
    map the student's normalisation to the teacher's."""
    sv, tv, x, labels = twins
    net = LinenNet()
    meta = checkpoint.TeacherMeta(arch="test", num_classes=K, input_size=(8, 8, 3),
                                  mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), dataset="test")
    artifact = checkpoint.Teacher(meta, net, tv)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    renorm = lambda z: (z * jnp.array(std) + jnp.array(mean) - jnp.array(meta.mean)) / jnp.array(
        meta.std)
    student = P.Linen(net, sv)
    got = P.jacobian_penalties(student, x, labels, teacher=artifact, input_mean=mean,
                               input_std=std)
    want = P.jacobian_penalties(student, x, labels,
                                teacher=lambda z: net.apply(tv, renorm(z), train=False))
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    plain = P.jacobian_penalties(student, x, labels, teacher=artifact)
    chex.assert_trees_all_close(plain.teacher_logits, net.apply(tv, x), rtol=1e-6)


def test_no_gradient_reaches_the_teacher(nets):
    student, _, x, labels = nets
    params, apply, _ = make_cnn(jax.random.key(1), classes=K)

    def loss(teacher_params):
        pen = P.jacobian_penalties(student, x, labels,
                                   teacher=lambda z: apply(teacher_params, z))
        return pen.terms["jac"] + jnp.sum(pen.teacher_logits)

    chex.assert_trees_all_equal(jax.grad(loss)(params), jax.tree.map(jnp.zeros_like, params))


# ---------------------------------------------------------------------------------------
# Errors: one line, naming what is wrong and what is valid.


def test_errors_are_clear(nets):
    student, teacher, x, labels = nets
    wide = lambda z: jnp.concatenate([teacher(z), teacher(z)], -1)
    cases = [
        (dict(estimator="hutchinson", teacher=teacher),
         "unknown estimator 'hutchinson'; valid: label, top, random, rademacher, sphere, "
         "jvp, full"),
        (dict(teacher=wide), "teacher logits (3, 10) and student logits (3, 5) differ"),
        (dict(labels=None, teacher=teacher), "estimator 'label' needs labels"),
        (dict(estimator="sphere", teacher=teacher), "estimator 'sphere' needs a PRNG key"),
        (dict(labels=jnp.array([0, 1]), teacher=teacher),
         "labels must be integers of shape (3,)"),
        (dict(labels=jnp.array([0.0, 1.0, 2.0]), teacher=teacher),
         "labels must be integers of shape (3,)"),
        (dict(terms=("jac",)), "term 'jac' matches a teacher, but no teacher was given"),
        (dict(terms=("jacobian",), teacher=teacher),
         "unknown terms ['jacobian']; valid: jac, jac_norm"),
        (dict(student=lambda z: jnp.sum(student(z), -1)),
         "the student must map x (3, 8, 8, 3) to logits (B, K) = (3, K), got (3,)"),
        (dict(student=lambda z: {"target": student(z)}), "the student returns a dict"),
        (dict(x=jnp.ones(3)), "x must be a batch (B, ...)"),
        (dict(teacher=P.Linen(LinenNet(), {}, mutable=["batch_stats"])),
         "a frozen teacher mutates nothing"),
        (dict(input_mean=(0.5,), teacher=checkpoint.Teacher(None, None, None)),
         "give both input_mean and input_std"),
    ]
    for kw, fragment in cases:
        args = {"student": student, "x": x, "labels": labels, **kw}
        with pytest.raises(ValueError) as excinfo:
            P.jacobian_penalties(args.pop("student"), args.pop("x"), args.pop("labels"),
                                 **args)
        msg = str(excinfo.value)
        assert fragment in msg and "\n" not in msg, (fragment, msg)
    with pytest.raises(TypeError, match=r"jkt.penalties.Linen\(module, variables"):
        P.jacobian_penalties((LinenNet(), {}), x, labels)
    with pytest.raises(TypeError, match="must be a function"):
        P.jacobian_penalties(student, x, labels, teacher=3)


def test_labels_outside_the_outputs_and_integer_inputs_are_refused(nets):
    """A label with no output row is one ValueError line (or, under jit, where its value is
    not known, a NaN penalty for that example), never a silent zero; an integer x is one
    line too, not JAX's float0 message."""
    student, teacher, x, labels = nets
    for bad in (jnp.array([0, 3, K]), jnp.array([0, -1, 1])):
        with pytest.raises(ValueError) as e:
            P.jacobian_penalties(student, x, bad, teacher=teacher)
        assert f"labels must lie in [0, {K})" in one_line(e)
    pen = jax.jit(lambda y: P.jacobian_penalties(student, x, y, teacher=teacher,
                                                 terms=("jac", "jac_norm")))(
        jnp.array([0, 3, K]))
    assert np.isnan(pen.terms["jac"]) and np.isnan(pen.terms["jac_norm"])
    ok = jax.jit(lambda y: P.jacobian_penalties(student, x, y, teacher=teacher))(labels)
    assert np.isfinite(ok.terms["jac"]) and ok.terms["jac"] > 0
    with pytest.raises(ValueError) as e:
        P.jacobian_penalties(student, x.astype(jnp.int32), labels, teacher=teacher)
    assert "x must be floating point" in one_line(e) and "int32" in one_line(e)
