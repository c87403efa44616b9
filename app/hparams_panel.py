"""Hyperparameters, edited in the sidebar and sent together with Apply (or Enter).

The fields come from trainer.hparams.field_specs(), so a new HParams field appears here by itself.
The course's advice shapes two extra inputs: the learning rate on a log scale (10^r) and momentum
on the 1 - beta log scale (beta = 1 - 10^r). The fields live in a form: nothing reaches the server
until Apply, so the once-a-second refresh of the charts can never race a half-typed value.

Several tabs can drive one run. Each tab remembers the values it displayed (ss["_hp_shown"]) and
Apply sends only the fields edited in that tab, so a tab never undoes a change made in another.
Fields the user has not edited follow the live values.
"""
from __future__ import annotations

import streamlit as st

from trainer import HParams
from trainer.hparams import (HParamError, field_specs, lr_exponent, lr_from_exponent, momentum_exponent,
                             momentum_from_exponent, validate)

from .common import report, status, trainer

SPECS = field_specs()
LABELS = {"lr": "Learning rate", "momentum": "Momentum", "weight_decay": "Weight decay", "lr_decay": "LR decay",
          "decay_rate": "Decay rate", "decay_every": "Decay every (epochs)", "batch_size": "Batch size",
          "grad_clip": "Gradient clip (0 = off)", "warmup": "Warm-up (steps, 0 = off)"}
# A decay picked while its rate is 0 would do nothing (inverse-time) or be refused (exponential, step).
DEFAULT_DECAY_RATE = {"inverse-time": 0.5, "exponential": 0.95, "step": 0.5}
MORE_HELP = {"lr_decay": "Per epoch since the lr was last set: inverse-time α₀/(1+rate·epoch), exponential "
                         "α₀·rate^epoch, step α₀·rate^⌊epoch/every⌋. Picked with the rate at 0, the rate becomes "
                         + ", ".join(f"{v:g} ({k})" for k, v in DEFAULT_DECAY_RATE.items()) + "."}
LR_EXP = (-6.0, 1.0)
MOM_EXP = (-4.0, 0.0)
SLIDERS = {"hp_lr_exp": "lr", "hp_mom_exp": "momentum"}  # slider key -> the field it sets
ss = st.session_state


def label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


def _lr_exp(lr: float) -> float:
    return round(min(LR_EXP[1], max(LR_EXP[0], lr_exponent(lr))), 2)


def _mom_exp(beta: float) -> float:
    return 0.0 if beta <= 0 else round(min(MOM_EXP[1], max(MOM_EXP[0], momentum_exponent(beta))), 2)


def _mom_from_exp(r: float) -> float:
    return 0.0 if r >= 0 else float(f"{momentum_from_exponent(r):.6g}")


def _display(hp: dict) -> dict:
    """What each widget shows for these live values, by widget key. Number fields hold floats (an
    int-typed field would silently truncate 2.5 to 2); validate() turns 32.0 back into 32."""
    out = {f"hp_{s.name}": float(hp[s.name]) if s.kind != "choice" else hp[s.name] for s in SPECS}
    out["hp_lr_exp"] = _lr_exp(hp["lr"])
    out["hp_mom_exp"] = _mom_exp(hp["momentum"])
    return out


def _sync(hp: dict) -> list[str]:
    """Let every field the user has not edited follow the live values; return the fields that just
    followed a change made elsewhere. An edit is a value differing from both what this tab showed
    and the live value; an empty field is no edit (it means "unchanged")."""
    shown, followed = ss.setdefault("_hp_shown", {}), []
    mine = ss.pop("_hp_changed_here", False)  # a nudge or restore from this tab is no news to it
    for key, live in _display(hp).items():
        cur = ss.get(key)
        if key not in shown or cur is None or cur == shown[key] or cur == live:
            if key in shown and shown[key] != live and key not in SLIDERS and not mine:
                followed.append(key[3:])
            ss[key] = shown[key] = live
    return followed


def edits() -> tuple[dict, list[str]]:
    """This tab's edits as {field: value}, and the fields left empty. An exact field wins over its slider."""
    shown, changes, empty = ss.get("_hp_shown", {}), {}, []
    for s in SPECS:
        v = ss.get(f"hp_{s.name}")
        if v is None:
            empty.append(s.name)
        elif v != shown.get(f"hp_{s.name}"):
            changes[s.name] = v
    if "lr" not in changes and ss.get("hp_lr_exp") != shown.get("hp_lr_exp"):
        changes["lr"] = float(f"{lr_from_exponent(ss['hp_lr_exp']):.6g}")
    if "momentum" not in changes and ss.get("hp_mom_exp") != shown.get("hp_mom_exp"):
        changes["momentum"] = _mom_from_exp(ss["hp_mom_exp"])
    return changes, empty


def check(base: HParams, changes: dict, dataset_size: int | None) -> tuple[HParams | None, dict[str, str]]:
    """Validate `changes` on top of `base` field by field, so that every bad field is reported, not
    only the first. Returns (the new HParams, {}) or (None, {field: message})."""
    errors: dict[str, str] = {}
    for k, v in changes.items():
        context = {"lr_decay": changes["lr_decay"]} if "lr_decay" in changes and k != "lr_decay" else {}
        try:
            validate(base, {**context, k: v}, dataset_size=dataset_size)
        except HParamError as e:
            if e.field == k:  # an error about another field is a combination: checked below
                errors[k] = str(e)
    if not errors:
        try:
            return validate(base, changes, dataset_size=dataset_size), {}
        except HParamError as e:
            errors[e.field] = str(e)
    return None, errors


