"""Wire-format constants shared by the instance and the gateway.

These mirror what GitLab's instance sends to GitLab's AI gateway, so that each half of Enclave
is a drop-in for the real one (see ``shared/reference/gitlab-ai-gateway.md`` §2).
"""

from typing import Final

# JWT claims and values (DESIGN.md §3).
AUDIENCE: Final = "gitlab-ai-gateway"
REALM_SELF_MANAGED: Final = "self-managed"
REALM_SAAS: Final = "saas"
TOKEN_LIFETIME_S: Final = 3600
NOT_BEFORE_SKEW_S: Final = 5

# Headers the instance sends with every forwarded request (lower-case: HTTP/2 and ASGI style).
H_AUTHORIZATION: Final = "authorization"
H_AUTH_TYPE: Final = "x-gitlab-authentication-type"
AUTH_TYPE_OIDC: Final = "oidc"
H_INSTANCE_ID: Final = "x-gitlab-instance-id"
H_REALM: Final = "x-gitlab-realm"
H_GLOBAL_USER_ID: Final = "x-gitlab-global-user-id"
H_HOST_NAME: Final = "x-gitlab-host-name"
H_VERSION: Final = "x-gitlab-version"
H_REQUEST_ID: Final = "x-request-id"
# The model's token counts on a gateway answer that is not streamed (the instance's usage).
H_ENCLAVE_INPUT_TOKENS: Final = "X-Enclave-Input-Tokens"
H_ENCLAVE_OUTPUT_TOKENS: Final = "X-Enclave-Output-Tokens"
H_ERROR_ORIGIN: Final = "x-gitlab-error-origin"
H_VERBOSE_AI_LOGS: Final = "x-gitlab-enabled-instance-verbose-ai-logs"

# Unit primitives (token scopes) per feature.
UP_COMPLETE_CODE: Final = "complete_code"
UP_GENERATE_CODE: Final = "generate_code"
UP_CODE_SUGGESTIONS: Final = "code_suggestions"  # legacy scope GitLab's gateway still accepts
UP_DUO_CHAT: Final = "duo_chat"
# GitLab 18: /v2/chat/agent (the prompt chat/react) needs this one; duo_chat alone is refused.
UP_DUO_CLASSIC_CHAT: Final = "duo_classic_chat"

# The AI gateway API generations an instance can speak (``instance.ai_gateway_api``).
GITLAB17: Final = "gitlab17"
GITLAB18: Final = "gitlab18"

# Version string the instance reports in X-Gitlab-Version (GitLab's gateway logs it, and
# since GitLab 18 decides the Duo Core chat cutoff from it), per API generation.
INSTANCE_VERSION: Final = "17.9.0-enclave"
INSTANCE_VERSION_18: Final = "18.11.0-enclave"

# The prompt_version a GitLab 18 instance asks for, where it is not "^1.0.0".
GITLAB18_PROMPT_VERSIONS: Final[dict[str, str]] = {
    "summarize_new_merge_request": "^2.0.0",
    "summarize_review": "^2.0.0",
}


# Claim that marks the instance's tokens for the gateway's OpenAI-compatible API. Such a token
# is accepted there and nowhere else (a user holds it, unlike the instance's own tokens).
CLAIM_SURFACE: Final = "enclave_surface"
SURFACE_OPENAI: Final = "openai"
# The id of the personal access token an OpenAI-API token was made from: the instance publishes
# revoked ids to the gateway (with the feature→model routes), which then refuses those tokens.
CLAIM_PAT_ID: Final = "enclave_pat_id"
# The personal editor key a token is (instance/editor_keys.py): revocable by this id.
CLAIM_EDITOR_KEY_ID: Final = "enclave_editor_key_id"
