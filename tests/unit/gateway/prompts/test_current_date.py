"""A prompt's ``current_date``: the local date of the clock, kept for the day it names."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.gateway.prompts.current_date import LocalDate, current_date


def _local(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment).date().isoformat()


def test_it_is_todays_date() -> None:
    assert current_date() == dt.date.today().isoformat()


def test_the_date_changes_at_local_midnight_and_when_the_clock_goes_back() -> None:
    midnight = dt.datetime.combine(dt.date(2026, 12, 6), dt.time()).timestamp()
    now = [midnight - 1.0]
    today = LocalDate(lambda: now[0])
    assert today() == "2026-12-05"
    now[0] = midnight - 0.000001
    assert today() == "2026-12-05"
    now[0] = midnight
    assert today() == "2026-12-06"
    now[0] = midnight - 3 * 86_400.0  # a clock set back: no stale date
    assert today() == "2026-12-03"


@settings(max_examples=300)
@given(st.lists(st.floats(1.6e9, 2.2e9), min_size=1, max_size=20))
def test_any_sequence_of_clock_readings_gives_their_local_dates(moments: list[float]) -> None:
    clock = iter(moments)
    today = LocalDate(lambda: next(clock))
    assert [today() for _ in moments] == [_local(moment) for moment in moments]
