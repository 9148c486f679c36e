"""common.timing's paired rounds and common.bootstrap's paired ratios, on scripted calls and a fake clock."""

import gc
import time

import numpy as np
import pytest

from common.bootstrap import against_target, loader_overhead, paired_ratio
from common.timing import paired_rounds, time_calls

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


class Clock:
    """A clock that each scripted call advances by its cost (binary fractions: the differences are exact)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scripted(clock: Clock, costs: list[float], log: list[str], name: str):
    """A (call, sync) pair whose k-th call costs costs[k] seconds on `clock` and logs its name."""
    calls = iter(costs)

    def call():
        log.append(name)
        assert not gc.isenabled()  # collected before, disabled during every timed call
        clock.now += next(calls)
        return name

    def sync(result):
        assert result == name

    return call, sync


def test_every_variant_runs_once_per_round_in_a_rotating_order():
    clock, log = Clock(), []
    variants = {
        "a": scripted(clock, [5.0, 1.0, 1.25, 1.5], log, "a"),
        "b": scripted(clock, [7.0, 2.0, 2.25, 2.5], log, "b"),
        "c": scripted(clock, [9.0, 3.0, 3.25, 3.5], log, "c"),
    }
    rounds = paired_rounds(variants, 3, clock=clock)
    assert rounds.first_call_s == {"a": 5.0, "b": 7.0, "c": 9.0}
    assert rounds.seconds == {"a": [1.0, 1.25, 1.5], "b": [2.0, 2.25, 2.5], "c": [3.0, 3.25, 3.5]}
    assert log == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]  # first calls, then rounds 0, 1, 2
    assert rounds.capped == () and gc.isenabled()


def test_a_variant_past_its_cap_is_not_timed_again():
    clock, log = Clock(), []
    variants = {
        "slow": scripted(clock, [1.0, 4.0, 4.0, 4.0], log, "slow"),
        "fast": scripted(clock, [1.0] * 4, log, "fast"),
    }
    rounds = paired_rounds(variants, 3, cap_s=7.0, clock=clock)
    assert rounds.seconds == {"slow": [4.0, 4.0, None], "fast": [1.0, 1.0, 1.0]}
    assert rounds.capped == ("slow",) and log.count("slow") == 3  # the first call and two rounds


def test_paired_ratio_is_the_median_of_per_round_ratios_with_an_interval_around_it():
    reference = [2.0, 2.0, 2.0, 2.0, 2.0, None]
    mode = [1.0, 4.0, 2.0, 2.5, 1.6, 1.0]  # ratios 2, 0.5, 1, 0.8, 1.25 (the last round has no pair)
    ratio = paired_ratio(reference, mode, resamples=2000)
    assert ratio["median"] == 1.0 and ratio["rounds"] == 5 and ratio["level"] == 0.95
    lo, hi = ratio["ci"]
    assert 0.5 <= lo <= 1.0 <= hi <= 2.0 and lo < hi


def test_a_constant_ratio_has_a_point_interval_and_decides_the_target():
    ratio = paired_ratio([3.0] * 20, [2.0] * 20)
    assert ratio["median"] == 1.5 and ratio["ci"] == [1.5, 1.5]
    assert against_target(ratio, 1.5) == "meets" and against_target(ratio, 1.6) == "misses"


def test_the_interval_narrows_with_rounds_and_only_then_decides():
    rng = np.random.default_rng(1)
    few = paired_ratio(list(1.0 + 0.2 * rng.standard_normal(5)), [1.0] * 5)
    many = paired_ratio(list(1.0 + 0.2 * rng.standard_normal(400)), [1.0] * 400)
    assert many["ci"][1] - many["ci"][0] < few["ci"][1] - few["ci"][0]
    assert against_target(few, 1.0) == "undecided"
    assert against_target(many, 0.9) == "meets" and against_target(many, 1.1) == "misses"


@pytest.mark.parametrize("pairs", [[], [(None, 1.0)]])
def test_no_paired_round_has_no_ratio(pairs):
    ratio = paired_ratio([a for a, _ in pairs], [b for _, b in pairs])
    assert ratio["median"] is None and ratio["rounds"] == 0 and against_target(ratio, 1.0) == "undecided"


def test_loader_overhead_is_end_to_end_minus_placed_per_round():
    end_to_end, placed = [0.010, 0.012, 0.011, None], [0.008, 0.009, 0.009, 0.009]
    overhead = loader_overhead(end_to_end, placed, resamples=2000)
    # d = 2, 3, 2 ms; shares 0.2, 0.25, 2/11 (the capped round left out)
    assert overhead["rounds"] == 3
    assert overhead["ms_per_epoch"] == pytest.approx(2.0) and overhead["share"] == pytest.approx(0.2)
    assert overhead["ms_ci"][0] == pytest.approx(2.0) and overhead["ms_ci"][1] == pytest.approx(3.0)
    assert 2 / 11 - 1e-12 <= overhead["share_ci"][0] <= 0.2 <= overhead["share_ci"][1] <= 0.25 + 1e-12


def test_an_upper_target_is_met_only_below_the_whole_interval():
    share = {"ci": [0.02, 0.04], "rounds": 20}
    assert against_target(share, 0.05, at_most=True) == "meets"
    assert against_target(share, 0.03, at_most=True) == "undecided"
    assert against_target(share, 0.01, at_most=True) == "misses"


def test_windows_run_with_the_garbage_collector_off():
    states = []
    timing = time_calls(
        lambda: states.append(gc.isenabled()), lambda _: None, 1, windows=3, calls_per_window=2, warmup=1
    )
    assert states == [True, True] + [False] * 6 and gc.isenabled()  # first call and warm-up, then 3 windows of 2
    assert timing.windows == 3 and timing.calls_per_window == 2


def test_windows_stop_at_the_cap_but_never_below_two():
    slept = []

    def call():
        time.sleep(0.02)
        slept.append(1)

    # each window takes ≥ 0.02 s: a 0.03 s cap stops after the second window; the first call and no warm-up apart
    assert time_calls(call, lambda _: None, 1, windows=10, calls_per_window=1, warmup=0, cap_s=0.03).windows == 2
    assert len(slept) == 3
    assert time_calls(call, lambda _: None, 1, windows=4, calls_per_window=1, warmup=0, cap_s=0.0).windows == 2
    assert time_calls(call, lambda _: None, 1, windows=3, calls_per_window=1, warmup=0).windows == 3


class Cycle:
    """A reference cycle that only the cyclic garbage collector frees; `freed` counts the finalised ones."""

    freed = 0

    def __init__(self):
        self.me = self

    def __del__(self):
        Cycle.freed += 1


def test_timed_calls_see_a_frozen_heap_and_still_collect_what_they_make():
    frozen = []
    Cycle.freed = 0

    def call():
        frozen.append(gc.get_freeze_count())
        Cycle()  # garbage made inside the timing

    old = Cycle()  # garbage made before: settled (collected) before the first timed call
    del old
    time_calls(call, lambda _: None, 1, windows=3, calls_per_window=1, warmup=0)
    assert min(frozen) > 0 and gc.get_freeze_count() == 0  # frozen while timing, thawed after
    assert Cycle.freed >= 3  # the old cycle and those of the first calls, collected before the later windows
    clock, log = Clock(), []
    paired_rounds({"a": scripted(clock, [1.0] * 3, log, "a")}, rounds=2, clock=clock)
    assert gc.get_freeze_count() == 0


def test_fewer_than_six_rounds_decide_nothing():
    # a constant ratio over 5 rounds is a point interval, yet 5 values cannot bound a median at 95%
    assert against_target(paired_ratio([3.0] * 5, [2.0] * 5), 1.0) == "undecided"
    assert against_target(paired_ratio([3.0] * 6, [2.0] * 6), 1.0) == "meets"
    assert against_target(paired_ratio([3.0, None] * 6, [2.0] * 12), 2.0) == "misses"  # 6 paired rounds of 12
