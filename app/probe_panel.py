"""Probe: a little caviar for the panda. A few short side runs from the live state, lr (and momentum)
sampled on a log scale, ranked; Adopt the winner as a normal change, or Refine around it (coarse to
fine). And the LR range test. The side runs are drawn on the loss chart as a fan from their fork.

The trainer does the work (trainer/probe.py, Trainer._probe_tick): this tab sends the commands and
reads the result from the journal's "probe" and "lr_find" events.
"""
from __future__ import annotations

import math

import streamlit as st

from trainer import probe

from . import figures
from .common import fmt, reader, report, status, trainer
from .hparams_panel import changed_here

ss = st.session_state


def probe_panel() -> None:
    s = status()
    if s.state == "probing" and s.probe:
        _progress(s.probe)
    left, right = st.columns([1.25, 1], gap="large")
    with left:
        st.markdown("**Probe** · side runs from this state, then back here exactly")
        _probe_form(s)
        _probe_result()
    with right:
        st.markdown("**LR range test** · lr from tiny to huge, until the loss blows up")
        _lr_find_form(s)
        _lr_find_result()


def _progress(p) -> None:
    what = "Probe" if p["kind"] == "probe" else "LR range test"
    eta = f" · about {p['eta_s']:.0f} s left" if p["eta_s"] is not None else ""
    run = f"side run {p['index'] + 1} of {p['samples']}, " if p["kind"] == "probe" else ""
    a, b = st.columns([5, 1], vertical_alignment="bottom")
    a.progress(min(1.0, p["progress"]), text=f"{what} from step {p['start_step']:,}: {run}step {p['step']} of "
                                             f"{p['steps']}{eta}. Training waits, and goes on exactly as it was.")
    b.button("Cancel", key="btn_probe_cancel", on_click=_cancel, width="stretch")


def _cancel() -> None:
    report(trainer().cancel().wait(30), "Cancel")


def _probe_form(s) -> None:
    lr = s.hparams.lr
    if ss.get("_probe_lr_seen") != lr:  # the default range follows the live lr: lr / 10 to lr x 10
        ss["_probe_lr_seen"], ss["probe_lo"], ss["probe_hi"] = lr, float(f"{lr / 10:.3g}"), float(f"{lr * 10:.3g}")
    a, b, c, d = st.columns(4)
    a.number_input("Side runs", min_value=1, max_value=probe.MAX_SAMPLES, value=6, step=1, key="probe_k")
    b.number_input("Steps each", min_value=1, max_value=probe.MAX_STEPS, value=200, step=50, key="probe_n")
    c.number_input("lr from", min_value=0.0, format="%.3g", key="probe_lo", help="sampled log-uniformly: lr = 10^r")
    d.number_input("lr to", min_value=0.0, format="%.3g", key="probe_hi")
    e, f, g = st.columns([1.6, 1, 1], vertical_alignment="bottom")
    e.checkbox("Sample momentum too", key="probe_mom", help="momentum (Adam's beta1) = 1 - 10^r, r uniform: "
                                                             "as many samples near 0.999 as near 0.9")
    f.number_input("momentum from", value=0.8, min_value=0.0, max_value=0.999999, format="%.4g", key="probe_mlo",
                   disabled=not ss.get("probe_mom"))
    g.number_input("momentum to", value=0.999, min_value=0.0, max_value=0.999999, format="%.4g", key="probe_mhi",
                   disabled=not ss.get("probe_mom"))
    st.button("Run probe", key="btn_probe", type="primary", on_click=_run_probe, disabled="probe" not in s.accepts,
              help="Random (Latin-hypercube) samples on a log scale, never a grid; each side run starts from "
                   "this state and sees the same batches. Score: mean training loss over its last 20 % of steps.")


def _run_probe(lr_range=None, momentum_range=None) -> None:
    lr_range = lr_range or [ss["probe_lo"], ss["probe_hi"]]
    if momentum_range is None and ss.get("probe_mom"):
        momentum_range = [ss["probe_mlo"], ss["probe_mhi"]]
    r = trainer().probe(samples=int(ss["probe_k"]), steps=int(ss["probe_n"]), lr_range=list(lr_range),
                        momentum_range=list(momentum_range) if momentum_range else None).wait(30)
    report(r, "Probe")


def latest(kind: str) -> dict | None:
    found = reader().events(kinds=(kind,), newest_first=True, limit=1)
    return {**found[0]["data"], "message": found[0]["message"]} if found else None


