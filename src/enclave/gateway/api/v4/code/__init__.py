"""``/v4/code``: code suggestions streamed as server-sent events."""
