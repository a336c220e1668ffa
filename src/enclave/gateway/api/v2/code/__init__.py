"""Code suggestions: completions and generations."""
