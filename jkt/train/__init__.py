"""Training engine: the loss composer, named methods, the train step, the loop, teachers.

The call path of a grid's run: :func:`jkt.train.loop.train_and_evaluate` (the loop) ->
``train_step`` of :func:`jkt.train.step.make_train_step` (the step) ->
:func:`jkt.train.objective.compose_losses` (the objective) ->
:func:`jkt.penalties.jacobian_terms` (the Jacobian terms).
"""

from jkt.train.fused import FUSION_MODES, fusion_groups, pack_states
from jkt.train.loop import (
    TrainConfig,
    evaluate,
    final_variables,
    total_steps,
    train_and_evaluate,
)
from jkt.train.methods import (
    JACOBIAN_ROWS,
    METHOD_LABELS,
    METHODS,
    TABLE1_METHODS,
    TRANSFER_LABELS,
    TRANSFER_METHODS,
    method_objective,
    transfer_objective,
)
from jkt.train.metrics import NonFiniteLossError
from jkt.train.objective import ESTIMATORS, Objective, compose_losses
from jkt.train.optim import (
    CIFAR_RECIPE,
    MIT_RECIPE,
    RECIPES,
    OptimConfig,
    Optimizer,
    learning_rate_schedule,
    learning_rates,
    make_optimizer,
)
from jkt.train.results import RunResult
from jkt.train.state import TrainState, create_train_state
from jkt.train.step import StepCache, make_eval_step, make_train_step

__all__ = [
    "CIFAR_RECIPE", "ESTIMATORS", "FUSION_MODES", "JACOBIAN_ROWS", "METHODS", "METHOD_LABELS",
    "MIT_RECIPE", "NonFiniteLossError", "Objective", "OptimConfig", "Optimizer", "RECIPES",
    "RunResult", "StepCache", "TABLE1_METHODS", "TRANSFER_LABELS", "TRANSFER_METHODS",
    "TrainConfig", "TrainState", "compose_losses", "create_train_state", "evaluate",
    "final_variables", "fusion_groups", "learning_rate_schedule", "learning_rates",
    "make_eval_step", "make_optimizer", "make_train_step", "method_objective", "pack_states",
    "total_steps", "train_and_evaluate", "transfer_objective",
]
