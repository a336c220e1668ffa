"""Today's local date as ISO text (a prompt's ``current_date``), read once per day.

``date.today().isoformat()`` converts the clock to a local date on every render; the text
only changes at local midnight, so it is kept with the span of wall-clock time it holds for
(a clock set back before that span recomputes it too).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable


class LocalDate:
    """Callable: today's local date as ``YYYY-MM-DD``."""

    __slots__ = ("_clock", "_from", "_text", "_until")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._text = ""
        self._from = 0.0  # the local day [_from, _until) that _text names, as epoch seconds
        self._until = 0.0

    def __call__(self) -> str:
        now = self._clock()
        if self._from <= now < self._until:
            return self._text
        today = dt.datetime.fromtimestamp(now).date()
        # Local midnights (naive datetimes read as local time, DST included).
        self._from = dt.datetime.combine(today, dt.time()).timestamp()
        self._until = dt.datetime.combine(today + dt.timedelta(days=1), dt.time()).timestamp()
        self._text = today.isoformat()
        return self._text


current_date: Callable[[], str] = LocalDate()

__all__ = ["LocalDate", "current_date"]
