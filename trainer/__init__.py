"""Panda's engine: one model trained in a background thread, live hyperparameters, exact checkpoints."""
from .commands import ACCEPTS, Command, Result
from .config import ConfigError, RunConfig
from .engine import THREAD_NAME, Diverged, RunExistsError, Trainer
from .hparams import HParamError, HParams
from .journal import Journal, JournalError, Reader
from .runlock import RunLockedError
from .snapshot import CheckpointError
from .status import Status
from .tasks import Task, TaskError, load_task

__all__ = ["ACCEPTS", "Command", "Result", "ConfigError", "RunConfig", "THREAD_NAME", "Diverged", "RunExistsError",
           "Trainer", "HParamError", "HParams", "Journal", "JournalError", "Reader", "RunLockedError",
           "CheckpointError", "Status", "Task", "TaskError", "load_task"]
