"""The garbage collector's settings for a serving process.

Both roles call :func:`settle_after_start_up` once their start-up is done:

* what start-up allocated (modules, routes, settings, keys, pooled sessions) lives as long as
  the process, so it is frozen out of the collector's view: full collections over it were the
  gateway's p99 spikes under load (50-120 ms each) and paused the instance for hundreds of ms;
* a request's garbage is freed by reference counting, but every ~700 container allocations
  CPython runs a young-generation collection that walks every young object still alive, which
  under load is the in-flight requests' objects: in the bench profiles those collections were
  4-5 % of the gateway's CPU and 5-7 % of the instance's (issue 14). A larger young-generation
  threshold makes them rarer (and each walks about as much), so their cost per request falls by
  that factor; cyclic garbage waits a little longer, bounded by the threshold in objects.
"""

from __future__ import annotations

import gc
from typing import Final

# Container allocations (net of frees) between young-generation collections; CPython's is 700.
YOUNG_THRESHOLD: Final = 20_000


def settle_after_start_up() -> None:
    """Collect once, freeze what survives, and make young collections rarer."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
