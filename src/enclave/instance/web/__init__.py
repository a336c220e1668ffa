"""The instance's web UI: administration under ``/admin``, self-service under
``/-/user_settings/``, sign-in under ``/users/``.

Server-rendered (Jinja2 templates in ``templates/``, one stylesheet in ``static/``, no script
and nothing from a CDN: it works air-gapped). Pages call the same domain functions as the REST
API and the CLI (registry, feature settings, AI settings, accounts, editor keys, audit), so
every change is validated and audited the same way. Sign-in, sessions and CSRF are in
:mod:`enclave.instance.web.session_auth`.
"""

from __future__ import annotations

from fastapi import APIRouter


def web_routers() -> list[APIRouter]:
    from enclave.instance.web import (
        admin_pages,
        dashboard,
        models_pages,
        profile_pages,
        signin,
        usage_pages,
        users_pages,
    )

    return [
        signin.router,
        dashboard.router,
        models_pages.router,
        admin_pages.router,
        users_pages.router,
        usage_pages.router,
        profile_pages.router,
    ]
