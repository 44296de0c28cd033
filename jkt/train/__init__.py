"""Training engine: loss composer, pure train/eval steps, jitted data-parallel loop."""

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
from jkt.train.objective import (
    ESTIMATORS,
    METHOD_LABELS,
    METHODS,
    TABLE1_METHODS,
    Objective,
    compose_losses,
    method_objective,
)
from jkt.train.optim import CIFAR_RECIPE, MIT_RECIPE, RECIPES, OptimConfig, make_optimizer
from jkt.train.state import TrainState, create_train_state
from jkt.train.step import make_eval_step, make_train_step

__all__ = [
    "CIFAR_RECIPE", "ESTIMATORS", "METHODS", "METHOD_LABELS", "MIT_RECIPE", "RECIPES",
    "NonFiniteLossError", "Objective", "OptimConfig", "RunResult", "TABLE1_METHODS",
    "TrainConfig", "TrainState", "compose_losses", "create_train_state", "evaluate",
    "final_variables", "make_eval_step", "make_optimizer", "make_train_step",
    "method_objective", "total_steps", "train_and_evaluate", "train_and_evaluate_fused",
    "FUSION_MODES", "fusion_groups", "make_fused_train_step",
]
