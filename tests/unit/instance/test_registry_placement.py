"""Where a cloud model runs: a Bedrock model's region, a Vertex AI model's project and location.

Saved as the endpoint the gateway would derive from its own settings, so the model's value wins
over the gateway-wide one; the views read them back from the endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from enclave.gateway.models import providers
from enclave.gateway.models.providers import (
    BEDROCK,
    VERTEX_AI,
    ProviderSettings,
    default_endpoint,
    install_settings,
)
from enclave.instance.admin_errors import InvalidInputError
from enclave.instance.registry import (
    IDENTIFIER_PREFIXES,
    PROVIDER_TITLES,
    place_endpoint,
    placement_base,
    placement_of,
)
from tests.unit.instance.admin_helpers import ADMIN, Api
from tests.unit.instance.conftest import LiveInstance

MODELS = f"{ADMIN}/self_hosted_models"
BEDROCK_KEY = "AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
VPCE = "https://vpce-0a1b2c3d-abcdefgh.bedrock-runtime.eu-west-1.vpce.amazonaws.com"


def test_instance_offers_exactly_the_gateway_providers() -> None:
    served = {providers.FIELD_PROVIDERS[kind] for kind in IDENTIFIER_PREFIXES}
    assert served == set(providers.PROVIDERS)
    assert set(PROVIDER_TITLES) == set(IDENTIFIER_PREFIXES)
    for kind, prefix in IDENTIFIER_PREFIXES.items():
        assert providers.IDENTIFIER_PROVIDERS[prefix.rstrip("/")] == providers.FIELD_PROVIDERS[kind]


def test_bedrock_region_becomes_the_regional_endpoint() -> None:
    endpoint = place_endpoint("bedrock", None, region=" eu-central-1 ")
    assert endpoint == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert placement_of("bedrock", endpoint) == {
        "region": "eu-central-1",
        "project": None,
        "location": None,
    }
    assert placement_base("bedrock", endpoint) is None
    # A VPC endpoint of the same region is kept; its region is read back from its host.
    assert place_endpoint("bedrock", VPCE, region="eu-west-1") == VPCE
    assert placement_of("bedrock", VPCE)["region"] == "eu-west-1"
    assert placement_base("bedrock", VPCE) == VPCE
    assert place_endpoint("bedrock", None) is None
    assert place_endpoint("bedrock", None, region="") is None


@pytest.mark.parametrize(
    ("provider", "endpoint", "fields", "field", "message"),
    [
        ("bedrock", None, {"region": "Frankfurt"}, "region", "not an AWS region name"),
        ("bedrock", None, {"region": 3}, "region", "must be a string"),
        ("bedrock", VPCE, {"region": "us-east-1"}, "region", "disagree"),
        (
            "bedrock",
            "https://bedrock.proxy.internal",
            {"region": "us-east-1"},
            "region",
            "names none",
        ),
        ("anthropic", None, {"region": "us-east-1"}, "region", "for Amazon Bedrock models"),
        ("vertex_ai", None, {"region": "us-east-1"}, "region", "for Amazon Bedrock models"),
        ("bedrock", None, {"project": "my-proj-1"}, "project", "for Google Vertex AI models"),
        ("anthropic", None, {"location": "us-east5"}, "location", "for Google Vertex AI"),
        ("vertex_ai", None, {"project": "my-proj-1"}, "location", "location is missing"),
        ("vertex_ai", None, {"location": "us-east5"}, "project", "project is missing"),
        (
            "vertex_ai",
            None,
            {"project": "My_Project", "location": "us-east5"},
            "project",
            "not a Google Cloud project id",
        ),
        (
            "vertex_ai",
            None,
            {"project": "my-proj-1", "location": "us east"},
            "location",
            "not a Vertex AI location",
        ),
        (
            "vertex_ai",
            "https://vertex.proxy.internal/v1/projects/p-1234/locations/us-east5",
            {"project": "my-proj-1", "location": "us-east5"},
            "endpoint",
            "names a project and location already",
        ),
    ],
)
def test_placement_is_validated_precisely(
    provider: str, endpoint: str | None, fields: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        place_endpoint(provider, endpoint, **fields)
    assert caught.value.field == field


def test_vertex_project_and_location_become_the_api_base() -> None:
    regional = place_endpoint("vertex_ai", None, project="my-proj-1", location="europe-west4")
    assert regional == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-proj-1/locations/"
        "europe-west4"
    )
    assert placement_of("vertex_ai", regional) == {
        "region": None,
        "project": "my-proj-1",
        "location": "europe-west4",
    }
    assert placement_base("vertex_ai", regional) is None
    worldwide = place_endpoint("vertex_ai", None, project="my-proj-1", location="global")
    assert worldwide == "https://aiplatform.googleapis.com/v1/projects/my-proj-1/locations/global"
    proxied = place_endpoint(
        "vertex_ai", "https://vertex.proxy.internal/", project="my-proj-1", location="us-east5"
    )
    assert proxied == "https://vertex.proxy.internal/v1/projects/my-proj-1/locations/us-east5"
    assert placement_base("vertex_ai", proxied) == "https://vertex.proxy.internal"


@pytest.fixture
def gateway_wide() -> Iterator[None]:
    install_settings(
        ProviderSettings(
            bedrock_region="us-east-1",
            bedrock_endpoint="https://vpce-gateway-wide.bedrock-runtime.us-east-1.vpce.amazonaws.com",
            vertex_project="gateway-project",
            vertex_location="us-central1",
            vertex_endpoint="https://vertex.gateway-wide.internal",
        )
    )
    yield
    install_settings(ProviderSettings())


@pytest.mark.usefixtures("gateway_wide")
def test_the_model_value_wins_over_the_gateway_setting() -> None:
    """What the instance saves is what the gateway calls, whatever its own settings say."""
    bedrock = place_endpoint("bedrock", None, region="eu-central-1")
    assert bedrock is not None
    assert default_endpoint(BEDROCK, "anthropic.claude-3", bedrock) == bedrock
    vertex = place_endpoint("vertex_ai", None, project="my-proj-1", location="us-east5")
    assert vertex is not None
    assert default_endpoint(VERTEX_AI, "gemini-2.5-flash", vertex) == vertex
    # Without them the gateway's settings apply, as before.
    assert default_endpoint(VERTEX_AI, "gemini-2.5-flash", "") == (
        "https://vertex.gateway-wide.internal/v1/projects/gateway-project/locations/us-central1"
    )
    # The same URL the gateway builds from its own settings for that project and location.
    install_settings(ProviderSettings(vertex_project="my-proj-1", vertex_location="us-east5"))
    assert default_endpoint(VERTEX_AI, "gemini-2.5-flash", "") == vertex


# --- through the admin API ----------------------------------------------------------------


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


def test_admin_api_saves_region_project_and_location(api: Api) -> None:
    bedrock = api.create_model(
        model="claude_3",
        provider="bedrock",
        endpoint=None,
        identifier="bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        region="eu-central-1",
        api_token=BEDROCK_KEY,
    )
    assert bedrock["endpoint"] == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert bedrock["region"] == "eu-central-1" and bedrock["project"] is None

    # Another region: the endpoint moves with it (a stored key needs confirming, as ever).
    moved = api.put(f"{MODELS}/{bedrock['id']}", {"region": "us-west-2"})
    assert moved.status_code == 400, moved.text
    assert "the stored API key would be sent there" in moved.json()["message"]
    moved = api.put(f"{MODELS}/{bedrock['id']}", {"region": "us-west-2", "keep_api_token": True})
    assert moved.status_code == 200, moved.text
    assert moved.json()["endpoint"] == "https://bedrock-runtime.us-west-2.amazonaws.com"
    cleared = api.put(f"{MODELS}/{bedrock['id']}", {"region": "", "keep_api_token": True})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["endpoint"] is None and cleared.json()["region"] is None

    vertex = api.create_model(
        model="general",
        provider="vertex_ai",
        endpoint=None,
        identifier="vertex_ai/gemini-2.5-flash",
        project="my-proj-1",
        location="us-east5",
    )
    assert vertex["endpoint"] == (
        "https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj-1/locations/us-east5"
    )
    assert (vertex["project"], vertex["location"]) == ("my-proj-1", "us-east5")
    relocated = api.put(f"{MODELS}/{vertex['id']}", {"location": "europe-west4"})
    assert relocated.status_code == 200, relocated.text
    assert relocated.json()["endpoint"] == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-proj-1/locations/"
        "europe-west4"
    )
    back = api.put(f"{MODELS}/{vertex['id']}", {"project": ""})
    assert back.status_code == 200, back.text
    assert back.json()["endpoint"] is None and back.json()["location"] is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"provider": "bedrock", "region": "mars-1"},
            "region 'mars-1' is not an AWS region name such as us-east-1 or eu-central-1",
        ),
        (
            {"provider": "vertex_ai", "project": "my-proj-1"},
            "location is missing: give the project's Vertex AI location too",
        ),
        (
            {"provider": "anthropic", "region": "us-east-1"},
            "region is for Amazon Bedrock models (provider bedrock), not Anthropic models",
        ),
    ],
)
def test_admin_api_refuses_a_wrong_placement_with_400(
    api: Api, fields: dict[str, Any], message: str
) -> None:
    prefix = IDENTIFIER_PREFIXES[fields["provider"]]
    response = api.post(
        MODELS,
        {"name": "placed", "model": "claude_3", "identifier": f"{prefix}some-model", **fields},
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
