"""Hyperparameters, edited in the sidebar and sent together with Apply.

The course's advice shapes the inputs: learning rate on a log scale (10^r), momentum on the
1 - beta log scale (beta = 1 - 10^r), each with an exact number field beside it. The fields live
in a form: nothing reaches the server until Apply, so the once-a-second refresh of the charts
can never race a half-typed value.
"""
from __future__ import annotations

import streamlit as st

from trainer.hparams import DECAYS, lr_exponent, lr_from_exponent, momentum_exponent, momentum_from_exponent

from .common import report, status, trainer

FIELDS = ("lr", "momentum", "weight_decay", "lr_decay", "decay_rate", "decay_every", "batch_size", "grad_clip")
LR_EXP = (-6.0, 1.0)
MOM_EXP = (-4.0, 0.0)
ss = st.session_state


def _lr_exp(lr: float) -> float:
    return round(min(LR_EXP[1], max(LR_EXP[0], lr_exponent(lr))), 2)


def _mom_exp(beta: float) -> float:
    return 0.0 if beta <= 0 else round(min(MOM_EXP[1], max(MOM_EXP[0], momentum_exponent(beta))), 2)


def _mom_from_exp(r: float) -> float:
    return 0.0 if r >= 0 else float(f"{momentum_from_exponent(r):.6g}")


def _sync(hp: dict) -> None:
    """When the engine's values change (Apply, a restore, another tab), the fields follow."""
    if ss.get("_hp_seen") == hp:
        return
    for k in FIELDS:
        ss[f"hp_{k}"] = hp[k]
    ss["hp_lr_exp"] = _lr_exp(hp["lr"])
    ss["hp_mom_exp"] = _mom_exp(hp["momentum"])
    ss["_hp_seen"] = dict(hp)
    ss.pop("hp_error", None)


def edited(current: dict) -> dict:
    """The fields that differ from the engine's values. A changed exact field wins over its slider."""
    changes = {k: ss[f"hp_{k}"] for k in FIELDS if ss[f"hp_{k}"] != current[k]}
    if "lr" not in changes and ss["hp_lr_exp"] != _lr_exp(current["lr"]):
        changes["lr"] = float(f"{lr_from_exponent(ss['hp_lr_exp']):.6g}")
    if "momentum" not in changes and ss["hp_mom_exp"] != _mom_exp(current["momentum"]):
        changes["momentum"] = _mom_from_exp(ss["hp_mom_exp"])
    return changes


def _apply() -> None:
    t = trainer()
    changes = edited(t.status().hp)
    if not changes:
        ss.setdefault("_flash", []).append(("ok", "Apply: nothing changed"))
        return
    r = t.set_hparams(**changes).wait(10)
    if r.ok:
        ss.pop("hp_error", None)
        report(r, "Apply " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in changes.items()))
    else:
        ss["hp_error"] = (r.message.split(":", 1)[0], r.message)


def _nudge(factor: float) -> None:
    t = trainer()
    report(t.set_hparams(lr=t.status().hparams.lr * factor).wait(10), f"lr ×{factor:g}")


def _error_for(field: str) -> None:
    err = ss.get("hp_error")
    if err and err[0] == field:
        st.error(err[1], icon="⚠️")


def hparams_panel() -> None:
    s = status()
    hp = s.hp
    _sync(hp)
    st.subheader("Hyperparameters")
    c1, c2 = st.columns(2)
    c1.button("lr ×0.5", key="nudge_down", on_click=_nudge, args=(0.5,), width="stretch",
              help="Halve the learning rate now.")
    c2.button("lr ×2", key="nudge_up", on_click=_nudge, args=(2.0,), width="stretch",
              help="Double the learning rate now.")
    with st.form("hparams_form", border=False, enter_to_submit=False):
        st.caption("Edit, then **Apply**: the change takes effect at the next optimizer step.")
        st.slider("Learning rate, log₁₀", *LR_EXP, step=0.05, key="hp_lr_exp",
                  help="Sample the learning rate on a log scale: lr = 10^r.")
        st.number_input("Learning rate", key="hp_lr", format="%.6g", step=None)
        _error_for("lr")
        st.slider("Momentum, log₁₀(1 − β)", *MOM_EXP, step=0.05, key="hp_mom_exp",
                  help="β = 1 − 10^r: r = −1 is 0.9, r = −2 is 0.99, r = −3 is 0.999. Right end: no momentum.")
        st.number_input("Momentum (β₁ for Adam)" if s.run.optimizer != "sgd" else "Momentum", key="hp_momentum",
                        format="%.6g", step=0.01)
        _error_for("momentum")
        st.number_input("Weight decay", key="hp_weight_decay", format="%.6g", step=1e-4)
        _error_for("weight_decay")
        st.selectbox("LR decay", DECAYS, key="hp_lr_decay",
                     help="Per epoch since the lr was last set: inverse-time α₀/(1+rate·epoch), exponential "
                          "α₀·rate^epoch, step α₀·rate^⌊epoch/every⌋.")
        d1, d2 = st.columns(2)
        d1.number_input("Decay rate", key="hp_decay_rate", format="%.4g", step=0.05)
        d2.number_input("Every (epochs)", key="hp_decay_every", step=1, help="Step decay only.")
        for f in ("lr_decay", "decay_rate", "decay_every"):
            _error_for(f)
        st.number_input("Batch size", key="hp_batch_size", step=1)
        _error_for("batch_size")
        st.number_input("Gradient clip (max norm, 0 = off)", key="hp_grad_clip", format="%.4g", step=0.5)
        _error_for("grad_clip")
        st.form_submit_button("Apply", type="primary", on_click=_apply, width="stretch",
                              help="Send every edited value at once; it takes effect at the next optimizer step.")
