"""Hyperparameters, edited in the sidebar and sent together with Apply.

The course's advice shapes the inputs: learning rate on a log scale (10^r), momentum on the
1 - beta log scale (beta = 1 - 10^r), each with an exact number field beside it.
"""
from __future__ import annotations

import math

import streamlit as st

from trainer.hparams import DECAYS, lr_from_exponent, momentum_from_exponent

from .common import report, trainer

FIELDS = ("lr", "momentum", "weight_decay", "lr_decay", "decay_rate", "decay_every", "batch_size", "grad_clip")
LR_EXP = (-6.0, 1.0)
MOM_EXP = (-4.0, 0.0)
ss = st.session_state


def _log_slider(label: str, field: str, to_exp, from_exp, bounds: tuple[float, float], help: str) -> None:
    """A log-scale slider that writes the exact field `hp_<field>`.

    Its key carries the field's current value, so typing a number makes a fresh slider at the right
    place: two widgets that update each other race the browser, which may send the stale one back.
    """
    v = ss[f"hp_{field}"]
    try:
        r = min(bounds[1], max(bounds[0], round(to_exp(v), 2)))
    except (TypeError, ValueError):
        r = bounds[0]
    key = f"hp_{field}_exp|{v}"

    def moved():
        ss[f"hp_{field}"] = float(f"{from_exp(ss[key]):.6g}")

    st.slider(label, *bounds, value=r, step=0.05, key=key, on_change=moved, help=help)


def _lr_exp(lr: float) -> float:
    return math.log10(lr)


def _mom_exp(beta: float) -> float:
    return 0.0 if beta == 0 else math.log10(1 - beta)


def _mom_from_exp(r: float) -> float:
    return 0.0 if r >= 0 else momentum_from_exponent(r)


def _sync(hp: dict) -> None:
    """When the engine's values change (Apply, a restore, another tab), the fields follow."""
    if ss.get("_hp_seen") == hp:
        return
    for k in FIELDS:
        ss[f"hp_{k}"] = hp[k]
    ss["_hp_seen"] = dict(hp)
    ss.pop("hp_error", None)


def _apply() -> None:
    t = trainer()
    current = t.hp_dict()
    changes = {k: ss[f"hp_{k}"] for k in FIELDS if ss[f"hp_{k}"] != current[k]}
    if not changes:
        st.session_state.setdefault("_flash", []).append(("ok", "Apply: nothing changed"))
        return
    r = t.set_hparams(**changes).wait(10)
    if r.ok:
        ss.pop("hp_error", None)
        report(r, "Apply " + ", ".join(changes))
    else:
        ss["hp_error"] = (r.message.split(":", 1)[0], r.message)


def _nudge(factor: float) -> None:
    t = trainer()
    report(t.set_hparams(lr=t.hp.lr * factor).wait(10), f"lr ×{factor:g}")


def _error_for(field: str) -> None:
    err = ss.get("hp_error")
    if err and err[0] == field:
        st.error(err[1], icon="⚠️")


def hparams_panel() -> None:
    t = trainer()
    hp = t.hp_dict()
    _sync(hp)
    st.subheader("Hyperparameters")
    st.caption("Edit, then **Apply**: the change takes effect at the next optimizer step.")
    _log_slider("Learning rate, log₁₀", "lr", _lr_exp, lr_from_exponent, LR_EXP,
                "Sample the learning rate on a log scale: lr = 10^r.")
    st.number_input("Learning rate", key="hp_lr", format="%.6g", step=None)
    _error_for("lr")
    c1, c2 = st.columns(2)
    c1.button("lr ×0.5", key="nudge_down", on_click=_nudge, args=(0.5,), width="stretch")
    c2.button("lr ×2", key="nudge_up", on_click=_nudge, args=(2.0,), width="stretch")
    label = "Momentum (β₁ for Adam)" if t.cfg.optimizer != "sgd" else "Momentum"
    _log_slider("Momentum, log₁₀(1 − β)", "momentum", _mom_exp, _mom_from_exp, MOM_EXP,
                "β = 1 − 10^r: r = −1 is 0.9, r = −2 is 0.99, r = −3 is 0.999. Right end: no momentum.")
    st.number_input(label, key="hp_momentum", format="%.6g", step=0.01)
    _error_for("momentum")
    st.number_input("Weight decay", key="hp_weight_decay", format="%.6g", step=1e-4)
    _error_for("weight_decay")
    st.selectbox("LR decay", DECAYS, key="hp_lr_decay",
                 help="Per epoch since the lr was last set: inverse-time α₀/(1+rate·epoch), exponential "
                      "α₀·rate^epoch, step α₀·rate^⌊epoch/every⌋.")
    _error_for("lr_decay")
    if ss["hp_lr_decay"] != "none":
        c1, c2 = st.columns(2)
        c1.number_input("Decay rate", key="hp_decay_rate", format="%.4g", step=0.05)
        if ss["hp_lr_decay"] == "step":
            c2.number_input("Every (epochs)", key="hp_decay_every", step=1)
        _error_for("decay_rate")
        _error_for("decay_every")
    st.number_input("Batch size", key="hp_batch_size", step=1)
    _error_for("batch_size")
    st.number_input("Gradient clip (max norm, 0 = off)", key="hp_grad_clip", format="%.4g", step=0.5)
    _error_for("grad_clip")
    st.button("Apply", key="btn_apply", type="primary", on_click=_apply, width="stretch",
              help="Send every edited value at once; it takes effect at the next optimizer step.")
