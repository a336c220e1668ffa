"""Attack cases against the instance reuse the instance test fixtures (tests/unit/instance).

Both backends (SQLite and PostgreSQL) run, as for the instance's own tests.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: `tests` package

from tests.unit.instance.conftest import *  # noqa: F403  (fixtures are found by name)
