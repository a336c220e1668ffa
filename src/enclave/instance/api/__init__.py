"""HTTP routes of the instance, one module per surface; :func:`all_routers` mounts them."""

from __future__ import annotations

from fastapi import APIRouter

from enclave.instance.api import (
    admin_ai,
    ai_features,
    cable,
    chat,
    code_suggestions,
    direct_access,
    discovery,
    editor_keys,
    editors,
    gateway_routes,
    graphql_endpoint,
    health,
    openai_access,
    usage,
    users,
)


def all_routers() -> list[APIRouter]:
    # Starlette tries routes in order: the editors' hot endpoint first saves matching it
    # against every other route on each completion (no two routes share a path).
    return [
        code_suggestions.router,
        discovery.router,
        health.router,
        users.router,
        direct_access.router,
        openai_access.router,
        gateway_routes.router,
        chat.router,
        ai_features.router,
        admin_ai.router,
        admin_ai.audit_router,
        editor_keys.router,
        editors.router,
        graphql_endpoint.router,
        cable.router,
        usage.router,
        usage.internal_router,
    ]
