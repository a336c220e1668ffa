"""Version 4 of GitLab's AI gateway API."""
