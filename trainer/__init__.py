"""Panda's engine: one model trained in a background thread, live hyperparameters, exact checkpoints."""
import importlib

# Names are imported on first use (PEP 562), so `python -m trainer ctl` and trainer.client start
# without importing torch.
_FROM = {"ACCEPTS": "commands", "Command": "commands", "Result": "commands", "ConfigError": "config",
         "RunConfig": "config", "THREAD_NAME": "engine", "Diverged": "engine", "RunExistsError": "engine",
         "Trainer": "engine", "HParamError": "hparams", "HParams": "hparams", "Journal": "journal",
         "JournalError": "journal", "Reader": "journal", "RunLockedError": "runlock",
         "CheckpointError": "snapshot", "Status": "status", "Task": "tasks", "TaskError": "tasks",
         "load_task": "tasks", "RunClient": "client", "NoTrainerError": "client"}
__all__ = list(_FROM)


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
    globals()[name] = value
    return value
