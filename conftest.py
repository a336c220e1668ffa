"""Root conftest: plugins for the whole suite."""

pytest_plugins = [
    # Every connection beyond loopback fails the run.
    "tests.network_guard",
    # One summary line per proof: no-network run, soak, fuzzers.
    "tests.summary_lines",
]
