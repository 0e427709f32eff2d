import math
from dataclasses import replace

import pytest

from hutch.model.errors import Invalid
from hutch.model.machine import (
    MAX_TIMEOUT,
    Desired,
    Machine,
    MachineSpec,
    MachineState,
    OnTimeout,
    check_timeout,
    env_dict,
    env_entries,
)


@pytest.mark.parametrize(
    ("mapping", "entries"),
    [({}, ()), ({"A": "1", "B": ""}, ("A=1", "B=")), ({"URL": "a=b&c=d"}, ("URL=a=b&c=d",))],
)
def test_the_environment_s_two_shapes_convert_both_ways(
    mapping: dict[str, str], entries: tuple[str, ...]
) -> None:
    assert env_entries(mapping) == entries
    assert env_dict(entries) == mapping


def test_a_name_s_last_entry_wins() -> None:
    assert env_dict(("A=1", "A=2")) == {"A": "2"}


def _running(timeout: float | None = 60.0) -> Machine:
    spec = MachineSpec("busybox", timeout_s=timeout)
    return Machine("m-1", "p-1", "m", spec, MachineState.STARTING, Desired.RUNNING, 0.0, 0.0)


def test_only_time_spent_running_counts_toward_a_timeout() -> None:
    S = MachineState
    m = _running(60.0).entering(S.RUNNING, 100.0)  # ran from 100
    assert (m.expires_at, m.time_left(110.0)) == (160.0, 50.0)
    m = m.entering(S.SUSPENDED, 130.0)  # 30 s run; the clock stands still while suspended
    assert (m.ran_s, m.running_since, m.expires_at) == (30.0, None, None)
    assert m.time_left(5000.0) == 30.0
    m = m.entering(S.RUNNING, 1000.0)  # resumed much later: 30 s left from then
    assert (m.expires_at, m.time_left(1010.0)) == (1030.0, 20.0)
    assert m.entering(S.RUNNING, 1020.0).running_since == 1000.0  # said again: no new start
    m = replace(m, extended_s=15.0)  # extended: 15 s later
    assert (m.expires_at, m.lifetime_s) == (1045.0, 75.0)
    ended = m.entering(S.STOPPING, 1050.0)
    assert (ended.ran_s, ended.expires_at, ended.time_left(2000.0)) == (80.0, None, 0.0)
    again = ended.anew()  # started again: its whole timeout, nothing added
    assert (again.time_left(0.0), again.lifetime_s) == (60.0, 60.0)


def test_a_machine_without_a_timeout_never_expires() -> None:
    m = _running(None).entering(MachineState.RUNNING, 100.0)
    assert (m.expires_at, m.time_left(1e9), m.lifetime_s, m.running_since) == (
        None, None, None, 100.0
    )  # fmt: skip


@pytest.mark.parametrize(
    ("seconds", "why"),
    [
        (0.0, "not 0 s"),
        (-5.0, "not -5 s"),
        (MAX_TIMEOUT + 1, "at most 366d"),
        (math.inf, "not inf s"),
        (math.nan, "not a number"),
    ],
)
def test_a_timeout_is_positive_and_not_absurd(seconds: float, why: str) -> None:
    with pytest.raises(Invalid, match=why):
        MachineSpec("busybox", timeout_s=seconds).check_new()
    assert check_timeout(MAX_TIMEOUT) == MAX_TIMEOUT


def test_only_runtimes_that_suspend_take_on_timeout_suspend() -> None:
    MachineSpec("busybox", runtime="microvm", on_timeout=OnTimeout.SUSPEND).check_new()
    with pytest.raises(Invalid, match="container runtime cannot be suspended"):
        MachineSpec("busybox", runtime="container", on_timeout=OnTimeout.SUSPEND).check_new()
