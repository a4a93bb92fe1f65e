"""The routing-collapse warning: named once per episode, against the majority baseline."""

from __future__ import annotations

from types import SimpleNamespace

from modtrain.train.hook_base import StepEnd
from modtrain.train.routing_watch import RoutingCollapseWatch
from modtrain.train.steps import StepOutcome


def _steps(watch: RoutingCollapseWatch, values: list[float], key: str) -> list[str]:
    said: list[str] = []
    run = SimpleNamespace(message=said.append)  # the hook only reports through the run
    for step, value in enumerate(values, 1):
        outcome = StepOutcome(loss=2.0, skipped=False, stop=False,
                              stats={key: value, "routed_frac/layer1": 0.125})
        watch.after_step(run, StepEnd(step, 1e-3, outcome))
    return said


def test_a_predictor_stuck_at_the_majority_answer_is_named_once_per_episode():
    watch = RoutingCollapseWatch(capacity=0.125, window=3, margin=0.02)
    # healthy, then stuck at 0.875 (always "not routed"), recovered, stuck again
    said = _steps(watch, [0.95, 0.96, 0.97, 0.875, 0.875, 0.875, 0.875, 0.875,
                          0.97, 0.98, 0.99, 0.88, 0.88, 0.88], "predictor_acc/layer1")
    assert len(said) == 2
    assert said[0] == (
        "modtrain: warning: step 6: the predictor of routed layer1 has collapsed: its "
        "accuracy against the top-k over the last 3 steps is 0.875, no better than always "
        "answering the majority (0.875 + train.routing_collapse_margin=0.02); lower "
        "train.lr, raise model.mod.router_bce_coef / predictor_loss_coef, or check the data")
    assert said[1].startswith("modtrain: warning: step 14: the predictor of routed layer1")


def test_a_router_below_chance_at_capacity_one_half_is_named():
    watch = RoutingCollapseWatch(capacity=0.5, window=2, margin=0.02)
    assert _steps(watch, [0.8, 0.9, 0.51, 0.5], "router_acc/layer3")[0].startswith(
        "modtrain: warning: step 4: the router of routed layer3 has collapsed")
    assert _steps(RoutingCollapseWatch(0.5, 2, 0.02), [0.8, 0.7, 0.6], "router_acc/layer3"
                  ) == []
