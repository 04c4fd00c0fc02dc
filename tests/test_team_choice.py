"""How the native helper runs a large CPU call (fastclip/csrc/team_choice.cpp): in torch's OpenMP
team or on the calling thread, whichever measured faster.

The policy is tested on replayed timings (``replay_team_choice``: the choices it makes for calls
that take the given seconds in each mode, "t" team / "c" calling thread), so the specification
does not depend on how busy the test machine is.  What does depend on the machine (which mode
wins here) is only checked to have been measured.  Skipped when the helper isn't built, failed
instead under FASTCLIP_REQUIRE_NATIVE=1.
"""
import pytest
import torch

from test_native import helper  # noqa: F401  (the fixture: the built helper, or skip)
from test_native_math import team_mode

TEAM_SLOW = (1.0, 2.0)  # (calling thread, team) seconds: one core of two taken by another process
TEAM_FAST = (2.0, 1.0)  # a quiet machine


def _probe_gaps(trace: str, mode: str) -> list:
    """Calls between consecutive runs of ``mode`` after the first two calls (the first measurements)."""
    at = [i for i, c in enumerate(trace) if c == mode and i >= 2]
    return [b - a for a, b in zip(at, at[1:])]


def test_the_first_call_runs_in_the_team_and_the_second_on_the_calling_thread(helper):
    assert helper.replay_team_choice([TEAM_SLOW] * 2) == "tc"
    assert helper.replay_team_choice([TEAM_FAST] * 2) == "tc"


@pytest.mark.parametrize("times, best, other", ((TEAM_SLOW, "c", "t"), (TEAM_FAST, "t", "c")))
def test_the_faster_mode_runs_and_the_slower_is_probed_ever_more_rarely(helper, times, best, other):
    trace = helper.replay_team_choice([times] * 200)

    assert trace[2:].count(best) >= 0.97 * len(trace[2:])
    gaps = _probe_gaps(trace, other)
    assert gaps == sorted(gaps)  # a probe that loses clearly doubles the interval ...
    assert gaps[-1] == 64  # ... up to 64 calls


def test_a_change_of_load_is_noticed_within_64_calls(helper):
    trace = helper.replay_team_choice([TEAM_SLOW] * 300 + [TEAM_FAST] * 100)

    switched = trace.index("tttt", 300)
    assert switched <= 300 + 64
    assert trace[switched:].count("t") >= 0.9 * len(trace[switched:])


def test_modes_that_are_about_as_fast_are_compared_every_8_calls(helper):
    trace = helper.replay_team_choice([(1.0, 1.1)] * 200)

    assert set(_probe_gaps(trace, "t")) == {8}


def test_a_team_only_slightly_faster_leaves_the_work_to_the_calling_thread(helper):
    """The team also takes the other cores (and leaves them spinning): it must win by 10 %."""
    assert helper.replay_team_choice([(1.0, 0.95)] * 50)[2:].count("c") >= 0.8 * 48
    assert helper.replay_team_choice([(1.0, 0.85)] * 50)[2:].count("t") >= 0.8 * 48


def test_an_unmeasured_call_gives_no_choice(helper):
    assert helper.replay_team_choice([]) == ""
    with pytest.raises(TypeError):
        helper.replay_team_choice([(1.0,)])


def test_the_mode_can_be_forced_and_is_restored(helper):
    assert helper.team_choice() == "auto"
    with team_mode(helper, "caller"):
        assert helper.team_choice() == "caller"
        with team_mode(helper, "team"):
            assert helper.team_choice() == "team"
    assert helper.team_choice() == "auto"


def test_an_unknown_mode_is_refused_and_changes_nothing(helper):
    with pytest.raises(ValueError, match="'auto', 'team' or 'caller'"):
        helper.team_choice("both")
    with pytest.raises(ValueError):
        helper.team_choice(2)

    assert helper.team_choice() == "auto"


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: large calls have no team to choose")
def test_large_calls_in_auto_mode_measure_both_modes(helper):
    if not helper.openmp():
        pytest.skip("a helper built without OpenMP runs every call on the calling thread")
    x = torch.randn(1 << 22, dtype=torch.bfloat16)  # 4 M elements: over the 2 M of a team call
    before = helper.team_stats()["scale 2"]

    for _ in range(3):
        helper.scale_([x], 1.0)

    after = helper.team_stats()["scale 2"]
    assert after["team_calls"] + after["caller_calls"] == before["team_calls"] + before["caller_calls"] + 3
    assert after["team_ns"] > 0 and after["caller_ns"] > 0


def test_small_calls_and_forced_modes_are_not_counted(helper):
    x = torch.randn(1000)
    before = helper.team_stats()

    helper.power_sum([x], 2.0)
    with team_mode(helper, "team"):
        helper.power_sum([torch.randn(1 << 22)], 2.0)

    assert helper.team_stats() == before
