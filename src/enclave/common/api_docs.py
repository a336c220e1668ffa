"""A self-contained API documentation page rendered from an OpenAPI document.

Swagger UI and ReDoc load their scripts from a CDN, which an air-gapped browser cannot reach;
this page is plain HTML (no script, no external asset) generated on the server, so ``/docs``
works on a network with nothing but the service itself.
"""

from __future__ import annotations

import html
import json
from typing import Any, Final

# No script, no external asset: the page can only style itself.
DOCS_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"

_METHODS: Final = ("get", "post", "put", "patch", "delete")

_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h2{margin-top:2rem;font-size:1.1rem}
.method{display:inline-block;min-width:4rem;font-weight:bold;text-transform:uppercase}
pre{background:#f4f4f4;padding:.75rem;overflow:auto;font-size:.85rem}
details{margin:.5rem 0}
"""


def _schema_text(schema: dict[str, Any]) -> str:
    return html.escape(json.dumps(schema, indent=2, sort_keys=True))


def _operation_html(path: str, method: str, operation: dict[str, Any]) -> str:
    parts = [
        f'<h2 id="{html.escape(method + path)}"><span class="method">{html.escape(method)}</span>'
        f"<code>{html.escape(path)}</code></h2>",
        f"<p>{html.escape(operation.get('summary', ''))}</p>",
    ]
    if operation.get("description"):
        parts.append(f"<p>{html.escape(operation['description'])}</p>")
    parameters = operation.get("parameters", [])
    if parameters:
        items = "".join(
            f"<li><code>{html.escape(p['name'])}</code> ({html.escape(p['in'])}"
            f"{', required' if p.get('required') else ''})</li>"
            for p in parameters
        )
        parts.append(f"<ul>{items}</ul>")
    body = operation.get("requestBody")
    if body:
        schema = body["content"]["application/json"]["schema"]
        parts.append(
            f"<details><summary>Request body</summary><pre>{_schema_text(schema)}</pre></details>"
        )
    return "\n".join(parts)


def render_docs_page(document: dict[str, Any]) -> str:
    """The HTML page for ``document``: every operation, its parameters and body schema."""
    info = document.get("info", {})
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    sections = [
        _operation_html(path, method, item[method])
        for path, item in sorted(document.get("paths", {}).items())
        for method in _METHODS
        if method in item
    ]
    components = document.get("components", {}).get("schemas", {})
    schemas = "".join(
        f'<details id="schema-{html.escape(name)}"><summary>{html.escape(name)}</summary>'
        f"<pre>{_schema_text(schema)}</pre></details>"
        for name, schema in sorted(components.items())
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{title}</h1><p>The machine-readable document is "
        '<a href="openapi.json"><code>openapi.json</code></a>.</p>'
        + "\n".join(sections)
        + (f"<h2>Schemas</h2>{schemas}" if schemas else "")
        + "</body></html>"
    )
