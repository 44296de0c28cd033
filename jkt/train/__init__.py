"""Training engine: loss composer, named methods, pure train/eval steps, jitted loop."""

from jkt.train.fused import FUSION_MODES, fusion_groups, make_fused_train_step
from jkt.train.loop import (
    NonFiniteLossError,
    RunResult,
    TrainConfig,
    evaluate,
    final_variables,
    total_steps,
    train_and_evaluate,
    train_and_evaluate_fused,
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
from jkt.train.objective import ESTIMATORS, Objective, compose_losses
from jkt.train.optim import (
    CIFAR_RECIPE,
    MIT_RECIPE,
    RECIPES,
    OptimConfig,
    ScheduledOptimizer,
    make_optimizer,
)
from jkt.train.state import TrainState, create_train_state
from jkt.train.step import make_eval_step, make_train_step
from jkt.train.step_cache import StepCache

__all__ = [
    "CIFAR_RECIPE", "ESTIMATORS", "JACOBIAN_ROWS", "METHODS", "METHOD_LABELS", "MIT_RECIPE",
    "RECIPES",
    "NonFiniteLossError", "Objective", "OptimConfig", "RunResult", "TABLE1_METHODS",
    "TRANSFER_LABELS", "TRANSFER_METHODS", "TrainConfig", "TrainState", "compose_losses",
    "create_train_state", "evaluate", "final_variables", "make_eval_step", "make_optimizer",
    "make_train_step", "method_objective", "total_steps", "train_and_evaluate",
    "train_and_evaluate_fused", "transfer_objective",
    "FUSION_MODES", "fusion_groups", "make_fused_train_step", "ScheduledOptimizer", "StepCache",
]
