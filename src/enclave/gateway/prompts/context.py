"""The file around the cursor, before it goes into a code suggestion prompt.

Which language the file is in (reported back as ``model.lang``) and how much of the text
before and after the cursor is sent: the instance already trims, direct callers may not.
"""

from __future__ import annotations

import posixpath
from typing import Final

# Context sent around the cursor for completions (generations use more; see their module).
MAX_PREFIX_CHARS: Final = 8000
MAX_SUFFIX_CHARS: Final = 4000

# -- language -------------------------------------------------------------------------------

_EXTENSIONS: Final[dict[str, str]] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".swift": "swift",
    ".sh": "shell",
    ".bash": "shell",
    ".sql": "sql",
    ".html": "html",
    ".css": "css",
    ".scss": "scss",
    ".vue": "vue",
    ".svelte": "svelte",
    ".lua": "lua",
    ".r": "r",
    ".dart": "dart",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".hs": "haskell",
    ".clj": "clojure",
    ".tf": "terraform",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
    ".md": "markdown",
}


def detect_language(language_identifier: str | None, file_name: str) -> str | None:
    """The language reported as ``model.lang``: the editor's identifier, else the extension."""
    if language_identifier and language_identifier.strip():
        return language_identifier.strip().lower()
    return _EXTENSIONS.get(posixpath.splitext(file_name)[1].lower())


def trim_context(
    prefix: str,
    suffix: str,
    max_prefix_chars: int = MAX_PREFIX_CHARS,
    max_suffix_chars: int = MAX_SUFFIX_CHARS,
) -> tuple[str, str]:
    """Keep the text nearest the cursor, cutting at line boundaries where possible."""
    if len(prefix) > max_prefix_chars:
        prefix = prefix[-max_prefix_chars:]
        newline = prefix.find("\n")
        if 0 <= newline < len(prefix) - 1:
            prefix = prefix[newline + 1 :]
    if len(suffix) > max_suffix_chars:
        suffix = suffix[:max_suffix_chars]
        newline = suffix.rfind("\n")
        if newline > 0:
            suffix = suffix[: newline + 1]
    return prefix, suffix
