"""Recover: back to the last good checkpoint from before an anomaly, with the lr halved and the
batches that led into it skipped (PaLM's recipe), every value pre-filled and editable.

Offered by the error banner when the sentinel paused the run, and in the Anomalies tab for every
anomaly the sentinel recorded and every spike the loss chart marks.
"""
from __future__ import annotations

import streamlit as st

from trainer.sentinel import POLICIES, recovery_plan

from .common import as_int, fmt, reader, report, status, trainer
from .hparams_panel import changed_here

SENTINEL_EVENTS = ("anomaly", "skip_step", "rollback", "error")
ss = st.session_state


def plan_for(start: int) -> dict | None:
    s = status()
    lr_factor = (s.sentinel or {}).get("lr_factor", 0.5)
    return recovery_plan(reader(), s.branch, start, lr_factor, most_skip=max(s.steps_per_epoch, 0) or None)


def _recover(key: str) -> None:
    cid, lr, skip = ss.get(f"{key}_ckpt"), ss.get(f"{key}_lr"), ss.get(f"{key}_skip")
    r = trainer().restore(int(cid), hparams={"lr": float(lr)} if lr else {}, skip_batches=as_int(skip or 0)).wait(60)
    if r.ok:
        changed_here()
    report(r, f"Recover to #{cid}")


def recover_form(start: int, key: str) -> None:
    """The plan for an anomaly that began at `start`, as editable fields and one Recover button."""
    plan = plan_for(start)
    if plan is None:
        st.caption(f"No checkpoint on this path precedes step {start:,}: nothing to recover to.")
        return
    key = f"{key}_{start}"  # a new anomaly gets fresh defaults
    j = reader()
    lineage = j.lineage(status().branch)
    before = [c for c in j.checkpoints() if c["step"] < start and j.on_lineage(c["branch"], c["step"], lineage)]
    ids = [c["id"] for c in sorted(before, key=lambda c: -c["step"])]
    by_id = {c["id"]: c for c in before}
    a, b, c, d = st.columns([2.2, 1, 1, 1], vertical_alignment="bottom")
    # Not labelled "Checkpoint": that is the Restore form's picker, and the two may be on one page.
    a.selectbox("Back to", ids, index=ids.index(plan["checkpoint"]) if plan["checkpoint"] in ids else 0,
                key=f"{key}_ckpt", format_func=lambda i: f"#{i} · step {by_id[i]['step']:,} · train loss "
                                                         f"{fmt(by_id[i]['train_loss'], '.3g')}",
                help="the newest save on this path from before the anomaly began")
    b.number_input("lr", value=plan["lr"], format="%.4g", key=f"{key}_lr",
                   help="the checkpoint's lr x the rollback factor (0.5 by default)")
    c.number_input("Skip batches", value=plan["skip_batches"], min_value=0, step=1, key=f"{key}_skip",
                   help="the batches from the checkpoint up to the anomaly, so they are not seen again")
    d.button("Recover", key=f"{key}_go", type="primary", on_click=_recover, args=(key,), width="stretch",
             disabled="restore" not in status().accepts)


def banner() -> None:
    """The error banner: what happened, and Recover when the sentinel paused on an anomaly."""
    s = status()
    if s.anomaly is None:
        st.error(f"**Training paused on an error.** {s.error}  \nChange a hyperparameter and Resume, or "
                 "restore a checkpoint below and go on.")
        return
    with st.container(border=True):
        st.error(f"**The sentinel paused training.** {s.error}", icon="🛑")
        recover_form(int(s.anomaly.get("start", s.step)), "rec_banner")


def _anomalies() -> list[tuple[int, str]]:
    """(start step, description) of the sentinel's events and the chart's spikes, newest first."""
    out: dict[int, str] = {}
    for e in reader().events(limit=500, kinds=SENTINEL_EVENTS, newest_first=True):
        data = e["data"] or {}
        if e["kind"] == "error" and "kind" not in data:
            continue
        start = int(data.get("start", data.get("step", e["step"])))
        out.setdefault(start, f"step {start:,} · {e['kind'].replace('_', ' ')} · {e['message'][:90]}")
    for step, value in ss.get("_spikes", {}).get(status().run.run_dir, []):
        out.setdefault(int(step), f"step {int(step):,} · chart spike · loss {value:.3g}")
    return sorted(out.items(), reverse=True)


def anomalies_panel() -> None:
    """Every anomaly and spike with Recover; and the sentinel's policy, live."""
    s = status()
    policy = (s.sentinel or {}).get("policy")
    if policy:
        a, b = st.columns([1, 3], vertical_alignment="bottom")
        a.selectbox("Sentinel policy", POLICIES, index=POLICIES.index(policy), key="sentinel_policy",
                    on_change=_set_policy, disabled="set_sentinel" not in s.accepts,
                    help="warn: a marker and an event · pause · skip: drop the update (the default: it loses one "
                         "batch) and roll back what skipping cannot fix · rollback: to the last good checkpoint, "
                         "lr x 0.5")
        b.caption(f"{s.sentinel.get('sigma', 6):g} σ over the last {s.sentinel.get('window', 128)} steps · "
                  f"{s.skipped} updates skipped by this trainer")
    rows = _anomalies()
    if not rows:
        st.caption("No anomalies: the sentinel has seen no spike, NaN or explosion on this run.")
        return
    labels = dict(rows)
    pick = st.selectbox("Recover from", list(labels), format_func=labels.get, key="anomaly_pick")
    recover_form(int(pick), "rec_list")


def _set_policy() -> None:
    report(trainer().set_sentinel(policy=ss["sentinel_policy"]).wait(30), "Sentinel policy")
