"""``/v1/prompts/*``: GitLab's prompt registry."""
