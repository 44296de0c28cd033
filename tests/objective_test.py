"""Tests for jkt.train.objective: every objective composes and trains, the terms are the
``jkt.jacobian`` functions' (which ``tests/jacobian_test.py`` checks against
``jax.jacrev``), two-head (LwF) students use the right heads, and clear config errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import (  # noqa: F401  (fixtures)
    ADAM,
    BATCH,
    FAST,
    IMAGE_SHAPE,
    MEAN,
    NUM_CLASSES,
    STD,
    host,
    one_line,
    one_run_step,
    split_fixture,
    teacher_fixture,
    tiny,
)

from jkt import jacobian as jj
from jkt import losses, parallel
from jkt.data.batches import make_batch
from jkt.train.methods import METHODS, method_objective
from jkt.train.objective import ESTIMATORS, TERMS, Objective, compose_losses
from jkt.train.state import create_train_state

# ---------------------------------------------------------------------------------------
# Every objective composes and decreases its total loss on a fixed batch.

OBJECTIVES = {
    **METHODS,
    "jac_norm": Objective(ce=1, jac_norm=1),
    **{f"ce+act+jac/{e}": method_objective("ce+act+jac", estimator=e)
       for e in ("top", "random", "rademacher", "sphere", "jvp", "full")},
    "ce+act+jac/normalize": method_objective("ce+act+jac", normalize=True),
    "attention": Objective(ce=1, act=1, att=1, att_jac=1, att_pairs=(("pool1", "pool1"),),
                           att_jac_pair=("pool1", "pool1"), estimator="top"),
}


@pytest.fixture(scope="module")
def fixed_batch(split):
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = tiny()
    state = create_train_state(model, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
    return model, state, make_batch(split, np.arange(BATCH), mesh)


def _fast_step(model, objective, teacher_model):
    step = one_run_step(model, objective, augment=False,
                        teacher_model=teacher_model if objective.needs_teacher else None)
    return jax.jit(step, compiler_options=FAST)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_composes_and_total_loss_decreases(name, fixed_batch, teacher):
    objective = OBJECTIVES[name]
    model, state, batch = fixed_batch
    t_model, t_vars = teacher
    step = _fast_step(model, objective, t_model)
    tv = t_vars if objective.needs_teacher else None
    history = []
    for _ in range(15):
        state, metrics = step(state, batch, tv)
        history.append(host(metrics))
    chex.assert_tree_all_finite(history)
    active = {t for t in TERMS if getattr(objective, t) > 0}
    expected_keys = {"loss", "accuracy", *active} | ({"agreement"} if tv is not None else set())
    assert set(history[0]) == expected_keys
    for m in history:  # the total is the weighted sum of the logged terms
        np.testing.assert_allclose(m["loss"], sum(getattr(objective, t) * m[t] for t in active),
                                   rtol=1e-5, atol=1e-6)
    losses_ = [m["loss"] for m in history]
    first, last = np.mean(losses_[:2]), np.mean(losses_[-2:])
    assert last < first, f"{name}: total loss did not decrease: {losses_}"


# ---------------------------------------------------------------------------------------
# The composed terms are those of the jkt.jacobian functions.


def _conv_nets(seed=0, k=5):
    """Student and teacher ``x (B, 6, 6, 3) -> ((logits (B, K), {"f": (B, 6, 6, C)}))``."""
    keys = jax.random.split(jax.random.key(seed), 5)

    def net(w_conv, w_out):
        def features(z):
            return jnp.tanh(jax.lax.conv_general_dilated(
                z, w_conv, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))

        def apply(z):
            f = features(z)
            return jnp.mean(f, axis=(1, 2)) @ w_out, {"f": f}

        return apply, features

    student, s_feat = net(jax.random.normal(keys[0], (3, 3, 3, 4)) / 3,
                          jax.random.normal(keys[1], (4, k)))
    teacher, t_feat = net(jax.random.normal(keys[2], (3, 3, 3, 6)) / 3,
                          jax.random.normal(keys[3], (6, k)))
    x = jax.random.normal(keys[4], (3, 6, 6, 3))
    return student, s_feat, teacher, t_feat, x


def _reference_rows(estimator, s_logits_fn, t_logits_fn, x, labels, key):
    """(student, teacher) Jacobian rows from the public jkt.jacobian functions."""
    if estimator == "full":
        return jj.full_jacobian(s_logits_fn, x)[1], jj.full_jacobian(t_logits_fn, x)[1]
    if estimator == "jvp":
        u = jj.input_tangent(key, x)
        return jj.jvp_input(s_logits_fn, x, u)[1], jj.jvp_input(t_logits_fn, x, u)[1]
    v = jj.select_cotangent(t_logits_fn(x), estimator, labels=labels, key=key)
    return jj.vjp_input(s_logits_fn, x, v)[1], jj.vjp_input(t_logits_fn, x, v)[1]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_jacobian_terms_are_the_jacobian_module_functions(estimator):
    student, _, teacher_fn, _, x = _conv_nets()
    labels, key = jnp.array([0, 3, 1]), jax.random.key(4)
    objective = Objective(ce=0, jac=1, jac_norm=1, estimator=estimator, normalize=True)
    _, (terms, _, _) = jax.jit(lambda x: compose_losses(
        objective, lambda z: (student(z), None), teacher_fn, x, labels, key))(x)
    s_rows, t_rows = _reference_rows(estimator, lambda z: student(z)[0],
                                     lambda z: teacher_fn(z)[0], x, labels, key)
    np.testing.assert_allclose(
        terms["jac"], jnp.mean(losses.match_jacobians(s_rows, t_rows, normalize=True)),
        rtol=1e-5)
    np.testing.assert_allclose(terms["jac_norm"], jnp.mean(losses.jacobian_norm(s_rows)),
                               rtol=1e-5)


def test_attention_jacobian_term_is_attention_map_jacobian():
    student, s_feat, teacher_fn, t_feat, x = _conv_nets(seed=1)
    objective = Objective(ce=0, att=1, att_jac=1, att_pairs=(("f", "f"),),
                          att_jac_pair=("f", "f"), pool_fraction=0.5)
    _, (terms, _, _) = compose_losses(objective, lambda z: (student(z), None), teacher_fn, x,
                                      jnp.zeros(3, jnp.int32), jax.random.key(0))
    window = jj.pooling_window((6, 6), 0.5)
    _, pixel, t_grad = jj.attention_map_jacobian(t_feat, x, window)
    _, _, s_grad = jj.attention_map_jacobian(s_feat, x, window, pixel)
    np.testing.assert_allclose(
        terms["att_jac"], jnp.mean(losses.match_jacobians(s_grad, t_grad, normalize=True)),
        rtol=1e-5)
    att = losses.match_attention(losses.attention_map(s_feat(x)),
                                 losses.attention_map(t_feat(x)), "paper")
    np.testing.assert_allclose(terms["att"], jnp.mean(att), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Two-head (LwF) students: CE on the target head, matching on the source head.

D = 4 * 4 * 3  # hand-made linear "networks" on 4x4x3 inputs


def _linear_nets(seed=0, source=6, target=NUM_CLASSES):
    k = jax.random.split(jax.random.key(seed), 4)
    w_target = jax.random.normal(k[0], (D, target))
    w_source = jax.random.normal(k[1], (D, source))
    w_teacher = jax.random.normal(k[2], (D, source))
    x = jax.random.normal(k[3], (5, 4, 4, 3))

    def student_fn(z):
        flat = z.reshape(z.shape[0], -1)
        out = {"target": flat @ w_target, "source": flat @ w_source}
        return (out, {}), {"aux": jnp.ones(3)}

    def teacher_fn(z):
        return z.reshape(z.shape[0], -1) @ w_teacher, {}

    return w_target, w_source, w_teacher, x, student_fn, teacher_fn


@pytest.mark.parametrize("estimator", ["top", "full"])
def test_two_head_terms_use_the_right_heads(estimator):
    w_target, w_source, w_teacher, x, student_fn, teacher_fn = _linear_nets()
    labels = jnp.array([0, 1, 2, 3, 1])
    objective = Objective(ce=1, act=2, jac=3, estimator=estimator)
    composed = jax.jit(lambda x, labels: compose_losses(objective, student_fn, teacher_fn, x,
                                                        labels, jax.random.key(0)))
    total, (terms, stats, aux) = composed(x, labels)
    flat = x.reshape(5, -1)
    s_target, s_source, t = flat @ w_target, flat @ w_source, flat @ w_teacher
    ce = jnp.mean(losses.cross_entropy(s_target, labels))
    act = jnp.mean(losses.match_activations(s_source, t))
    if estimator == "top":
        top = jnp.argmax(t, -1)  # the Jacobian of a linear map is its weight column
        s_jac, t_jac = w_source[:, top].T, w_teacher[:, top].T
    else:  # full: (B, K, D)
        s_jac = jnp.broadcast_to(w_source.T, (5, 6, D))
        t_jac = jnp.broadcast_to(w_teacher.T, (5, 6, D))
    jac = jnp.mean(losses.match_jacobians(s_jac, t_jac))
    chex.assert_trees_all_close(terms, {"ce": ce, "act": act, "jac": jac}, rtol=1e-5)
    np.testing.assert_allclose(total, ce + 2 * act + 3 * jac, rtol=1e-5)
    chex.assert_trees_all_close(stats, {
        "accuracy": jnp.mean(jnp.argmax(s_target, -1) == labels),
        "agreement": jnp.mean(jnp.argmax(s_source, -1) == jnp.argmax(t, -1)),
    })
    chex.assert_trees_all_equal(aux, {"aux": jnp.ones(3)})


def test_two_head_label_estimator_and_single_head_mismatch_are_rejected():
    *_, x, student_fn, teacher_fn = _linear_nets()
    labels = jnp.zeros(5, jnp.int32)
    with pytest.raises(ValueError, match="'top'"):
        compose_losses(Objective(ce=1, jac=1), student_fn, teacher_fn, x, labels,
                       jax.random.key(0))

    def single_head(z):  # 4 outputs, teacher has 6
        (out, feats), aux = student_fn(z)
        return (out["target"], feats), aux

    with pytest.raises(ValueError, match="two-head"):
        compose_losses(Objective(ce=1, act=1), single_head, teacher_fn, x, labels,
                       jax.random.key(0))
    with pytest.raises(ValueError, match="no teacher"):
        compose_losses(Objective(ce=1, act=1), student_fn, None, x, labels, jax.random.key(0))


# ---------------------------------------------------------------------------------------
# Configuration errors.


def test_config_errors_are_one_clear_line():
    cases = [
        (lambda: Objective(ce=-1), "ce=-1"),
        (lambda: Objective(ce=1, jac=1, estimator="hutchinson"), "estimator 'hutchinson'"),
        (lambda: Objective(ce=1, att=1), "att_pairs"),
        (lambda: Objective(ce=1, att_jac=1), "att_jac_pair"),
        (lambda: Objective(ce=0), "every loss weight is zero"),
    ]
    for make, fragment in cases:
        with pytest.raises(ValueError) as excinfo:
            make()
        assert fragment in one_line(excinfo), (fragment, str(excinfo.value))
