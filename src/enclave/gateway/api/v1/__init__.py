"""Version 1 endpoints."""
