"""``/v1/chat/*``: GitLab's legacy chat API."""
