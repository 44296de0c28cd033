"""Table 2: robustness to Gaussian input noise of Jacobian-norm-penalised networks.

One network per model row — the Jacobian-norm penalty of prop. 2 at each λ, an ℓ2
weight-decay baseline and a dropout baseline — each evaluated on the test split with
Gaussian noise of std σ added to the *normalised* images (several draws, mean ± std),
with its mean input-gradient norm ‖∇_x S^y(x)‖ on clean test data. Resumable: trained
models and finished noise evaluations are read back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jkt import config as config_lib
from jkt import data, jacobian, parallel, paths
from jkt.data import transforms
from jkt.data.fingerprint import dataset_fingerprint
from jkt.data.stream import options_of
from jkt.data.types import DataConfig
from jkt.grids import record
from jkt.grids.validate import check_model, check_non_negative, check_steps, start
from jkt.ranges import MAX_SEED, check_int, check_number
from jkt.report import robustness as report
from jkt.train import (
    NonFiniteLossError,
    Objective,
    StepCache,
    TrainConfig,
    evaluate,
    final_variables,
    train_and_evaluate,
)
from jkt.train.objective import ESTIMATORS, JAC_NORM_FORMS
from jkt.train.optim import CIFAR_RECIPE, OptimConfig
from jkt.workdir import is_writer

NOISE_FILE = "noise_eval.json"


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
    """Jacobian-norm penalties vs ℓ2 and dropout under Gaussian input noise.

    Attributes:
      workdir: where everything is written (and resumed from).
      data: the dataset.
      model: architecture (VGG-9 in the paper); ``model_options`` its options.
      lambdas: Jacobian-norm strengths λ (prop. 2); 0 is plain cross-entropy.
      weight_decay: ℓ2 baseline strength γ (0 skips the baseline).
      dropout: dropout baseline rate p (0 skips the baseline).
      sigmas: noise std on the normalised test images.
      noise_draws: noise draws per σ (mean ± std reported).
      estimator: Jacobian estimator of the penalty (``label`` default; ``full``,
        ``random``, ``rademacher``, ``jvp`` selectable).
      jac_norm_form: what the λ rows penalise: ``"logit"`` (default, the paper presets
        too: ``λ‖∇_x logit_y‖²``, prop. 2's squared-error form on the true-label output)
        or ``"softmax"`` (eq. 3's cross-entropy form, ``λ‖∇_x log softmax_y‖²`` for one-hot
        labels); see docs/reproduction.md.
      optim, max_steps, seed: training schedule.
      checkpoint_every / log_every: steps between a run's checkpoints / metric lines.
      progress: show progress bars.
      compare_to_paper: results.md shows the paper's Table 2 beside ours (the paper
        preset); otherwise the run is reported as an analogue.
    """

    workdir: str = "runs/robustness"
    data: DataConfig = DataConfig()
    model: str = "vgg9"
    model_options: dict = dataclasses.field(default_factory=dict)
    lambdas: tuple[float, ...] = (0.0, 0.1, 1.0, 10.0)
    weight_decay: float = 1e-3
    dropout: float = 0.25
    sigmas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
    noise_draws: int = 5
    estimator: str = "label"
    jac_norm_form: str = "logit"
    optim: OptimConfig = CIFAR_RECIPE
    max_steps: int | None = None
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    progress: bool = True
    compare_to_paper: bool = False

    def __post_init__(self):
        check_model(self.model, self.model_options, "model")
        check_non_negative("lambdas", self.lambdas)
        check_non_negative("sigmas", self.sigmas)
        if type(self.noise_draws) is not int or self.noise_draws < 1:
            raise ValueError(f"noise_draws must be >= 1 (an integer), got {self.noise_draws!r}")
        check_number("weight_decay", self.weight_decay, 0)
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float)
                or not 0 <= self.dropout < 1):  # NaN and infinities fail too
            raise ValueError(f"dropout out of range [0, 1): {self.dropout!r}")
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; valid: "
                             f"{', '.join(ESTIMATORS)}")
        if self.jac_norm_form not in JAC_NORM_FORMS:
            raise ValueError(f"unknown jac_norm_form {self.jac_norm_form!r}; valid: "
                             f"{', '.join(JAC_NORM_FORMS)}")
        check_steps(self, ("max_steps", "checkpoint_every", "log_every"))


@dataclasses.dataclass(frozen=True)
class ModelRow:
    """One row of Table 2: a name, its label, and how it is trained."""

    name: str
    label: str
    objective: Objective
    model_options: dict
    weight_decay: float = 0.0


def model_rows(p: RobustnessConfig) -> list[ModelRow]:
    """λ rows, then the ℓ2 and dropout baselines (each skipped at strength 0)."""
    rows = []
    for lam in p.lambdas:
        obj = Objective(ce=1.0, jac_norm=lam, estimator=p.estimator,
                        **({"jac_norm_form": p.jac_norm_form} if lam else {}))
        rows.append(ModelRow(f"lambda={lam:g}", f"λ = {lam:g}", obj, dict(p.model_options)))
    if p.weight_decay:
        label = f"ℓ2 regularization (γ = {p.weight_decay:g})"
        rows.append(ModelRow(f"l2={p.weight_decay:g}", label, Objective(ce=1.0),
                             dict(p.model_options), p.weight_decay))
    if p.dropout:
        rows.append(ModelRow(f"dropout={p.dropout:g}", f"Dropout (p = {p.dropout:g})",
                             Objective(ce=1.0), {**p.model_options, "dropout": p.dropout}))
    return rows


def make_grad_norm_fn(model, mean, std):
    """``(variables, batch) -> Σ_b ‖∇_x S^{y_b}(x_b)‖`` over unmasked examples (inference
    mode, true-label output, inputs normalised)."""

    def fn(variables, batch):
        x = transforms.normalize(batch["image"], mean, std)
        f = lambda z: model.apply(variables, z, train=False)  # noqa: E731
        v = jacobian.select_cotangent(f(x), "label", labels=batch["label"])
        _, g = jacobian.vjp_input(f, x, v)
        norms = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, -1))
        return jnp.sum(jnp.where(batch["mask"], norms, 0.0))

    return jax.jit(fn)


def noise_evaluation(model, variables, ds, p: RobustnessConfig, mesh, batch_size: int, *,
                     steps: StepCache | None = None) -> dict:
    """Accuracy at every σ (mean and std over draws) and the mean clean gradient norm.
    ``steps``: shares the jitted evaluation and gradient-norm functions between the rows of
    one model (``None``: fresh ones)."""
    cache = StepCache() if steps is None else steps
    eval_fn = cache.eval_step(model, mean=ds.mean, std=ds.std)
    out = {"sigmas": {}}
    for sigma in p.sigmas:
        draws = 1 if sigma == 0 else p.noise_draws
        accs = [evaluate(eval_fn, variables, ds.test, mesh, batch_size, sigma=float(sigma),
                         key=jax.random.key(1000 + d)) for d in range(draws)]
        out["sigmas"][f"{sigma:g}"] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                       "draws": accs}
    grad_fn = cache.get(("grad_norm", model, tuple(ds.mean), tuple(ds.std)),
                        lambda: make_grad_norm_fn(model, ds.mean, ds.std))
    total = sum(float(grad_fn(variables, b))
                for b in data.eval_batches(ds.test, batch_size, mesh))
    out["grad_norm"] = total / len(ds.test)
    return out


def train_config(p: RobustnessConfig, spec: ModelRow) -> TrainConfig:
    return TrainConfig(model=p.model, model_options=spec.model_options, objective=spec.objective,
                       optim=dataclasses.replace(p.optim, weight_decay=spec.weight_decay),
                       seed=p.seed, max_steps=p.max_steps, log_every=p.log_every,
                       checkpoint_every=p.checkpoint_every, progress=p.progress,
                       augment=p.data.augment)


def run(p: RobustnessConfig, *, mesh=None, stop=None) -> list[dict]:
    """Trains and evaluates every model row (resumable); writes the outputs; returns rows.
    ``stop``: polled after every training step (see :func:`jkt.train.train_and_evaluate`)."""
    mesh, workdir, ds = start(p, mesh)
    print(f"{ds.summary()}, {parallel.process_count_str(mesh)}")
    specs = model_rows(p)
    # Rows of one model share their compiled steps: the λ rows one train step (weights
    # are step arguments), every row the eval step, init and noise evaluation.
    steps = StepCache()
    inputs = {"data": dataset_fingerprint(ds)}
    record.check_runs((workdir / "runs" / spec.name,
                       {"train": config_lib.to_dict(train_config(p, spec)),
                        "data": config_lib.to_dict(p.data), record.INPUTS: inputs},
                       f"model {spec.name}", spec.objective) for spec in specs)
    rows = []
    bar = tqdm(total=len(specs), desc="models", position=0, dynamic_ncols=True,
               disable=not p.progress)
    try:
        for spec in specs:
            bar.set_description(f"models [{spec.name}]")
            cfg = train_config(p, spec)
            run_dir = workdir / "runs" / spec.name
            try:
                res, = train_and_evaluate([cfg], ds.train, {"val": ds.val, "test": ds.test},
                                          num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                                          workdirs=[run_dir], mesh=mesh, descs=[spec.name],
                                          steps=steps, stop=stop,
                                          stream_options=options_of(p.data))
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"model {spec.name}: {e}") from e
            noise = noise_result(p, cfg, ds, run_dir, mesh, steps=steps)
            rows += [{"model": spec.name, "sigma": float(sigma), "accuracy": acc["mean"],
                      "accuracy_std": acc["std"], "draws": len(acc["draws"]),
                      "clean_val_accuracy": res.accuracy.get("val"),
                      "grad_norm": noise["grad_norm"],
                      **{f"final_{k}": v for k, v in res.final_metrics.items()},
                      "steps": res.steps} for sigma, acc in noise["sigmas"].items()]
            if is_writer():
                report.write(rows, specs, p, workdir)
            bar.update(1)
    finally:
        bar.close()
    return rows


def noise_result(p: RobustnessConfig, cfg: TrainConfig, ds, run_dir: Path, mesh, *,
                 steps: StepCache | None = None) -> dict:
    """The run's stored ``noise_eval.json``, or a fresh :func:`noise_evaluation` saved there."""
    path = run_dir / NOISE_FILE
    if path.exists():
        return json.loads(path.read_text())
    model, variables = final_variables(run_dir, cfg, ds.num_classes, ds.image_shape, mesh=mesh)
    noise = noise_evaluation(model, variables, ds, p, mesh, cfg.eval_batch_size, steps=steps)
    if is_writer():
        paths.write_text(path, json.dumps(noise, indent=1))
    return noise


__all__ = ["ModelRow", "RobustnessConfig", "make_grad_norm_fn", "model_rows",
           "noise_evaluation", "run"]
