"""Version 2 endpoints."""
