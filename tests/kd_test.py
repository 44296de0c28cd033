"""Soft-target distillation (``kd``), eq. 2's Jacobian term (``kd_jac``), the eq.-3 form
of the Jacobian-norm penalty (``jac_norm_form="softmax"``) and their place in the
engine: float64 references (numpy, ``jax.jacrev``), validation, fusion, memory factors,
run records and the method registry. The noisy-input terms and §4's Claim itself are
``tests/noise_claim_test.py``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import one_line

from jkt import config as config_lib
from jkt import jacobian as jj
from jkt import losses, workdir
from jkt.train import fused, memory, methods
from jkt.train.loop import TrainConfig
from jkt.train.objective import (
    ADDED_TERMS,
    PAPER_TERMS,
    TERMS,
    Objective,
    compose_losses,
    softmax_jacobian_terms,
)
from jkt.train.state import make_init
from jkt.train.step import make_train_step

B, D, K = 4, 5, 4


def _mlp(seed, hidden=8, act=jnp.tanh, dtype=jnp.float64):
    """A smooth MLP ``(B, D) -> (B, K)`` and its parameters."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {"w1": jax.random.normal(k1, (D, hidden), dtype),
              "b1": jax.random.normal(k2, (hidden,), dtype),
              "w2": 1.5 * jax.random.normal(k3, (hidden, K), dtype)}

    def apply(p, x):
        return act(x @ p["w1"] + p["b1"]) @ p["w2"]

    return params, apply


def _nets(seed=0, dtype=jnp.float64):
    """``(ps, fs, pt, ft, x, labels)`` (float64: call inside ``jax.enable_x64``)."""
    ps, fs = _mlp(seed, dtype=dtype)
    pt, ft = _mlp(seed + 1, hidden=12, dtype=dtype)
    x = jax.random.normal(jax.random.key(seed + 2), (B, D), dtype)
    labels = jnp.array([0, 3, 1, 2])
    return ps, fs, pt, ft, x, labels


def _fns(fs, ps, ft, pt):
    """``compose_losses``' student and teacher functions of two plain networks."""
    return (lambda z: ((fs(ps, z), {}), None)), (lambda z: (ft(pt, z), {}))


def _pass(f, x):
    return jj.run_once(lambda z: ({"logits": f(z)}, (f(z), None, None)), x, differentiate=True)


def _terms(objective, fs, ps, ft, pt, x, labels, key=None):
    s_fn, t_fn = _fns(fs, ps, ft, pt)
    key = jax.random.key(0) if key is None else key
    return compose_losses(objective, s_fn, t_fn if objective.needs_teacher else None, x,
                          labels, key)[1][0]


# ---------------------------------------------------------------------------------------
# kd: T² KL(softmax(t/T) ‖ softmax(s/T)).


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_kd_is_t2_kl_of_the_softened_outputs(temperature):
    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 3, (5, 7)), rng.normal(0, 3, (5, 7))
    p, q = _np_softmax(t / temperature), _np_softmax(s / temperature)
    kl = temperature**2 * np.sum(p * (np.log(p) - np.log(q)), -1)
    entropy = -temperature**2 * np.sum(p * np.log(p), -1)
    with jax.enable_x64(True):
        got = losses.soft_target_kl(jnp.asarray(s), jnp.asarray(t), temperature)
        np.testing.assert_allclose(got, kl, rtol=1e-12)
        # KL and soft cross-entropy differ by T² times the teacher's entropy, a constant.
        soft_ce = losses.soft_target_cross_entropy(jnp.asarray(s), jnp.asarray(t), temperature)
        np.testing.assert_allclose(soft_ce - got, entropy, rtol=1e-12)
        np.testing.assert_allclose(losses.soft_target_kl(jnp.asarray(t), jnp.asarray(t),
                                                         temperature), 0.0, atol=1e-12)


