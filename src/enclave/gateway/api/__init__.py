"""HTTP endpoints, by API version (mirrors GitLab's AI gateway routes)."""
