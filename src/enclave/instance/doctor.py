"""``enclave doctor``: check a whole setup end to end (like GitLab's
``gitlab:duo:verify_self_hosted_setup``) and say, for each problem, how to fix it.

It changes nothing: no migration, no key creation, no audit event. Checks, in order: the
database and its schema, the secret key and every stored model API key, the signing key, the
feature map, the instance's own URL, the AI gateway, a real code completion through the gateway
(which proves the gateway trusts this instance's tokens), and a connection test of every model
that a feature uses.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from enclave.common.features import GITLAB_GATEWAY_CODE_FAMILIES
from enclave.common.http1 import HttpClientError
from enclave.config import EnclaveSettings
from enclave.instance import ai_settings
from enclave.instance.connection import ModelUnderTest, check_connection
from enclave.instance.db.engine import make_engine, make_session_factory
from enclave.instance.db.migrate import current_revision, head_revision
from enclave.instance.db.models import FeatureProvider, InstanceSetting, SelfHostedModel
from enclave.instance.features import (
    API_TOKEN_PURPOSE,
    FEATURE_UNIT_PRIMITIVES,
    Feature,
    FeatureMisconfiguredError,
    FeatureUnavailableError,
    effective_setting,
    incompatibility,
    resolve_feature,
)
from enclave.instance.gateway_client import (
    ForwardIdentity,
    GatewayClient,
    GatewayUnavailableError,
    gateway_headers,
    host_name,
    pseudonymous_user_id,
)
from enclave.instance.keys import KeyStore, KeyStoreError
from enclave.instance.secrets import (
    SecretBox,
    SecretDecryptError,
    SecretKeyError,
    load_existing_secret_box,
)
from enclave.instance.tokens import TokenMinter

Status = Literal["ok", "warn", "fail"]
HTTP_TIMEOUT_S = 5.0
_E2E_BODY = {
    "current_file": {
        "file_name": "doctor.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "",
    },
    "stream": False,
    "choices_count": 0,
    "context": [],
    "telemetry": [],
    "prompt_version": 2,
    "prompt": "",
    "model_provider": "litellm",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None

    def view(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    checks: list[Check]
    box: SecretBox | None = None
    keys: KeyStore | None = None
    instance_id: uuid.UUID | None = None
    salt: bytes = b""
    # The model fields of a code completion request, when code_completions has a usable model.
    completion_model: dict[str, Any] | None = None
    # The family of the self-hosted model each feature uses.
    families: dict[Feature, str] = field(default_factory=dict)


async def run_checks(settings: EnclaveSettings) -> list[Check]:
    state = _State([])
    add = state.checks.append
    engine = make_engine(settings.database_url)
    try:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            add(
                Check(
                    "database",
                    "fail",
                    f"cannot connect to {engine.url.render_as_string(hide_password=True)} "
                    f"({type(exc).__name__})",
                    "check ENCLAVE_DATABASE_URL (instance.database_url) and that the database "
                    "server runs and accepts this user",
                )
            )
            return state.checks
        add(Check("database", "ok", f"{engine.dialect.name} database reachable"))
        if not _schema_check(engine, add):
            return state.checks
        sessions = make_session_factory(engine)
        with sessions() as session:
            row = session.get(InstanceSetting, 1)
            if row is not None:
                state.instance_id, state.salt = row.instance_id, row.user_id_salt
            _secret_checks(settings, session, state)
            _signing_key_check(settings, state)
            effective = ai_settings.effective(session, settings)
            feature_models = _feature_checks(
                session, add, state.families, effective.vendored_ai_gateway_url
            )
            models = {
                m.id: m
                for m in session.scalars(
                    select(SelfHostedModel).where(SelfHostedModel.id.in_(feature_models))
                )
            }
            under_test = [_under_test(m, state.box) for m in models.values()]
            if state.box is not None:
                try:
                    resolved = resolve_feature(session, state.box, Feature.CODE_COMPLETIONS)
                except (FeatureUnavailableError, FeatureMisconfiguredError):
                    resolved = None
                if resolved is not None:
                    state.completion_model = {
                        "model_name": resolved.family,
                        "model_endpoint": resolved.endpoint,
                        "model_api_key": resolved.api_key,
                        "model_identifier": resolved.identifier,
                    }
        await _network_checks(settings, effective, state, under_test)
    finally:
        engine.dispose()
    return state.checks


def _schema_check(engine: Any, add: Any) -> bool:
    current, head = current_revision(engine), head_revision()
    if current is None:
        add(
            Check(
                "schema",
                "fail",
                "the database is empty",
                "start the instance once (enclave up or enclave instance): it creates the schema",
            )
        )
        return False
    if current == head:
        add(Check("schema", "ok", f"schema at the newest revision {head}"))
        return True
    known = current < head
    add(
        Check(
            "schema",
            "warn" if known else "fail",
            f"schema at revision {current}, this release expects {head}",
            "start the instance once: it migrates at start"
            if known
            else "the database was migrated by a newer Enclave; run that release",
        )
    )
    return known


def _secret_checks(settings: EnclaveSettings, session: Any, state: _State) -> None:
    add = state.checks.append
    source = (
        "ENCLAVE_SECRET_KEY" if settings.secret_key is not None else str(settings.secret_key_file)
    )
    try:
        state.box = load_existing_secret_box(settings)
    except (OSError, SecretKeyError) as exc:
        add(
            Check(
                "secret key",
                "fail",
                f"cannot load the secret key from {source}: {exc}",
                "restore the key file (or ENCLAVE_SECRET_KEY) from your backup; without it the "
                "stored model API keys cannot be decrypted and must be re-entered",
            )
        )
        return
    add(Check("secret key", "ok", f"loaded from {source} (key id {state.box.key_id.hex()})"))
    broken: list[str] = []
    total = 0
    for model in session.scalars(select(SelfHostedModel)):
        if model.api_token_encrypted is None:
            continue
        total += 1
        try:
            state.box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
        except SecretDecryptError:
            broken.append(model.name)
    if broken:
        add(
            Check(
                "model API keys",
                "fail",
                f"cannot decrypt the API keys of: {', '.join(sorted(broken))}",
                "restore the secret key they were stored with, or re-enter each key: "
                "enclave models update NAME --api-key-file FILE",
            )
        )
    else:
        add(Check("model API keys", "ok", f"{total} stored API key(s) decrypt"))


def _signing_key_check(settings: EnclaveSettings, state: _State) -> None:
    try:
        state.keys = KeyStore.load(settings.keys_dir)
    except KeyStoreError as exc:
        state.checks.append(
            Check(
                "signing key",
                "fail",
                str(exc),
                "start the instance once (it creates the signing key), or restore "
                f"{settings.keys_dir / 'signing'} from your backup",
            )
        )
        return
    state.checks.append(
        Check("signing key", "ok", f"active key {state.keys.active.kid} ({state.keys.active.alg})")
    )


def _feature_checks(
    session: Any,
    add: Any,
    families: dict[Feature, str] | None = None,
    vendored_url: str | None = None,
) -> set[int]:
    """Feature map problems; returns the ids of the models that features use (and records
    each feature's model family in ``families``). ``vendored_url``: the vendored AI gateway,
    which serves the features set to vendored."""
    used: set[int] = set()
    unassigned: list[str] = []
    vendored: list[str] = []
    incompatible: list[str] = []
    for feature in Feature:
        row, _source = effective_setting(session, feature)
        provider = row.provider if row is not None else FeatureProvider.UNASSIGNED.value
        if provider == FeatureProvider.UNASSIGNED or (
            provider == FeatureProvider.SELF_HOSTED
            and row is not None
            and row.self_hosted_model is None
        ):
            unassigned.append(feature.value)
        elif provider == FeatureProvider.VENDORED:
            vendored.append(feature.value)
        elif provider == FeatureProvider.SELF_HOSTED and row is not None and row.self_hosted_model:
            used.add(row.self_hosted_model.id)
            if families is not None:
                families[feature] = row.self_hosted_model.family
            problem = incompatibility(feature, row.self_hosted_model.family)
            if problem:
                incompatible.append(problem)
    if incompatible:
        add(
            Check(
                "features",
                "fail",
                "; ".join(incompatible),
                "assign a compatible model: enclave features set FEATURE --model NAME",
            )
        )
    for feature_name in ("code_completions", "duo_chat"):
        if feature_name in unassigned:
            add(
                Check(
                    f"feature {feature_name}",
                    "fail",
                    f"{feature_name} has no model",
                    f"enclave models add ... then enclave features set {feature_name} --model NAME",
                )
            )
    others = [f for f in unassigned if f not in ("code_completions", "duo_chat")]
    if others:
        add(
            Check(
                "other features",
                "warn",
                f"no model for: {', '.join(others)}",
                "assign models if your users need these features (enclave features set)",
            )
        )
    if vendored and vendored_url:
        add(
            Check(
                "vendored features",
                "ok",
                f"served by the vendored AI gateway at {vendored_url}: " + ", ".join(vendored),
            )
        )
    elif vendored:
        add(
            Check(
                "vendored features",
                "fail",
                "set to vendored, but no vendored AI gateway is configured: " + ", ".join(vendored),
                "enclave settings set --vendored-gateway-url URL, or assign a self-hosted "
                "model (enclave features set FEATURE --model NAME)",
            )
        )
    if not incompatible and "code_completions" not in unassigned:
        add(Check("features", "ok", f"{len(used)} self-hosted model(s) serve the features"))
    return used


def _under_test(model: SelfHostedModel, box: SecretBox | None) -> ModelUnderTest:
    key: str | None = None
    if model.api_token_encrypted is not None and box is not None:
        try:
            key = box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
        except SecretDecryptError:
            key = None
    return ModelUnderTest(
        model.name, model.family, model.provider, model.endpoint, model.identifier, key
    )


async def _network_checks(
    settings: EnclaveSettings,
    effective: ai_settings.EffectiveAiSettings,
    state: _State,
    models: list[ModelUnderTest],
) -> None:
    add = state.checks.append
    issuer = settings.instance.issuer()
    gateway_url = effective.ai_gateway_url
    client = GatewayClient(gateway_url, effective.ai_gateway_timeout_seconds)
    await client.start()
    try:
        try:
            status = await client.get(f"{issuer}/-/readiness", HTTP_TIMEOUT_S)
            add(
                Check("instance", "ok", f"{issuer} is ready")
                if status == 200
                else Check(
                    "instance",
                    "fail",
                    f"{issuer}/-/readiness answered {status}",
                    "see that answer and the instance log",
                )
            )
        except (HttpClientError, TimeoutError) as exc:
            add(
                Check(
                    "instance",
                    "warn",
                    f"the instance does not answer at {issuer} ({type(exc).__name__})",
                    "start it (enclave up or enclave instance); the gateway fetches this "
                    "instance's keys from there. If it runs elsewhere, set "
                    "ENCLAVE_INSTANCE__EXTERNAL_URL to its URL",
                )
            )
        if effective.vendored_ai_gateway_url is not None:
            await _vendored_gateway_check(client, effective.vendored_ai_gateway_url, add)
        try:
            status = await client.get(f"{gateway_url}/monitoring/healthz", HTTP_TIMEOUT_S)
        except (HttpClientError, TimeoutError) as exc:
            add(
                Check(
                    "AI gateway",
                    "fail",
                    f"cannot reach the AI gateway at {gateway_url} ({type(exc).__name__})",
                    "start the gateway (enclave gateway) or set the right URL: "
                    "enclave settings set --gateway-url URL",
                )
            )
            return
        if status != 200:
            add(
                Check(
                    "AI gateway",
                    "fail",
                    f"{gateway_url}/monitoring/healthz answered {status}",
                    "check the gateway's log",
                )
            )
            return
        add(Check("AI gateway", "ok", f"{gateway_url} is healthy"))
        await _gateway_kind_check(client, gateway_url, state)
        if state.keys is None or state.instance_id is None:
            return
        minter = TokenMinter(
            state.keys,
            issuer=issuer,
            instance_id=state.instance_id,
            lifetime_s=settings.instance.token_lifetime_s,
        )
        identity = ForwardIdentity(
            instance_id=str(state.instance_id),
            host_name=host_name(issuer),
            global_user_id=pseudonymous_user_id(state.salt, 0),
            request_id=f"doctor-{uuid.uuid4().hex}",
        )
        await _end_to_end(client, minter, identity, gateway_url, issuer, state)
        for model in models:
            result = await check_connection(client, minter, identity, model)
            if result.success:
                add(Check(f"model {model.name}", "ok", result.message))
            elif result.result == "gateway_error" and result.gateway_status in (404, 405):
                add(
                    Check(
                        f"model {model.name}",
                        "warn",
                        "not tested: this AI gateway has no model configuration check",
                        "the end-to-end completion check covers the code completion model",
                    )
                )
            else:
                add(
                    Check(
                        f"model {model.name}",
                        "fail",
                        result.message,
                        "fix the model (enclave models update NAME ...), then run "
                        "enclave models test NAME",
                    )
                )
    finally:
        await client.close()


async def _vendored_gateway_check(client: GatewayClient, url: str, add: Any) -> None:
    """The vendored (shared) AI gateway answers its health check. Its models are not called:
    each call would be billed by the vendor; a vendored request shows the rest."""
    try:
        status = await client.get(f"{url}/monitoring/healthz", HTTP_TIMEOUT_S)
    except (HttpClientError, TimeoutError) as exc:
        add(
            Check(
                "vendored AI gateway",
                "fail",
                f"cannot reach the vendored AI gateway at {url} ({type(exc).__name__})",
                "check the URL (enclave settings set --vendored-gateway-url URL) and that "
                "this instance may reach it",
            )
        )
        return
    if status != 200:
        add(
            Check(
                "vendored AI gateway",
                "fail",
                f"{url}/monitoring/healthz answered {status}",
                "ask the shared gateway's operator",
            )
        )
        return
    add(Check("vendored AI gateway", "ok", f"{url} is healthy"))


async def is_enclave_gateway(client: GatewayClient, gateway_url: str) -> bool | None:
    """Whether the gateway is Enclave's, told by its answer: Enclave's serves the
    OpenAI-compatible ``GET /v1/models`` (401 without a token), GitLab's has no such route
    (404). None when it cannot be told."""
    try:
        status = await client.get(f"{gateway_url}/v1/models", HTTP_TIMEOUT_S)
    except (HttpClientError, TimeoutError):
        return None
    if status == 404:
        return False
    return status in (200, 401, 403)


async def _gateway_kind_check(client: GatewayClient, gateway_url: str, state: _State) -> None:
    """With GitLab's own AI gateway: the features whose model family it refuses."""
    add = state.checks.append
    enclave = await is_enclave_gateway(client, gateway_url)
    if enclave is not False:
        return
    refused = [
        (feature, family, allowed)
        for feature, allowed in GITLAB_GATEWAY_CODE_FAMILIES.items()
        if (family := state.families.get(feature)) is not None and family not in allowed
    ]
    if not refused:
        add(
            Check(
                "GitLab AI gateway",
                "ok",
                f"{gateway_url} is GitLab's AI gateway; it serves the code features' model "
                "families",
            )
        )
        return
    problems = "; ".join(
        f"{feature.value} uses a {family} model, which GitLab's gateway refuses on "
        f"/v2/code/* (families it serves: {', '.join(sorted(allowed))})"
        for feature, family, allowed in refused
    )
    add(
        Check(
            "GitLab AI gateway",
            "fail",
            f"{gateway_url} is GitLab's AI gateway, not Enclave's: {problems}",
            "assign a model of a family it serves (enclave features set FEATURE --model NAME), "
            "or point the instance at Enclave's gateway, which serves every family",
        )
    )


async def _end_to_end(
    client: GatewayClient,
    minter: TokenMinter,
    identity: ForwardIdentity,
    gateway_url: str,
    issuer: str,
    state: _State,
) -> None:
    """A real code completion through the gateway, as GitLab's end-to-end probe does."""
    add = state.checks.append
    if state.completion_model is None:
        return
    token = minter.token([FEATURE_UNIT_PRIMITIVES[Feature.CODE_COMPLETIONS]]).token
    body = {
        **_E2E_BODY,
        **{k: v for k, v in state.completion_model.items() if v is not None},
    }
    try:
        response = await client.post(
            "/v2/code/completions",
            orjson.dumps(body),
            gateway_headers(token, identity),
            timeout_s=60,
        )
    except GatewayUnavailableError as exc:
        add(Check("end-to-end completion", "fail", exc.message, "check the gateway's log"))
        return
    content = await response.read()
    response.release()
    if response.status == 200:
        add(
            Check(
                "end-to-end completion",
                "ok",
                "the gateway accepted this instance's token and the code completion model answered",
            )
        )
        return
    detail = content.decode("utf-8", "replace")[:300]
    if response.status in (401, 403):
        add(
            Check(
                "end-to-end completion",
                "fail",
                f"the gateway refused this instance's token ({response.status}: {detail})",
                f"the gateway must trust {issuer}: set ENCLAVE_GATEWAY__ISSUER_URL={issuer} on "
                "the gateway (or add it to gateway.trusted_issuers) and check it can fetch "
                f"{issuer}/oauth/discovery/keys",
            )
        )
        return
    add(
        Check(
            "end-to-end completion",
            "fail",
            f"{gateway_url}/v2/code/completions answered {response.status}: {detail}",
            "run enclave models test for the code completion model and check the gateway log",
        )
    )
