"""Live hyperparameters: one typed dataclass, validated in one place, and the lr schedule."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

DECAYS = ("none", "inverse-time", "exponential", "step")


class HParamError(ValueError):
    """A hyperparameter was rejected; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class HParams:
    lr: float = 0.1  # learning rate alpha0, finite and > 0; the schedule decays it from the step it was set
    momentum: float = 0.9  # SGD momentum, or beta1 for Adam/AdamW; in [0, 1)
    weight_decay: float = 0.0  # L2 (SGD/Adam) or decoupled (AdamW) decay; >= 0
    lr_decay: str = "none"  # one of none | inverse-time | exponential | step
    decay_rate: float = 0.0  # inverse-time: >= 0; exponential and step: in (0, 1]
    decay_every: int = 1  # step decay: epochs per decay step; integer >= 1
    batch_size: int = 64  # mini-batch size; integer from 1 to the training-set size
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off; >= 0
    warmup: int = 0  # linear lr warm-up over the run's first `warmup` steps (nanoGPT's); 0 = none


# One line per field for the CLI's --help and the dashboard's tooltips: meaning and valid range.
HELP: dict[str, str] = {
    "lr": "learning rate alpha0, > 0; the decay schedule starts again when it is set",
    "momentum": "SGD momentum, or beta1 for Adam/AdamW; in [0, 1)",
    "weight_decay": "L2 (SGD/Adam) or decoupled (AdamW) weight decay; >= 0",
    "lr_decay": "learning-rate decay: " + " | ".join(DECAYS),
    "decay_rate": "decay rate; inverse-time: >= 0, exponential and step: in (0, 1]",
    "decay_every": "step decay: epochs per decay step; integer >= 1",
    "batch_size": "mini-batch size; integer from 1 to the training-set size",
    "grad_clip": "max gradient norm, 0 = no clipping; >= 0",
    "warmup": "linear lr warm-up over the run's first N steps (counted from step 0); 0 = none",
}

_CHOICES = {"lr_decay": DECAYS}  # a str field takes one of a fixed set of values


@dataclass(frozen=True)
class FieldSpec:
    """One hyperparameter as the CLI flags and the dashboard form show it."""
    name: str
    kind: str  # "float" | "int" | "choice"
    default: Any
    choices: tuple[str, ...] | None  # the allowed values of a "choice", else None
    help: str


def _kind(f: dataclasses.Field) -> str:
    # With `from __future__ import annotations` the types are strings.
    if f.name in _CHOICES:
        return "choice"
    if f.type in ("int", int):
        return "int"
    if f.type in ("float", float):
        return "float"
    raise TypeError(f"HParams.{f.name}: no spec for type {f.type!r}; add it to _CHOICES or use int/float")


def field_specs() -> list[FieldSpec]:
    """One spec per HParams field, in declaration order; a new field appears here (and needs HELP)."""
    return [FieldSpec(f.name, _kind(f), f.default, _CHOICES.get(f.name), HELP[f.name]) for f in fields(HParams)]


_FIELDS = {f.name: f for f in fields(HParams)}
_KINDS = {s.name: s.kind for s in field_specs()}  # also checks at import that every field has a spec
_INT_LIMIT = 2 ** 63  # ints go to the journal's SQLite columns (64-bit); a bigger one is no batch size anyway


