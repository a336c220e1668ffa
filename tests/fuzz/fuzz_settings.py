"""How hard the fuzzers try: bounded for CI, more with ``ENCLAVE_FUZZ_EXAMPLES``."""

from __future__ import annotations

import os
from typing import Final

from hypothesis import HealthCheck, settings

# Hypothesis examples per property (and schemathesis cases per operation). CI: 60, a few
# seconds each; ENCLAVE_FUZZ_EXAMPLES=2000 for a long hunt.
EXAMPLES: Final = int(os.environ.get("ENCLAVE_FUZZ_EXAMPLES", "60"))
# A parser call that takes longer than this on hostile input counts as a hang.
HANG_S: Final = 10.0

FUZZ: Final = settings(
    max_examples=EXAMPLES,
    deadline=None,  # shared, slow CI cores: the hang bound above is what counts
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("ENCLAVE_FUZZ_RANDOM") != "1",  # reproducible in CI
    database=None,
)
