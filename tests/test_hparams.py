"""The validation corpus: every bad value is rejected with the field named; good ones pass."""
import dataclasses
import math

import pytest

from trainer.hparams import (HELP, FieldSpec, HParamError, HParams, decayed_lr, field_specs, lr_exponent,
                             lr_from_exponent, momentum_exponent, momentum_from_exponent, validate)

BAD = [
    ({"lr": 0}, "lr", "> 0"), ({"lr": -0.1}, "lr", "> 0"), ({"lr": float("nan")}, "lr", "finite"),
    ({"lr": float("inf")}, "lr", "finite"), ({"lr": "0.1"}, "lr", "number"), ({"lr": None}, "lr", "number"),
    ({"lr": True}, "lr", "number"), ({"momentum": 1.0}, "momentum", "[0, 1)"),
    ({"momentum": -0.1}, "momentum", "[0, 1)"), ({"momentum": float("nan")}, "momentum", "finite"),
    ({"weight_decay": -1e-4}, "weight_decay", ">= 0"), ({"weight_decay": float("-inf")}, "weight_decay", "finite"),
    ({"lr_decay": "cosine"}, "lr_decay", "one of"), ({"lr_decay": None}, "lr_decay", "one of"),
    ({"lr_decay": "inverse-time", "decay_rate": -1}, "decay_rate", ">= 0"),
    ({"lr_decay": "exponential", "decay_rate": 0}, "decay_rate", "(0, 1]"),
    ({"lr_decay": "exponential", "decay_rate": 1.5}, "decay_rate", "(0, 1]"),
    ({"lr_decay": "step", "decay_rate": 0.5, "decay_every": 0}, "decay_every", ">= 1"),
    ({"batch_size": 0}, "batch_size", "from 1 to 100"), ({"batch_size": 101}, "batch_size", "from 1 to 100"),
    ({"batch_size": 32.5}, "batch_size", "integer"), ({"batch_size": "32"}, "batch_size", "integer"),
    ({"batch_size": True}, "batch_size", "integer"), ({"grad_clip": -1}, "grad_clip", ">= 0"),
    ({"grad_clip": float("nan")}, "grad_clip", "finite"), ({"learning_rate": 0.1}, "learning_rate", "unknown"),
    # numbers that cannot be converted: a float overflows, an int must fit the journal's 64-bit columns
    ({"lr": 10**400}, "lr", "too large to be a float"), ({"momentum": -10**400}, "momentum", "too large"),
    ({"batch_size": 10**30}, "batch_size", "too large"), ({"decay_every": 10**400}, "decay_every", "too large"),
    ({"decay_every": 1e300}, "decay_every", "too large"), ({"lr_decay": ["step"]}, "lr_decay", "one of"),
    ({1: 0.1}, "hparams", "keys must be field names (strings), got 1"),
    ({"lr": 0.1, 1: 0.1}, "hparams", "keys must be field names (strings), got 1"),
    ({None: 0.1, "x": 1}, "hparams", "got None"),
]


@pytest.mark.parametrize("changes,field,words", BAD, ids=[str(b[0])[:60] for b in BAD])
def test_rejects_with_field_and_range(changes, field, words):
    base = HParams()
    with pytest.raises(HParamError) as e:
        validate(base, changes, dataset_size=100)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}:") and words in str(e.value)
    assert base == HParams()  # nothing changed


def test_an_int_too_long_to_print_is_still_named():
    with pytest.raises(HParamError, match="^lr: too large"):
        validate(HParams(), {"lr": 10**5000})  # str() refuses ints over 4300 digits


def test_accepts_good_values_and_coerces_integral_floats():
    hp = validate(HParams(), {"lr": 1, "momentum": 0, "batch_size": 32.0, "lr_decay": "step",
                              "decay_rate": 0.5, "decay_every": 3, "grad_clip": 1})
    assert hp.lr == 1.0 and isinstance(hp.lr, float) and hp.batch_size == 32 and isinstance(hp.batch_size, int)


def test_nesterov_needs_momentum():
    with pytest.raises(HParamError, match="momentum"):
        validate(HParams(), {"momentum": 0.0}, nesterov=True)


def test_non_mapping_is_rejected():
    with pytest.raises(HParamError):
        validate(HParams(), [("lr", 0.1)])


@pytest.mark.parametrize("decay,rate,every,epoch,expected", [
    ("none", 0.0, 1, 7, 0.2),
    ("inverse-time", 1.0, 1, 0, 0.2), ("inverse-time", 1.0, 1, 1, 0.1), ("inverse-time", 1.0, 1, 3, 0.05),
    ("exponential", 0.95, 1, 2, 0.2 * 0.95 ** 2), ("step", 0.5, 3, 2, 0.2), ("step", 0.5, 3, 3, 0.1),
    ("step", 0.5, 3, 7, 0.05),
])
def test_decay_matches_the_course_formulas(decay, rate, every, epoch, expected):
    hp = HParams(lr=0.2, lr_decay=decay, decay_rate=rate, decay_every=every)
    assert decayed_lr(hp, epoch) == pytest.approx(expected, rel=1e-12)


def test_log_scale_helpers_round_trip():
    assert lr_from_exponent(-3) == pytest.approx(1e-3)
    assert lr_exponent(1e-4) == pytest.approx(-4)
    assert momentum_from_exponent(-1) == pytest.approx(0.9)
    assert momentum_from_exponent(-3) == pytest.approx(0.999)
    assert momentum_exponent(0.99) == pytest.approx(-2)
    assert math.isclose(momentum_from_exponent(momentum_exponent(0.95)), 0.95)


def test_every_field_has_a_spec_and_help():
    specs = field_specs()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(HParams)]
    assert set(HELP) == {f.name for f in dataclasses.fields(HParams)}
    for s in specs:
        assert isinstance(s, FieldSpec) and s.help == HELP[s.name] and s.help and "\n" not in s.help
        assert s.default == getattr(HParams(), s.name)
        assert s.kind in ("float", "int", "choice")
        assert (s.choices is not None) == (s.kind == "choice")
        assert validate(HParams(), {s.name: s.default}) == HParams()  # the form's default is valid
        assert s.choices is None or s.default in s.choices
    kinds = {s.name: s.kind for s in specs}
    assert kinds["lr"] == "float" and kinds["batch_size"] == "int" and kinds["lr_decay"] == "choice"
    assert field_specs()[3].choices == ("none", "inverse-time", "exponential", "step")
    with pytest.raises(dataclasses.FrozenInstanceError):
        specs[0].help = "x"


def test_a_new_field_gets_a_spec(monkeypatch):
    """Specs come from dataclasses.fields(HParams), so a field added there shows up in the CLI and form."""
    import trainer.hparams as hparams

    @dataclasses.dataclass(frozen=True)
    class More(HParams):
        warmup: int = 0

    monkeypatch.setattr(hparams, "HParams", More)
    monkeypatch.setitem(hparams.HELP, "warmup", "warm-up steps, integer >= 0")
    assert hparams.field_specs()[-1] == FieldSpec("warmup", "int", 0, None, "warm-up steps, integer >= 0")
