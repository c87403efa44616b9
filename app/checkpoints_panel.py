"""Roll back: pick a checkpoint, optionally override hyperparameters or skip batches, and continue from it.

The engine's rule: a restore brings back the checkpoint's hyperparameters, except those overridden
here. The form shows the checkpoint's values beside the override fields, so nothing comes back unseen.
It is drawn by a fragment that refreshes while training, so a checkpoint saved after the page was
drawn can be picked.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import streamlit as st

from trainer import HParams
from trainer.hparams import HParamError, validate

from .common import as_int, follow_live, reader, report, status, trainer
from .hparams_panel import changed_here, check, label

OVERRIDES = ("lr", "momentum", "weight_decay", "batch_size")  # the ones the form offers to override
ss = st.session_state


def _label(c: dict) -> str:
    loss = f" · loss {c['train_loss']:.4g}" if c["train_loss"] is not None else ""
    return f"#{c['id']} · step {c['step']} · branch {c['branch']}{loss}" + (f" · {c['label']}" if c["label"] else "")


def _g(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _saved_hparams(c: dict) -> HParams | None:
    try:
        return validate(HParams(), c["hparams"])
    except HParamError:
        return None  # the engine refuses it too, with its own message


def _restore() -> None:
    cid = ss.get("restore_id")
    rows = [c for c in reader().checkpoints() if c["id"] == cid]
    if not rows:
        ss["restore_errors"] = {"": f"checkpoint #{cid} is no longer there"}
        return
    overrides = {k: ss[f"restore_{k}"] for k in OVERRIDES if ss.get(f"restore_{k}") is not None}
    base = _saved_hparams(rows[0])
    new, errors = check(base, overrides, status().run.n_train) if base is not None else (None, {})
    ss["restore_errors"] = errors
    if errors:
        return
    typed = {k: getattr(new, k) for k in overrides} if new is not None else overrides
    r = trainer().restore(int(cid), hparams=typed, skip_batches=as_int(ss.get("restore_skip") or 0)).wait(60)
    if not r.ok:
        field = r.message.split(":", 1)[0]
        ss["restore_errors"] = {field if field in overrides else "": r.message}
        return
    changed_here()
    for k in OVERRIDES:
        ss[f"restore_{k}"] = None  # an override is for one restore
    ss["restore_skip"] = 0.0
    report(r, f"Restore #{cid}")


def metrics_csv() -> bytes:
    """The lineage's per-step metrics with every evaluation metric the task has (val_mae, ...) beside them."""
    rows = reader().export_rows(status().branch)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["step"])
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()


def restore_panel() -> None:
    j, s = reader(), status()
    rows = list(reversed(j.checkpoints()))
    if not rows:
        return
    by_id = {c["id"]: c for c in rows}
    if ss.get("_pick") in by_id:  # a checkpoint clicked on the strip under the loss chart
        ss["restore_id"] = ss.pop("_pick")
    if ss.get("restore_id") not in by_id:
        ss["restore_id"] = rows[0]["id"]
    st.selectbox("Checkpoint", list(by_id), key="restore_id", format_func=lambda i: _label(by_id[i]))
    c = by_id[ss["restore_id"]]
    saved = c["hparams"]
    errors = ss.get("restore_errors", {})
    with st.form("restore_form", border=False, enter_to_submit=False):
        st.caption("Restoring brings back the checkpoint's hyperparameters: "
                   + ", ".join(f"{label(k).lower()} **{_g(saved[k])}**" for k in OVERRIDES if k in saved)
                   + (f", lr decay **{saved['lr_decay']}**" if saved.get("lr_decay", "none") != "none" else "")
                   + ". Fill a field to override it.")
        cols = st.columns(len(OVERRIDES) + 1, vertical_alignment="top")
        for col, k in zip(cols, OVERRIDES):
            with col:
                st.number_input(label(k), key=f"restore_{k}", value=None, format="%g", step=None,
                                placeholder=f"{_g(saved.get(k, '—'))} (saved)",
                                help=f"Empty: the checkpoint's {_g(saved.get(k, '—'))}. Set: applied after the "
                                     "checkpoint is loaded.")
                if errors.get(k):
                    st.error(errors[k], icon="⚠️")
        with cols[-1]:
            st.number_input("Skip next K batches", key="restore_skip", min_value=0.0, step=1.0, format="%g",
                            help="After a loss spike, skip the batches that caused it (the PaLM recipe).")
        if errors.get(""):
            st.error(errors[""], icon="⚠️")
        st.form_submit_button("Restore", type="primary", on_click=_restore,
                              help="Load this checkpoint and continue from it; the abandoned path stays visible, "
                                   "faded.")
    d1, d2 = st.columns(2)
    try:
        path = j.checkpoint_file(c["id"])
    except Exception as e:  # retired since the list was read, or a row that leaves the run directory
        d1.button("Download checkpoint", key="dl_ckpt", width="stretch", disabled=True, help=str(e))
    else:
        d1.download_button("Download checkpoint", data=lambda p=path: p.read_bytes(), file_name=path.name,
                           mime="application/octet-stream", key="dl_ckpt", width="stretch", on_click="ignore")
    d2.download_button("Export metrics (CSV)", data=metrics_csv, file_name=f"{Path(s.run.run_dir).name}-metrics.csv",
                       mime="text/csv", key="dl_csv", width="stretch", on_click="ignore")
    follow_live(s)
