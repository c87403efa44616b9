"""The run's remote control: Start, Pause, Resume, Stop, the step limit, and Save checkpoint.

Which buttons are enabled comes from the engine's own table of states and commands
(Status.accepts), so a button is live exactly when the engine would accept its command.
"""
from __future__ import annotations

import streamlit as st

from trainer.runlock import owner

from . import runtime
from .common import as_int, report, status, trainer

BUTTONS = ("Start", "Pause", "Resume", "Stop")  # each sends the command of its name, lower-cased


def _send(kind: str) -> None:
    report(trainer().submit(kind.lower()).wait(10), kind)


def _save() -> None:
    label = st.session_state.get("ckpt_label", "").strip() or None
    report(trainer().save_checkpoint(label).wait(30), "Save checkpoint")


def _set_limit() -> None:
    v = st.session_state["max_steps"]
    if v is None:  # an empty field: unchanged
        st.session_state["max_steps"] = float(trainer().status().max_steps)
        return
    report(trainer().set_max_steps(as_int(v)).wait(10), "Step limit")


def control_bar() -> None:
    s = status()
    cols = st.columns([1, 1, 1, 1, 0.2, 1.8, 4], vertical_alignment="bottom")
    for col, name in zip(cols, BUTTONS):
        live = name.lower() in s.accepts
        col.button(name, key=f"btn_{name.lower()}", on_click=_send, args=(name,), disabled=not live,
                   type="primary" if name in ("Start", "Resume") and live else "secondary", width="stretch")
    if "max_steps" not in st.session_state or st.session_state.get("_limit_seen") != s.max_steps:
        st.session_state["max_steps"] = float(s.max_steps)
        st.session_state["_limit_seen"] = s.max_steps
    cols[5].number_input("Stop at step (0 = never)", value=None, min_value=0.0, step=1000.0, format="%g",
                         key="max_steps", on_change=_set_limit)
    with cols[6], st.form("save_form", border=False, enter_to_submit=True):
        a, b = st.columns([1.5, 1], vertical_alignment="bottom")
        a.text_input("Checkpoint label", key="ckpt_label", placeholder="optional, e.g. before lr bump")
        b.form_submit_button("Save checkpoint", on_click=_save, width="stretch", disabled="save" not in s.accepts)


def _resume_detached() -> None:
    with st.spinner("Starting a trainer process…"):
        report(trainer().resume().wait(10), "Resume")


def detached_banner() -> None:
    """A run no process trains: how its last trainer ended, and Resume (a new trainer process)."""
    s = status()
    if s.state == "busy":
        who = owner(s.run.run_dir)
        st.info(f"**{who[0].upper()}{who[1:]}** holds this run but does not serve it: a trainer process "
                "starting or closing, or one training it in-process (a notebook). This page follows it.", icon="⏳")
        return
    ended = runtime.how_it_ended(s.run.run_dir)
    at = f"checkpoint #{s.last_checkpoint}" if s.last_checkpoint is not None else "step 0 (no checkpoint yet)"
    if s.state == "finished":
        msg = f"**The run reached its step limit {s.max_steps:,}.** Raise **Stop at step** and Resume to go on."
    elif ended:
        msg = (f"**{ended[0].upper()}{ended[1:]}.** Nothing listed below is lost: Resume continues from "
               f"{at}, exactly as if training had been there all along.")
    elif s.error:  # e.g. a data-parallel job that lost a rank, closed cleanly by rank 0
        ended, msg = s.error, f"**{s.error}.** Resume continues from {at}, in one process."
    else:
        msg = f"**No trainer process serves this run** (it was stopped). Resume continues from {at}."
    (st.warning if ended else st.info)(msg, icon="⚠️" if ended else "ℹ️")
    if "resume" in s.accepts and not (s.max_steps and s.step >= s.max_steps):
        st.button(f"Resume from {at}", key="btn_resume_detached", type="primary", on_click=_resume_detached)
