"""``/v2/chat``: the Duo Chat agent."""
