"""The sidebar's hyperparameter form: two tabs on one run, and number fields that never guess."""
import pytest

from test_app import app, apply, errors, hp, shown  # noqa: F401  (app is a fixture)


def warnings(at):
    return [w.value for w in at.warning]


def captions(at):
    return [c.value for c in at.caption]


def hparam_events(t):
    return [e["message"] for e in t.reader().events(kinds=("hparams",))]


def test_two_tabs_never_undo_each_other(app):
    a, b = app(), app()
    t = shown(a)
    b.number_input(key="hp_lr").set_value(0.05)
    apply(b)
    a.number_input(key="hp_batch_size").set_value(32)  # tab A still shows lr 0.1: it must not send it back
    apply(a)
    assert hp(t).lr == 0.05 and hp(t).batch_size == 32
    assert hparam_events(t) == ["lr 0.1 → 0.05", "batch_size 64 → 32"]
    assert a.number_input(key="hp_lr").value == 0.05  # an unedited field follows the live value
    assert any("changed elsewhere to 0.05" in c for c in captions(a)), captions(a)


def test_a_tab_shows_a_live_value_that_differs_from_its_own_edit(app):
    a, b = app(), app()
    t = shown(a)
    a.number_input(key="hp_lr").set_value(0.2)
    a.number_input(key="hp_batch_size").set_value(2.5)
    apply(a)  # refused (batch size): both edits stay, unapplied
    b.number_input(key="hp_lr").set_value(0.05)
    apply(b)
    a.run()
    assert not a.exception and a.number_input(key="hp_lr").value == 0.2
    assert any("live lr is 0.05 (changed elsewhere)" in w for w in warnings(a)), warnings(a)
    assert any("unapplied:** batch_size, lr" in c for c in captions(a)), captions(a)
    assert hp(t).lr == 0.05


def test_a_fractional_batch_size_is_refused_not_truncated(app):
    at = app()
    t = shown(at)
    at.number_input(key="hp_batch_size").set_value(2.5)
    apply(at)
    assert hp(t).batch_size == 64 and not hparam_events(t)
    assert any(e.startswith("batch_size: expected an integer") for e in errors(at)), errors(at)


@pytest.mark.parametrize("typed", [None, float("inf")])  # an emptied field; 1e999 arrives as inf
def test_an_empty_or_overflowing_lr_means_unchanged_never_zero(app, typed):
    at = app()
    t = shown(at)
    at.number_input(key="hp_lr").set_value(typed)
    at.number_input(key="hp_batch_size").set_value(32)
    apply(at)
    assert hp(t).lr == 0.1 and hp(t).batch_size == 32 and not errors(at)
    assert at.number_input(key="hp_lr").value == 0.1  # refilled with the live value
    assert "empty or not a number: left at 0.1" in captions(at)


def test_every_bad_field_is_reported_and_nothing_is_sent(app):
    at = app()
    t = shown(at)
    before = hp(t)
    at.number_input(key="hp_momentum").set_value(1.5)
    at.number_input(key="hp_lr").set_value(-0.1)
    at.number_input(key="hp_batch_size").set_value(2.5)
    at.number_input(key="hp_weight_decay").set_value(0.01)  # valid, but not sent alone
    apply(at)
    assert hp(t) == before and not hparam_events(t)
    assert sorted(e.split(":")[0] for e in errors(at)) == ["batch_size", "lr", "momentum"], errors(at)
    assert any("unapplied:** batch_size, lr, momentum, weight_decay" in c for c in captions(at)), captions(at)


@pytest.mark.parametrize("decay,rate", [("exponential", 0.95), ("step", 0.5), ("inverse-time", 0.5)])
def test_picking_a_decay_with_the_rate_at_zero_fills_in_a_working_rate(app, decay, rate):
    at = app()
    t = shown(at)
    at.selectbox(key="hp_lr_decay").set_value(decay)
    apply(at)
    assert not errors(at)
    assert hp(t).lr_decay == decay and hp(t).decay_rate == rate
    assert at.number_input(key="hp_decay_rate").value == rate


def test_a_chosen_rate_is_kept(app):
    at = app()
    t = shown(at)
    at.selectbox(key="hp_lr_decay").set_value("exponential")
    at.number_input(key="hp_decay_rate").set_value(0.8)
    apply(at)
    assert (hp(t).lr_decay, hp(t).decay_rate) == ("exponential", 0.8)


def is_form(node):
    try:
        return node.proto.WhichOneof("type") == "form"
    except (AttributeError, ValueError):  # not a block
        return False


def form_block(at, form_id):
    stack = [at._tree]
    while stack:
        node = stack.pop()
        if is_form(node) and node.proto.form.form_id == form_id:
            return node.proto.form
        stack.extend(getattr(node, "children", {}).values())
    raise AssertionError(f"no form {form_id}")


def test_enter_applies_and_apply_comes_first(app):
    at = app()
    assert form_block(at, "hparams_form").enter_to_submit
    form = next(b for b in at.sidebar.children.values() if is_form(b))
    first = form.children[0]
    assert first.type == "button" and first.label == "Apply"  # in view on a laptop screen


def test_the_step_limit_is_never_truncated(app):
    at = app()
    t = shown(at)
    at.number_input(key="max_steps").set_value(2.5).run()
    assert t.status().max_steps == 0
    assert any("max_steps: must be an integer" in e for e in errors(at)), errors(at)
    at.number_input(key="max_steps").set_value(300).run()
    assert t.status().max_steps == 300
