"""Code suggestions, whatever the API version that asks: GitLab's request body (schemas), the
pipeline every code-suggestion endpoint shares (authenticate → scope → body → model → answer),
and the two use cases, completions and generations, with their prompts and post-processing.

The endpoints (``api/v2/code/*``, ``api/v4/code/suggestions``) are thin: they pick a use case
and call :func:`pipeline.serve`, so no endpoint module imports another.
"""