def test_kd_term_and_its_gradient_against_float64_references():
    """The engine's ``kd`` is the batch mean of T²·KL; its gradient in the student's
    parameters equals ``jax.grad`` of an independent reference and the closed form
    ``T (q_T - p_T)`` on the logits."""
    temperature = 3.0
    with jax.enable_x64(True):
        ps, fs, pt, ft, x, labels = _nets()
        o = Objective(ce=0, kd=1, temperature=temperature)
        terms = _terms(o, fs, ps, ft, pt, x, labels)
        assert set(terms) == {"kd"}

        def reference(p):  # explicit exp/log, float64
            s, t = fs(p, x) / temperature, ft(pt, x) / temperature
            pt_ = jnp.exp(t) / jnp.sum(jnp.exp(t), -1, keepdims=True)
            log_q = s - jnp.log(jnp.sum(jnp.exp(s), -1, keepdims=True))
            return temperature**2 * jnp.mean(jnp.sum(pt_ * (jnp.log(pt_) - log_q), -1))

        np.testing.assert_allclose(terms["kd"], reference(ps), rtol=1e-12)
        s_fn, t_fn = _fns(fs, None, ft, pt)

        def total(p):
            return compose_losses(o, lambda z: ((fs(p, z), {}), None), t_fn, x, labels,
                                  jax.random.key(0))[0]

        g, g_ref = jax.grad(total)(ps), jax.grad(reference)(ps)
        for k in g:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-10, atol=1e-14)
        # On the logits: d/ds T² KL = T (q_T - p_T).
        s, t = fs(ps, x), ft(pt, x)
        g_logits = jax.grad(lambda z: jnp.sum(losses.soft_target_kl(z, t, temperature)))(s)
        closed = temperature * (_np_softmax(np.asarray(s) / temperature)
                                - _np_softmax(np.asarray(t) / temperature))
        np.testing.assert_allclose(g_logits, closed, rtol=1e-10, atol=1e-14)


def test_kd_is_finite_where_the_teacher_gives_probability_zero():
    s = jnp.array([[0.0, 1.0, -2.0]])
    t = jnp.array([[0.0, 1.0, -1e5]])  # exp underflows: p = 0 for the last class
    val, grad = jax.value_and_grad(lambda z: losses.soft_target_kl(z, t, 1.0).sum())(s)
    assert np.isfinite(val) and np.all(np.isfinite(grad))


# ---------------------------------------------------------------------------------------
# kd_jac: eq. 2's -T² Σ_i ∇T_s^i·∇S_s^i / S_s^i, against jax.jacrev.


def _softmax_jacobians(f, p, x, temperature):
    """Per-example ``(B, K, D)`` Jacobians of ``softmax(f(x)/T)`` by ``jax.jacrev``."""
    return jax.vmap(jax.jacrev(lambda xb: jax.nn.softmax(f(p, xb[None])[0] / temperature)))(x)


def _eq2_reference(fs, ps, ft, pt, x, labels, temperature, estimator):
    js = _softmax_jacobians(fs, ps, x, temperature)
    jt = _softmax_jacobians(ft, pt, x, temperature)
    probs = jax.nn.softmax(fs(ps, x) / temperature)
    per_output = jnp.sum(jt * js, -1) / probs  # (B, K): ∇T_s^i·∇S_s^i / S_s^i
    rows = {"full": jnp.ones((B, K)),
            "label": jax.nn.one_hot(labels, K),
            "top": jax.nn.one_hot(jnp.argmax(ft(pt, x), -1), K)}[estimator]
    return -temperature**2 * jnp.sum(rows * per_output, -1), (jt, js, probs)