def _as_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise HParamError(name, f"expected a number, got {type(v).__name__} {v!r}")
    try:
        v = float(v)
    except OverflowError:  # an int beyond 1.8e308; not printed: str() refuses ints over 4300 digits
        raise HParamError(name, "too large to be a float") from None
    if not math.isfinite(v):
        raise HParamError(name, f"must be finite, got {v}")
    return v


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise HParamError(name, f"expected an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int):
        raise HParamError(name, f"expected an integer, got {type(v).__name__} {v!r}")
    if not -_INT_LIMIT < v < _INT_LIMIT:
        raise HParamError(name, "too large to be an integer (more than 64 bits)")
    return v


def validate(base: HParams, changes: dict[str, Any], *, dataset_size: int | None = None,
             nesterov: bool = False) -> HParams:
    """Return `base` with `changes` applied, or raise HParamError naming the first bad field.

    Nothing is mutated: on error the caller still holds the old, valid HParams.
    """
    if not isinstance(changes, dict):
        raise HParamError("hparams", f"expected a mapping, got {type(changes).__name__}")
    odd = [k for k in changes if not isinstance(k, str)]  # before sorting: mixed key types do not sort
    if odd:
        raise HParamError("hparams", f"keys must be field names (strings), got {odd[0]!r}")
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise HParamError(unknown[0], f"unknown hyperparameter; known: {', '.join(_FIELDS)}")
    clean: dict[str, Any] = {}
    for name, v in changes.items():
        if _KINDS[name] == "choice":
            if not (isinstance(v, str) and v in _CHOICES[name]):
                raise HParamError(name, f"must be one of {', '.join(_CHOICES[name])}, got {v!r}")
            clean[name] = v
        elif _KINDS[name] == "int":
            clean[name] = _as_int(name, v)
        else:
            clean[name] = _as_float(name, v)
    hp = dataclasses.replace(base, **clean)
    if not hp.lr > 0:
        raise HParamError("lr", f"must be > 0, got {hp.lr}")
    if not 0 <= hp.momentum < 1:
        raise HParamError("momentum", f"must be in [0, 1), got {hp.momentum}")
    if nesterov and hp.momentum == 0:
        raise HParamError("momentum", "must be in (0, 1) with Nesterov, got 0")
    if hp.weight_decay < 0:
        raise HParamError("weight_decay", f"must be >= 0, got {hp.weight_decay}")
    if hp.lr_decay == "inverse-time" and hp.decay_rate < 0:
        raise HParamError("decay_rate", f"must be >= 0 for inverse-time decay, got {hp.decay_rate}")
    if hp.lr_decay in ("exponential", "step") and not 0 < hp.decay_rate <= 1:
        raise HParamError("decay_rate", f"must be in (0, 1] for {hp.lr_decay} decay, got {hp.decay_rate}")
    if hp.decay_every < 1:
        raise HParamError("decay_every", f"must be an integer >= 1, got {hp.decay_every}")
    hi = dataset_size if dataset_size else "the training-set size"
    if hp.batch_size < 1 or (dataset_size and hp.batch_size > dataset_size):
        raise HParamError("batch_size", f"must be an integer from 1 to {hi}, got {hp.batch_size}")
    if hp.grad_clip < 0:
        raise HParamError("grad_clip", f"must be >= 0 (0 = off), got {hp.grad_clip}")
    if hp.warmup < 0:
        raise HParamError("warmup", f"must be an integer >= 0 (0 = none), got {hp.warmup}")
    return hp


def decayed_lr(hp: HParams, epochs_since_set: int, step: int | None = None) -> float:
    """The effective learning rate `epochs_since_set` whole epochs after alpha0 was set, for the
    optimizer step `step` (1-based; None: past any warm-up)."""
    if hp.warmup and step is not None and step < hp.warmup:
        return decayed_lr(hp, epochs_since_set) * step / hp.warmup
    k = epochs_since_set
    if hp.lr_decay == "inverse-time":
        return hp.lr / (1.0 + hp.decay_rate * k)  # the course's alpha0 / (1 + decay_rate * epoch_num)
    if hp.lr_decay == "exponential":
        return hp.lr * hp.decay_rate ** k
    if hp.lr_decay == "step":
        return hp.lr * hp.decay_rate ** (k // hp.decay_every)
    return hp.lr


def to_dict(hp: HParams) -> dict[str, Any]:
    return dataclasses.asdict(hp)


# The course's advice: sample on a log scale. lr = 10^r, momentum = 1 - 10^r.
def lr_from_exponent(r: float) -> float:
    return 10.0 ** r


def lr_exponent(lr: float) -> float:
    return math.log10(lr)


def momentum_from_exponent(r: float) -> float:
    return 1.0 - 10.0 ** r


def momentum_exponent(beta: float) -> float:
    return math.log10(1.0 - beta)