def _changes_to_send(live: dict) -> tuple[dict, list[str]]:
    changes, empty = edits()
    changes = {k: v for k, v in changes.items() if v != live[k]}  # re-sending the lr would restart its decay
    decay = changes.get("lr_decay")
    if decay in DEFAULT_DECAY_RATE and "decay_rate" not in changes and live["decay_rate"] == 0:
        changes["decay_rate"] = DEFAULT_DECAY_RATE[decay]
    return changes, empty


def _apply() -> None:
    t = trainer()
    s = t.status()
    changes, empty = _changes_to_send(s.hp)
    # An emptied field, or one whose number overflowed (1e999), arrives as None: it means "unchanged".
    ss["hp_notes"] = {k: f"empty or not a number: left at {_g(s.hp[k])}" for k in empty}
    new, errors = check(s.hparams, changes, s.run.n_train)
    ss["hp_errors"] = errors
    if errors or not changes:
        if not errors and not empty:
            ss.setdefault("_flash", []).append(("ok", "Apply: nothing changed"))
        return
    typed = {k: getattr(new, k) for k in changes}  # 32.0 from a number field is sent as the int 32
    r = t.set_hparams(**typed).wait(10)
    if r.ok:
        shown = ss.get("_hp_shown", {})
        for key in [f"hp_{k}" for k in typed] + [key for key, k in SLIDERS.items() if k in typed]:
            shown.pop(key, None)  # applied: these fields (and a slider an exact value overrode) show live values
        report(r, "Apply " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in typed.items()))
    else:
        field = r.message.split(":", 1)[0]
        ss["hp_errors"] = {field if field in changes else "": r.message}


def changed_here() -> None:
    """Say that this tab just changed the live values itself (so the fields do not call it "elsewhere")."""
    ss["_hp_changed_here"] = True


def _nudge(factor: float) -> None:
    t = trainer()
    r = t.set_hparams(lr=t.status().hparams.lr * factor).wait(10)
    if r.ok:
        changed_here()
    report(r, f"lr ×{factor:g}")


def _field(s, optimizer: str) -> None:
    key, name = f"hp_{s.name}", label(s.name)
    help_ = f"{s.help}. {MORE_HELP.get(s.name, '')}".strip()
    if s.kind == "choice":
        st.selectbox(name, s.choices, key=key, help=help_)
    elif s.kind == "int":
        st.number_input(name, key=key, value=None, step=1.0, format="%g", placeholder="unchanged", help=help_)
    else:
        if s.name == "momentum" and optimizer != "sgd":
            name = "Momentum (β₁)"
        st.number_input(name, key=key, value=None, step=None, format="%.6g", placeholder="unchanged", help=help_)


def _g(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _notes(name: str, hp: dict, followed: list[str]) -> None:
    """Under a field: its error, or a change made elsewhere (followed, or beside this tab's own edit)."""
    err = ss.get("hp_errors", {}).get(name)
    if err:
        st.error(err, icon="⚠️")
    note = ss.get("hp_notes", {}).get(name)
    if note:
        st.caption(note)
    shown = ss.get("_hp_shown", {}).get(f"hp_{name}")
    if name in followed:
        st.caption(f":material/sync: changed elsewhere to {_g(hp[name])}")
    elif shown is not None and shown != _display(hp)[f"hp_{name}"]:
        st.warning(f"live {name} is {_g(hp[name])} (changed elsewhere)", icon=":material/sync:")


def hparams_panel() -> None:
    s = status()
    hp = s.hp
    followed = _sync(hp)
    st.subheader("Hyperparameters")
    c1, c2 = st.columns(2)
    c1.button("lr ×0.5", key="nudge_down", on_click=_nudge, args=(0.5,), width="stretch",
              help="Halve the learning rate now.")
    c2.button("lr ×2", key="nudge_up", on_click=_nudge, args=(2.0,), width="stretch",
              help="Double the learning rate now.")
    with st.form("hparams_form", border=False, enter_to_submit=True):
        # Apply first: it stays in view on a laptop screen, whatever the form's length.
        st.form_submit_button("Apply", type="primary", on_click=_apply, width="stretch",
                              help="Send the fields edited here, all at once (Enter does too); they take effect at "
                                   "the next optimizer step. Fields you did not edit are not sent.")
        pending = sorted(edits()[0])
        st.caption(f"**unapplied:** {', '.join(pending)}" if pending else
                   "Edit, then **Apply**: only what you edit is sent.")
        other = ss.get("hp_errors", {}).get("")
        if other:
            st.error(other, icon="⚠️")
        st.slider("Learning rate, log₁₀", *LR_EXP, step=0.05, key="hp_lr_exp",
                  help="Sample the learning rate on a log scale: lr = 10^r.")
        st.slider("Momentum, log₁₀(1 − β)", *MOM_EXP, step=0.05, key="hp_mom_exp",
                  help="β = 1 − 10^r: r = −1 is 0.9, r = −2 is 0.99, r = −3 is 0.999. Right end: no momentum.")
        cols = st.columns(2)
        for i, spec in enumerate(SPECS):
            with cols[i % 2]:
                _field(spec, s.run.optimizer)
                _notes(spec.name, hp, followed)