@pytest.mark.parametrize("estimator", ["full", "label", "top"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_jac_matches_jacrev_of_the_softened_outputs(estimator, temperature):
    with jax.enable_x64(True):
        ps, fs, pt, ft, x, labels = _nets()
        ref, (jt, js, probs) = _eq2_reference(fs, ps, ft, pt, x, labels, temperature,
                                              estimator)
        s, t = _pass(lambda z: fs(ps, z), x), _pass(lambda z: ft(pt, z), x)
        got = softmax_jacobian_terms(estimator, s, t, x, labels, None, soft_match=True,
                                     temperature=temperature)
        assert set(got) == {"kd_jac"}
        np.testing.assert_allclose(got["kd_jac"], ref, rtol=1e-10, atol=1e-14)
        if estimator == "full":  # the probability form of losses (eq. 2 as written)
            np.testing.assert_allclose(
                temperature**2 * losses.ce_noise_cross_term(jt, js, probs), ref, rtol=1e-10)
        o = Objective(ce=0, kd=1, kd_jac=1, estimator=estimator, temperature=temperature)
        terms = _terms(o, fs, ps, ft, pt, x, labels)
        assert set(terms) == {"kd", "kd_jac"}
        np.testing.assert_allclose(terms["kd_jac"], jnp.mean(ref), rtol=1e-10)


@pytest.mark.parametrize("estimator", ["full", "label"])
def test_kd_jac_gradient_matches_jacrev_reference(estimator):
    """The double backprop through the softmax derivatives and the pullbacks: the gradient
    of the engine's term in the student's parameters equals ``jax.grad`` of the
    ``jax.jacrev`` reference."""
    temperature = 2.0
    with jax.enable_x64(True):
        ps, fs, pt, ft, x, labels = _nets(3)
        o = Objective(ce=0, kd_jac=1, estimator=estimator, temperature=temperature)
        _, t_fn = _fns(fs, None, ft, pt)

        def engine(p):
            return compose_losses(o, lambda z: ((fs(p, z), {}), None), t_fn, x, labels,
                                  jax.random.key(0))[0]

        def reference(p):
            return jnp.mean(_eq2_reference(fs, p, ft, pt, x, labels, temperature,
                                           estimator)[0])

        g, g_ref = jax.grad(engine)(ps), jax.grad(reference)(ps)
        for k in g:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("estimator", ["random", "rademacher", "sphere", "jvp"])
def test_kd_jac_probe_estimators_are_unbiased_for_the_full_sum(estimator):
    n = 3000
    with jax.enable_x64(True):
        ps, fs, pt, ft, x, labels = _nets(5)
        s, t = _pass(lambda z: fs(ps, z), x), _pass(lambda z: ft(pt, z), x)
        full = softmax_jacobian_terms("full", s, t, x, labels, None, soft_match=True,
                                      temperature=2.0)["kd_jac"]
        draws = jax.jit(jax.vmap(lambda k: softmax_jacobian_terms(
            estimator, s, t, x, labels, k, soft_match=True,
            temperature=2.0)["kd_jac"]))(jax.random.split(jax.random.key(1), n))
        mean, se = jnp.mean(draws, 0), jnp.std(draws, 0) / np.sqrt(n)
        assert np.all(np.abs(mean - full) < 5 * se + 1e-12), (mean, full, se)
        assert np.all(se > 0)  # a real estimator, not the full sum again


def test_kd_jac_is_unbounded_below():
    """Not a distance: a student whose logits are ``c`` times the teacher's has
    ``kd_jac -> -c · Var_T(∇_x t)`` as ``c`` grows (``∇ log S_s^i -> c (∇t^i - ∇t^top)``,
    ``Σ_i ∇T_s^i = 0``), without bound."""
    with jax.enable_x64(True):
        ps, fs, pt, ft, x, labels = _nets()
        o = Objective(ce=0, kd_jac=1, estimator="full", temperature=1.0)
        vals = [float(_terms(o, lambda p, z, c=c: c * ft(p, z), pt, ft, pt, x,
                             labels)["kd_jac"]) for c in (1.0, 100.0, 1000.0)]
        assert 0 > vals[0] > vals[1] > vals[2], vals
        np.testing.assert_allclose(vals[2] / vals[1], 10.0, rtol=0.05)


# ---------------------------------------------------------------------------------------
# jac_norm_form: "logit" unchanged, "softmax" = eq. 3 = ‖∇ log softmax_y‖².


def _log_softmax_rows(fs, ps, x, rows):
    jl = jax.vmap(jax.jacrev(lambda xb: jax.nn.log_softmax(fs(ps, xb[None])[0])))(x)
    return jnp.sum(jl[jnp.arange(B), rows] ** 2, -1), jl


@pytest.mark.parametrize("estimator", ["label", "full", "top"])
def test_softmax_form_is_eq3_against_jacrev(estimator):
    with jax.enable_x64(True):
        ps, fs, pt, ft, x, labels = _nets(7)
        top_s, top_t = jnp.argmax(fs(ps, x), -1), jnp.argmax(ft(pt, x), -1)
        rows = top_s if estimator == "top" else labels
        ref, jl = _log_softmax_rows(fs, ps, x, rows)
        o = Objective(ce=1, jac_norm=1, jac_norm_form="softmax", estimator=estimator)
        np.testing.assert_allclose(_terms(o, fs, ps, ft, pt, x, labels)["jac_norm"],
                                   jnp.mean(ref), rtol=1e-10)
        # eq. 3 in its probability form (jkt.losses.ce_noise_penalty), one-hot labels
        probs = jax.nn.softmax(fs(ps, x))
        prob_jac = probs[:, :, None] * jl
        if estimator != "top":
            np.testing.assert_allclose(
                losses.ce_noise_penalty(prob_jac, probs, jax.nn.one_hot(labels, K)), ref,
                rtol=1e-10)
        # With a teacher in the objective, ``top`` is the teacher's arg-max output.
        s, t = _pass(lambda z: fs(ps, z), x), _pass(lambda z: ft(pt, z), x)
        with_teacher = softmax_jacobian_terms(estimator, s, t, x, labels, None,
                                              norm=True)["jac_norm"]
        want = _log_softmax_rows(fs, ps, x, top_t if estimator == "top" else labels)[0]
        np.testing.assert_allclose(with_teacher, want, rtol=1e-10)


def test_logit_form_is_the_penalty_of_before_bit_for_bit():
    """``jac_norm_form="logit"`` (the default) is ``‖∇_x logit_y‖²`` from the public
    ``jkt.jacobian`` functions, bit for bit (float32), and unused new options change
    neither its numbers nor the train step's program."""
    ps, fs, pt, ft, x, labels = _nets(dtype=jnp.float32)
    o = Objective(ce=1, jac_norm=1)
    assert o.jac_norm_form == "logit"
    got = _terms(o, fs, ps, ft, pt, x, labels)["jac_norm"]
    v = jj.select_cotangent(fs(ps, x), "label", labels=labels)
    want = jnp.mean(losses.jacobian_norm(jj.vjp_input(lambda z: fs(ps, z), x, v)[1]))
    np.testing.assert_array_equal(got, want)
    other = Objective(ce=1, jac_norm=1, temperature=2.0, noise_sigma=0.5, noise_draws=3)
    np.testing.assert_array_equal(_terms(other, fs, ps, ft, pt, x, labels)["jac_norm"], want)


def test_unused_options_leave_the_step_program_unchanged():
    """A paper method's step takes the six-column weight matrix and is the same program
    whatever the (unused) new options: the new terms add nothing to it."""
    from train_fixtures import ADAM, IMAGE_SHAPE, MEAN, STD, tiny

    from jkt import models

    model = tiny()
    state = jax.eval_shape(lambda: make_init(model, ADAM, IMAGE_SHAPE)(
        jax.random.key(0), jax.random.key(1), None))
    batch = {"image": jax.ShapeDtypeStruct((4, *IMAGE_SHAPE), jnp.uint8),
             "label": jax.ShapeDtypeStruct((4,), jnp.int32)}
    t_vars = models.abstract_variables(tiny(), IMAGE_SHAPE)

    def program(objective):
        step = make_train_step(model, [objective], ADAM, mean=MEAN, std=STD, augment=False,
                               teacher_model=tiny())
        w = fused.weight_matrix([objective])
        assert w.shape == (1, len(PAPER_TERMS))
        return jax.jit(step).lower(state, batch, t_vars, np.float32(1e-3), w).as_text()

    base = methods.METHODS["ce+act+jac"]
    other = Objective(ce=1, act=1, jac=1, temperature=9.0, noise_sigma=0.3, noise_draws=2)
    assert program(base) == program(other)


# ---------------------------------------------------------------------------------------
# Configuration: validation, teacher, fusion, memory, records, methods.


@pytest.mark.parametrize("kwargs, words", [
    (dict(kd=-1.0), "kd=-1.0"),
    (dict(kd_jac=float("nan")), "kd_jac=nan"),
    (dict(act_noise=float("inf")), "act_noise=inf"),
    (dict(ce_noise=True), "ce_noise=True"),
    (dict(temperature=0.0), "temperature must be positive"),
    (dict(temperature=float("inf")), "temperature must be positive"),
    (dict(jac_norm_form="prob"), "unknown jac_norm_form 'prob'"),
    (dict(jac_norm=1, jac_norm_form="softmax", estimator="random"), "not 'random'"),
    (dict(jac_norm=1, jac_norm_form="softmax", estimator="jvp"), "not 'jvp'"),
    (dict(noise_sigma=-0.1), "noise_sigma must be non-negative"),
    (dict(noise_draws=0), "noise_draws must be positive"),
    (dict(noise_draws=1.5), "noise_draws must be a positive integer"),
    (dict(ce=0), "every loss weight is zero"),
])
def test_new_fields_are_validated_in_one_line(kwargs, words):
    with pytest.raises(ValueError) as e:
        Objective(**kwargs)
    assert words in one_line(e)


def test_the_softmax_norm_refuses_probe_estimators_in_one_line():
    with jax.enable_x64(True):
        ps, fs, pt, ft, x, labels = _nets()
        s = _pass(lambda z: fs(ps, z), x)
        with pytest.raises(ValueError) as e:
            softmax_jacobian_terms("sphere", s, None, x, labels, jax.random.key(0), norm=True)
    assert "not 'sphere'" in one_line(e)


def test_valid_corner_values_are_accepted():
    Objective(ce=0, act_noise=1, noise_sigma=0.0, noise_draws=1)
    Objective(ce=0, ce_noise=2)
    Objective(ce=1, jac_norm=1, jac_norm_form="softmax", estimator="full")
    Objective(ce=1, jac_norm_form="softmax", estimator="random")  # form unused: jac_norm 0


def test_teacher_passes_fusion_and_weight_columns():
    m = methods.METHODS
    assert TERMS == PAPER_TERMS + ADDED_TERMS
    for name in ("kd", "ce+kd", "ce+kd+jac", "kd+jac", "ce+act_noise", "act_noise"):
        assert m[name].needs_teacher, name
    assert not Objective(ce=1, ce_noise=1).needs_teacher
    assert fused.passes(m["ce+act"]) == fused.passes(m["kd"]) == (True, False, False, 0)
    assert fused.passes(m["ce+kd+jac"]) == (True, False, True, 0)
    assert fused.passes(m["act_noise"]) == (True, False, False, 1)
    assert fused.passes(Objective(ce=1, jac_norm=1, jac_norm_form="softmax")) == (
        False, False, True, 0)
    names = list(m)
    groups = [[names[i] for i in g] for g in fused.fusion_groups(list(m.values()))]
    assert groups == [["ce"], ["ce+act", "act", "kd", "ce+kd"],
                      ["ce+jac", "ce+act+jac", "act+jac"], ["ce+kd+jac", "kd+jac"],
                      ["ce+act_noise", "act_noise"]]
    # Weight columns: the paper's six, then the later terms some run weights.
    assert fused.weight_terms([m[n] for n in methods.TABLE1_METHODS]) == PAPER_TERMS
    runs = [m["ce+act"], m["kd"], m["ce+kd"]]
    assert fused.weight_terms(runs) == (*PAPER_TERMS, "kd")
    np.testing.assert_array_equal(fused.weight_matrix(runs)[:, [0, 1, 6]],
                                  [[1, 1, 0], [0, 0, 1], [1, 0, 1]])
    union = fused.union_objective([m["ce+kd+jac"], m["kd+jac"]])
    assert (union.ce, union.kd, union.kd_jac, union.temperature) == (1, 1, 1, 4.0)
    with pytest.raises(ValueError, match="must share \\['temperature'\\]"):
        fused.union_objective([m["kd"], methods.method_objective("ce+kd", temperature=2.0)])
    with pytest.raises(ValueError, match="must share \\['noise_draws'\\]"):
        fused.union_objective([m["act_noise"],
                               methods.method_objective("ce+act_noise", noise_draws=2)])


def test_memory_factors_count_the_new_passes():
    ce, jac = memory.CE_FACTOR, memory.JACOBIAN_FACTOR
    m = methods.METHODS
    assert memory.student_factor(m["kd"], K) == ce
    assert memory.student_factor(m["ce+kd+jac"], K) == jac
    assert memory.student_factor(methods.method_objective("kd+jac", estimator="full"),
                                 K) == ce * (1 + K)
    assert memory.student_factor(Objective(jac=1, kd_jac=1), K) == jac + ce
    assert memory.student_factor(Objective(jac_norm=1, jac_norm_form="softmax",
                                           estimator="full"), K) == jac
    assert memory.student_factor(m["ce+act_noise"], K) == 2 * ce
    assert memory.student_factor(Objective(act_noise=1, noise_draws=4), K) == 5 * ce
    assert memory.teacher_factor([m["kd"]], K) == 1
    assert memory.teacher_factor([m["ce+kd+jac"]], K) == 2
    assert memory.teacher_factor([m["ce+act+jac"], m["ce+kd+jac"]], K) == 3
    assert memory.teacher_factor([Objective(act_noise=1, noise_draws=3)], K) == 4
    assert memory.teacher_factor([Objective(ce_noise=1)], K) == 0
    # The paper's methods: as before.
    assert memory.student_factor(m["ce+act+jac"], K) == jac
    assert memory.teacher_factor([m["ce+act+jac"]], K) == 2


def test_records_written_before_the_new_fields_stay_valid(tmp_path):
    path = tmp_path / "run" / "config.json"
    fresh = {"train": config_lib.to_dict(TrainConfig(objective=methods.METHODS["ce+act"]))}
    old = json.loads(json.dumps(fresh))
    for f in ("kd", "kd_jac", "act_noise", "ce_noise", "temperature", "jac_norm_form",
              "noise_sigma", "noise_draws"):
        assert f"objective.{f}" in workdir.RECORD_ADDED
        del old["train"]["objective"][f]
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    workdir.check_record(path, fresh, what="run r")  # the old record reads as the defaults
    changed = {"train": config_lib.to_dict(TrainConfig(
        objective=methods.method_objective("ce+act", kd=0.5)))}
    with pytest.raises(workdir.SettingsChangedError, match="objective.kd .0.0 -> 0.5."):
        workdir.check_record(path, changed, what="run r")


def test_method_rows_and_labels():
    m = methods.METHODS
    assert methods.TABLE1_METHODS == ("ce", "ce+act", "ce+jac", "ce+act+jac", "act", "act+jac")
    assert methods.CLAIM_METHODS == ("kd", "ce+kd", "ce+kd+jac", "kd+jac", "ce+act_noise",
                                     "act_noise")
    assert set(methods.METHOD_LABELS) == set(m)
    assert (m["kd"].ce, m["kd"].kd, m["kd"].temperature) == (0, 1, 4.0)
    assert (m["ce+kd"].ce, m["ce+kd"].kd) == (1, 1)
    o = m["ce+kd+jac"]
    assert (o.ce, o.kd, o.kd_jac, o.estimator, o.jac) == (1, 1, 1, "label", 0)
    assert (m["kd+jac"].ce, m["kd+jac"].kd, m["kd+jac"].kd_jac) == (0, 1, 1)
    o = m["ce+act_noise"]
    assert (o.ce, o.act, o.act_noise, o.noise_sigma, o.noise_draws) == (1, 0, 1, 0.1, 1)
    assert (m["act_noise"].ce, m["act_noise"].act_noise) == (0, 1)
