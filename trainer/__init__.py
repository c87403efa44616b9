"""Panda's engine: one model trained in a background thread, live hyperparameters, exact checkpoints."""
from .commands import Command, Result
from .config import ConfigError, RunConfig
from .engine import THREAD_NAME, Diverged, RunExistsError, Trainer
from .hparams import HParamError, HParams
from .journal import Journal
from .state import CheckpointError
from .tasks import Task, TaskError, load_task

__all__ = ["Command", "Result", "ConfigError", "RunConfig", "THREAD_NAME", "Diverged", "RunExistsError",
           "Trainer", "HParamError", "HParams", "Journal", "CheckpointError", "Task", "TaskError", "load_task"]