def _probe_result() -> None:
    d = latest("probe")
    if d is None:
        st.caption("No probe yet. Its side runs appear on the loss chart as a fan from the step it started at.")
        return
    st.caption(d["message"] + (f" · {d['seconds']:.0f} s" if d.get("seconds") else ""))
    if d["error"]:
        st.error(f"The probe stopped: {d['error']}")
    rows = d["results"]
    if not rows:
        return
    st.dataframe([{"rank": i, "lr": r["lr"], "momentum": r.get("momentum"),
                   "score": r["score"], "val loss": r["val_loss"], "diverged": r["diverged"], "branch": r["branch"]}
                  for i, r in enumerate(rows, 1)], hide_index=True, key="probe_table",
                 height=min(300, 38 + 35 * len(rows)),
                 column_config={k: st.column_config.NumberColumn(format="%.4g")
                                for k in ("lr", "momentum", "score", "val loss")})
    ok = [i for i, r in enumerate(rows, 1) if r["score"] is not None]
    if not ok:
        st.warning("Every side run diverged: try a lower lr range.")
        return
    a, b, c = st.columns([1.3, 1, 1], vertical_alignment="bottom")
    pick = a.selectbox("Side run", ok, key="probe_pick", format_func=lambda i: _setting(rows[i - 1], i))
    b.button("Adopt", key="btn_adopt", type="primary", on_click=_adopt, args=(rows[pick - 1],), width="stretch",
             disabled="set_hparams" not in status().accepts,
             help="set the main run's lr (and momentum) to these: a normal, recorded change")
    lr_range, mom_range = probe.refine(tuple(d["lr_range"]), tuple(d["momentum_range"]) if d["momentum_range"] else None,
                                       rows[ok[0] - 1])
    c.button("Refine", key="btn_refine", on_click=_refine, args=(lr_range, mom_range, d), width="stretch",
             disabled="probe" not in status().accepts,
             help=f"coarse to fine: a new probe in lr {lr_range[0]:.3g} to {lr_range[1]:.3g}, a third of the "
                  "range (in decades) around the best")


def _setting(r: dict, rank: int) -> str:
    return f"#{rank}: lr {r['lr']:.3g}" + (f", momentum {r['momentum']:.4g}" if r.get("momentum") is not None else "")


def _adopt(r: dict) -> None:
    changes = {"lr": float(f"{r['lr']:.4g}")}
    if r.get("momentum") is not None:
        changes["momentum"] = float(f"{r['momentum']:.6g}")
    res = trainer().set_hparams(**changes).wait(30)
    if res.ok:
        changed_here()
    report(res, "Adopt " + ", ".join(f"{k} {v:g}" for k, v in changes.items()))


def _refine(lr_range, mom_range, d: dict) -> None:
    ss["probe_k"], ss["probe_n"] = d["samples"], d["steps"]
    _run_probe(lr_range, mom_range)


def _lr_find_form(s) -> None:
    a, b, c = st.columns(3)
    a.number_input("lr from", value=1e-7, min_value=0.0, format="%.3g", key="lrf_lo")
    b.number_input("lr to", value=10.0, min_value=0.0, format="%.3g", key="lrf_hi")
    c.number_input("Steps", value=100, min_value=3, max_value=probe.MAX_STEPS, step=50, key="lrf_n")
    st.button("Run LR range test", key="btn_lr_find", on_click=_run_lr_find, disabled="lr_find" not in s.accepts,
              help="Smith (2015), fastai's lr_find: the lr grows exponentially; it stops once the smoothed loss "
                   "exceeds 4x its minimum, and the run goes on exactly as it was")


def _run_lr_find() -> None:
    r = trainer().lr_find(lo=float(ss["lrf_lo"]), hi=float(ss["lrf_hi"]), steps=int(ss["lrf_n"])).wait(30)
    report(r, "LR range test")


def _lr_find_result() -> None:
    d = latest("lr_find")
    if d is None or not d["results"]:
        st.caption("No range test yet. Best run from the start: on a trained model the loss can only rise.")
        return
    r = d["results"][0]
    rows = reader().query("SELECT lr, loss FROM steps WHERE branch = ? ORDER BY step", (r["branch"],))
    lrs, losses = [x["lr"] for x in rows], [x["loss"] for x in rows]
    st.plotly_chart(figures.lr_find_figure(lrs, losses, probe.centred(losses), r), key="lr_find_chart",
                    config={"displayModeBar": False})
    st.caption(d["message"] + (" · stopped early: the loss passed 4x its minimum" if r.get("stopped_early") else ""))
    a, b = st.columns(2)
    for col, name, what in ((a, "steepest", "steepest"), (b, "min_div10", "min / 10")):
        v = r.get(name)
        col.button(f"lr {fmt(v, '.3g')} ({what})", key=f"btn_use_{name}", on_click=_use_lr, args=(v,),
                   help="set it as the run's lr: a normal, recorded change",
                   disabled=v is None or not math.isfinite(v) or "set_hparams" not in status().accepts,
                   width="stretch")


def _use_lr(lr: float) -> None:
    res = trainer().set_hparams(lr=float(f"{lr:.3g}")).wait(30)
    if res.ok:
        changed_here()
    report(res, f"lr {lr:.3g}")
