"""Start a new run or open an existing one from the runs folder."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from trainer import RunConfig
from trainer.config import BUILTIN_TASKS, OPTIMIZERS, PRECISIONS, TASK_HELP, task_config

from . import runtime
from .common import as_int, show_run, status, trainer

ss = st.session_state
CUSTOM = "custom: module:function or file.py:function"


def _new_run() -> None:
    task = ss["new_task"]
    if task == CUSTOM:
        task = (ss.get("new_custom") or "").strip()
    elif task == "spirals" and ss.get("new_classes", 3) != 3:
        task = f"spirals:{ss['new_classes']}"
    hp = {k: as_int(ss[f"new_{k}"]) for k in ("lr", "momentum", "batch_size") if ss.get(f"new_{k}") is not None}
    try:
        name = (ss.get("new_name") or "").strip() or runtime.default_name(task or "run")
        cfg = RunConfig(**{**task_config(task), "task": task, "run_dir": str(runtime.run_dir_for(name)),
                           "optimizer": ss["new_optimizer"], "seed": as_int(ss.get("new_seed") or 0.0),
                           "max_steps": as_int(ss.get("new_max_steps") or 0.0),
                           "precision": ss.get("new_precision") or "fp32", "compile": bool(ss.get("new_compile"))})
        if (Path(cfg.run_dir) / "journal.sqlite").exists():
            raise ValueError(f"a run named {name!r} exists already: open it, or choose another name")
        paused = _pause_current()
        try:
            runtime.create(cfg, hp)
        except Exception:
            if paused:  # the new run failed to start: the old one goes on as before
                trainer().resume().wait(30)
            raise
    except Exception as e:  # a bad plugin or value: say so, keep the current run
        ss["run_error"] = f"{type(e).__name__}: {e}" if not str(e).startswith("task") else str(e)
        return
    ss.pop("run_error", None)
    show_run(cfg.run_dir)
    _forget_run()


def _task_picked() -> None:
    """A task meant for another optimizer (charlm: AdamW) selects it; the user may still change it."""
    ss["new_optimizer"] = task_config(ss["new_task"]).get("optimizer", "sgd")


def _pause_current() -> bool:
    """One model at a time: the run this tab showed pauses (resumable, still served) while another
    starts, so the new trainer process does not compete with it for the CPU."""
    return status().state == "running" and trainer().pause().wait(30).ok


def _forget_run() -> None:
    """This session's memory of the old run's fields: the new run's values fill them."""
    for k in ("_hp_shown", "_limit_seen", "hp_errors", "hp_notes", "restore_errors", "restore_id"):
        ss.pop(k, None)


def _open_run() -> None:
    name = ss.get("open_name")
    if not name:
        return
    try:
        d = runtime.run_dir_for(name)
        if runtime.run_state(d) == "idle":  # resumable: a new trainer process, ready until Start
            runtime.open_ready(d)
    except Exception as e:
        ss["run_error"] = f"{type(e).__name__}: {e}"
        return
    ss.pop("run_error", None)
    show_run(d)
    _forget_run()


STATE_LABELS = {"live": "🟢 live", "idle": "⏸ idle", "finished": "🏁 finished"}


def runs_panel() -> None:
    st.subheader("Runs")
    if ss.get("run_error"):
        st.error(ss["run_error"], icon="⚠️")
    with st.expander("New run", expanded=False):
        st.selectbox("Task", [*BUILTIN_TASKS, CUSTOM], key="new_task", on_change=_task_picked)
        if ss.get("new_task") in TASK_HELP:
            st.caption(TASK_HELP[ss["new_task"]])
        if ss.get("new_task") == CUSTOM:
            st.text_input("Plugin", key="new_custom", placeholder="my_tasks.py:make_task")
        if ss.get("new_task") == "spirals":
            st.slider("Classes", 3, 6, 3, key="new_classes")
        a, b = st.columns(2)
        a.selectbox("Optimizer", OPTIMIZERS, key="new_optimizer")
        b.selectbox("Precision", PRECISIONS, key="new_precision",
                    help="bf16 and fp16 run forward passes under autocast; fp16 adds loss scaling (its scale "
                         "is plotted in Diagnostics and checkpointed)")
        st.checkbox("torch.compile the model", key="new_compile",
                    help="Faster steps on a GPU after a compile of tens of seconds (shown in the live view)")
        a, b = st.columns(2)
        a.number_input("Initial learning rate", key="new_lr", value=None, format="%.6g", placeholder="task default")
        b.number_input("Initial momentum", key="new_momentum", value=None, format="%.4g", placeholder="task default")
        a.number_input("Batch size", key="new_batch_size", value=None, step=1.0, format="%g",
                       placeholder="task default")
        b.number_input("Seed", key="new_seed", value=0.0, step=1.0, format="%g")
        a.number_input("Stop at step", key="new_max_steps", value=0.0, min_value=0.0, step=1000.0, format="%g")
        b.text_input("Name", key="new_name", placeholder="auto")
        st.button("Create run", key="btn_new_run", on_click=_new_run, width="stretch",
                  help="Starts a trainer process for a fresh run, ready to Start. The run shown now is "
                       "paused (not stopped): open it again to go on.")
    with st.expander("Open run", expanded=False):
        st.fragment(run_every=5.0)(_run_list)()  # lists runs started elsewhere (the CLI) unprompted
        # Outside the refreshing fragment, so a click is never lost to one of its reruns.
        st.button("Open", key="btn_open_run", on_click=_open_run, width="stretch",
                  help="Live: attaches to the process that trains it (started here or from the CLI). "
                       "Idle: resumes it from its latest checkpoint in a new trainer process, with its "
                       "whole history. Finished: shows it; raise its step limit and Resume to go on.")


def _run_list() -> None:
    runs = dict(runtime.list_runs())
    if not runs:
        st.caption("No runs yet.")
        return
    root = runtime.runs_root()
    ranks = {n: runtime.world_size(root / n) for n in runs}
    st.selectbox("Run", list(runs), key="open_name",
                 format_func=lambda n: f"{n} · {STATE_LABELS.get(runs.get(n), runs.get(n, '?'))}"
                 + (f" · DDP ×{ranks[n]}" if ranks.get(n, 1) > 1 else ""))
