"""The examples of README.md and docs/, run as written: the own-loop examples (Linen in the
README, NNX in docs/api.md) and the engine's step (docs/engine.md) each train five steps,
and the Jacobian term each computes equals a ``jax.jacrev`` computation on the same model
and batch."""

import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from penalties_test import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def example(name: str) -> tuple[str, str]:
    """``(file name, code)`` of the fenced python block after ``<!-- example: NAME -->`` in
    README.md or docs/*.md (exactly one)."""
    found = [(path.name, code) for path in DOCS
             for code in re.findall(rf"<!-- example: {name} -->\s*```python\n(.*?)```",
                                    path.read_text(), flags=re.S)]
    assert len(found) == 1, f"README.md and docs/ need exactly one example marked {name!r}"
    return found[0]


def run_example(name: str) -> dict:
    where, code = example(name)
    namespace = {"__name__": f"example_{name}"}
    exec(compile(code, f"{where}:{name}", "exec"), namespace)
    return namespace


def check_training(losses) -> None:
    assert len(losses) == 5 and np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


@pytest.fixture(scope="module")
def linen_example():
    return run_example("linen")


def test_linen_example_trains(linen_example):
    check_training(linen_example["losses"])


@pytest.mark.parametrize("estimator", ["label", "full"])
def test_linen_example_penalty_is_jacrev(linen_example, estimator):
    ns = linen_example
    model, teacher, x, y = ns["model"], ns["teacher"], ns["x"], ns["y"]
    params, batch_stats, teacher_vars = ns["params"], ns["batch_stats"], ns["teacher_vars"]
    variables = {"params": params, "batch_stats": batch_stats}
    chex.assert_shape(x, (8, 32, 32, 3))

    # The example's own loss_fn (estimator "label"), and "full" through the same objects.
    loss, pen = ns["loss_fn"](params, batch_stats, teacher_vars, x, y)
    if estimator == "full":
        pen = ns["jkt"].penalties.jacobian_penalties(
            ns["jkt"].penalties.Linen(model, variables, train=True, mutable=["batch_stats"]),
            x, y, teacher=ns["jkt"].penalties.Linen(teacher, teacher_vars), estimator="full")
    student = lambda z: model.apply(variables, z, train=True, mutable=["batch_stats"])[0]
    jac, _ = reference(estimator, student, lambda z: teacher.apply(teacher_vars, z), x, y)
    chex.assert_trees_all_close(pen.terms["jac"], jac, rtol=1e-4)
    chex.assert_trees_all_close(pen.logits, student(x), rtol=1e-5, atol=1e-6)
    assert jnp.isfinite(loss)


def test_nnx_example():
    ns = run_example("nnx")
    check_training(ns["losses"])
    model, teacher, x, y = ns["model"], ns["teacher"], ns["x"], ns["y"]

    graphdef, state = nnx.split(model)  # the reference: jax.jacrev of pure copies
    student = lambda z: nnx.merge(graphdef, state, copy=True)(z)  # training mode
    frozen = nnx.clone(teacher)
    frozen.eval()
    jac, _ = reference("label", student, lambda z: frozen(z), x, y)
    want_logits = student(x)

    copy = nnx.clone(model)
    _, terms = nnx.jit(ns["loss_fn"])(copy, teacher, x, y)  # the example's own loss_fn
    chex.assert_trees_all_close(terms["jac"], jac, rtol=1e-4)
    once = nnx.clone(model)
    logits = once(x)  # one training-mode pass moves the statistics as loss_fn did
    chex.assert_trees_all_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(nnx.to_pure_dict(nnx.state(copy, nnx.BatchStat)),
                                nnx.to_pure_dict(nnx.state(once, nnx.BatchStat)), rtol=1e-5)


@pytest.mark.slow
def test_engine_example():
    """The engine's own step: trains, and its first step's ``jac`` (true-label rows) and
    ``act`` terms equal ``jax.jacrev`` / direct computations on the same networks."""
    from jkt import losses
    from jkt.data import transforms

    ns = run_example("engine")
    check_training(ns["losses"])
    student, teacher, mesh = ns["student"], ns["teacher"], ns["mesh"]
    state = ns["create_train_state"](student, ns["adam"], jax.random.key(0), (32, 32, 3), mesh)
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    _, metrics = ns["step"](state, ns["batch"], ns["teacher_vars"], ns["rate"], ns["weights"])
    x = transforms.normalize(ns["images"], ns["mean"], ns["std"])
    y = jnp.asarray(ns["labels"])
    s_fn = lambda z: student.apply(variables, z, train=True, mutable=["batch_stats"])[0]
    t_fn = lambda z: teacher.apply(ns["teacher_vars"], z, train=False)
    jac, act = jax.jit(lambda x: (reference("label", s_fn, t_fn, x, y)[0], jnp.mean(
        losses.match_activations(s_fn(x), t_fn(x)))))(x)
    chex.assert_trees_all_close(metrics["jac"][0], jac, rtol=1e-4)
    chex.assert_trees_all_close(metrics["act"][0], act, rtol=1e-4)
