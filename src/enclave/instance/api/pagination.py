"""GitLab's offset pagination: ``page`` / ``per_page`` in, ``X-Total``, ``X-Total-Pages``,
``X-Page``, ``X-Per-Page``, ``X-Next-Page``, ``X-Prev-Page`` and ``Link`` out.

Defaults are GitLab's: page 1, 20 per page, at most 100 per page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import Request, Response

from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.db.models import MAX_ID

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
MAX_PAGE = MAX_ID


@dataclass(frozen=True)
class Page:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def _positive(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    digits = raw.lstrip("0")
    if not raw.isdigit() or not digits:
        raise InstanceAPIError(400, f"{name} is invalid: it must be a whole number of 1 or more")
    # A page past any table's end is just empty; capped so the offset stays a database integer
    # (and int() never sees thousands of digits).
    return MAX_PAGE if len(digits) > len(str(MAX_PAGE)) else min(int(digits), MAX_PAGE)


def page_params(request: Request) -> Page:
    """A FastAPI dependency reading ``page`` and ``per_page`` (per_page above 100 is capped)."""
    page = _positive(request, "page", 1)
    per_page = min(_positive(request, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
    return Page(page, per_page)


def set_headers(request: Request, response: Response, page: Page, total: int) -> None:
    pages = max(1, math.ceil(total / page.per_page))
    next_page = page.page + 1 if page.page < pages else None
    prev_page = page.page - 1 if page.page > 1 else None
    response.headers["X-Total"] = str(total)
    response.headers["X-Total-Pages"] = str(pages)
    response.headers["X-Page"] = str(page.page)
    response.headers["X-Per-Page"] = str(page.per_page)
    response.headers["X-Next-Page"] = str(next_page or "")
    response.headers["X-Prev-Page"] = str(prev_page or "")
    base = str(request.url.remove_query_params(["page", "per_page"]))
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "per_page")]

    def link(number: int, rel: str) -> str:
        params = urlencode([*query, ("page", number), ("per_page", page.per_page)])
        return f'<{base.split("?", 1)[0]}?{params}>; rel="{rel}"'

    links = []
    if prev_page:
        links.append(link(prev_page, "prev"))
    if next_page:
        links.append(link(next_page, "next"))
    links.append(link(1, "first"))
    links.append(link(pages, "last"))
    response.headers["Link"] = ", ".join(links)
