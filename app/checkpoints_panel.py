"""Roll back: pick a checkpoint, optionally change hyperparameters or skip batches, and continue from it."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import streamlit as st

from .common import reader, report, status, trainer

ss = st.session_state


def _label(c: dict) -> str:
    loss = f" · loss {c['train_loss']:.4g}" if c["train_loss"] is not None else ""
    return f"#{c['id']} · step {c['step']} · branch {c['branch']}{loss}" + (f" · {c['label']}" if c["label"] else "")


def _restore() -> None:
    cid = ss.get("restore_id")
    if cid is None:
        return
    hp = {k: ss[f"restore_{k}"] for k in ("lr", "momentum") if ss.get(f"restore_{k}") is not None}
    report(trainer().restore(int(cid), hparams=hp, skip_batches=int(ss.get("restore_skip") or 0)).wait(60),
           f"Restore #{cid}")


def metrics_csv() -> bytes:
    rows = reader().export_rows(status().branch)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["step"])
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()


def restore_panel() -> None:
    j, run_dir = reader(), Path(status().run.run_dir)
    rows = list(reversed(j.checkpoints()))
    if not rows:
        return
    by_id = {c["id"]: c for c in rows}
    if ss.get("restore_id") not in by_id:
        ss["restore_id"] = rows[0]["id"]
    with st.form("restore_form", border=False, enter_to_submit=False):
        c1, c2 = st.columns([2.2, 1], vertical_alignment="bottom")
        c1.selectbox("Checkpoint", list(by_id), key="restore_id", format_func=lambda i: _label(by_id[i]))
        c2.number_input("Skip next K batches", key="restore_skip", min_value=0, step=1,
                        help="After a loss spike, skip the batches that caused it (the PaLM recipe).")
        a, b, c = st.columns([1.1, 1.1, 1], vertical_alignment="bottom")
        a.number_input("New learning rate", key="restore_lr", value=None, format="%.6g",
                       placeholder="keep the checkpoint's",
                       help="Applied after the checkpoint is loaded; its saved settings never override it.")
        b.number_input("New momentum", key="restore_momentum", value=None, format="%.6g",
                       placeholder="keep the checkpoint's")
        c.form_submit_button("Restore", type="primary", on_click=_restore, width="stretch",
                             help="Load this checkpoint and continue from it; the abandoned path stays visible, "
                                  "faded.")
    c = by_id[ss["restore_id"]]
    path = j.checkpoint_file(c["id"])
    d1, d2 = st.columns(2)
    d1.download_button("Download checkpoint", data=lambda p=path: p.read_bytes(), file_name=path.name,
                       mime="application/octet-stream", key="dl_ckpt", width="stretch", on_click="ignore")
    d2.download_button("Export metrics (CSV)", data=metrics_csv, file_name=f"{run_dir.name}-metrics.csv",
                       mime="text/csv", key="dl_csv", width="stretch", on_click="ignore")
