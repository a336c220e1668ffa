"""Gateway test fixtures: defined in :mod:`gateway_fixtures`, shared with tests/security."""

from gateway_fixtures import anyio_backend, gateway_key_file, gw, keys, make_harness

__all__ = ["anyio_backend", "gateway_key_file", "gw", "keys", "make_harness"]
