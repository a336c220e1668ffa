"""deploy/kubernetes: every object valid against the vendored Kubernetes 1.33 schemas (offline),
and the manifests consistent with each other and with Enclave: probes on real health routes,
settings that exist and parse, Secrets and ConfigMaps that are generated, hardened pods."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from enclave.gateway.app import ROUTES as GATEWAY_ROUTES
from enclave.instance.api.health import router as instance_health
from tests.deploy.conftest import (
    DEPLOY,
    SCHEMAS,
    load_yaml_documents,
    parse_settings,
    unknown_settings,
)

K8S = DEPLOY / "kubernetes"
K8S_SCHEMAS = SCHEMAS / "kubernetes-v1.33.0"
DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"
# (apiVersion, kind) -> vendored schema file
SCHEMA_FILES = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Namespace"): "namespace-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicy-networking-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
}


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def objects() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for name in kustomization()["resources"]:
        found += [(name, doc) for doc in load_yaml_documents(K8S / name)]
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in objects() if doc["kind"] == kind]


def validator(schema_file: str) -> Any:
    definitions = json.loads((K8S_SCHEMAS / "_definitions.json").read_text())
    registry = jsonschema_rs.Registry([(DEFINITIONS_URI, definitions)])
    schema = json.loads((K8S_SCHEMAS / schema_file).read_text())
    return jsonschema_rs.validator_for(schema, registry=registry)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize(
    ("source", "doc"),
    objects(),
    ids=[f"{s}:{d['kind']}/{d['metadata']['name']}" for s, d in objects()],
)
def test_object_is_valid_against_the_kubernetes_schema(source: str, doc: dict[str, Any]) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMA_FILES, f"{source}: no vendored schema for {key} (tests/deploy/schemas)"
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in validator(SCHEMA_FILES[key]).iter_errors(doc)
    ]
    assert not errors, f"{source} {doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)


def test_the_schema_check_catches_mistakes() -> None:
    deployment = of_kind("Deployment")[0]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    errors = list(validator(SCHEMA_FILES[("apps/v1", "Deployment")]).iter_errors(broken))
    assert len(errors) >= 2


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def component(deployment: dict[str, Any]) -> str:
    return str(deployment["metadata"]["labels"]["app.kubernetes.io/component"])


def test_probes_use_the_real_health_endpoints() -> None:
    real = {
        "instance": {route.path for route in instance_health.routes},  # type: ignore[attr-defined]
        "gateway": {route.path for route in GATEWAY_ROUTES},
        "model": {"/health"},  # llama.cpp server's, answered without the API key
    }
    for deployment in of_kind("Deployment"):
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = main[probe]["httpGet"]["path"]
            assert path in real[component(deployment)], (deployment["metadata"]["name"], path)
    instance = next(d for d in of_kind("Deployment") if component(d) == "instance")
    probes = instance["spec"]["template"]["spec"]["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/-/readiness"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/-/liveness"


def container_env(container: dict[str, Any]) -> dict[str, str]:
    maps = {m["metadata"]["name"]: m["data"] for m in of_kind("ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from a Secret>")
    return env


def test_every_setting_exists_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    for deployment in of_kind("Deployment"):
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        env = container_env(main)
        assert not unknown_settings(env), deployment["metadata"]["name"]
        from_secrets = {k for k, v in env.items() if v == "<from a Secret>"}
        for name in from_secrets:
            env[name] = {
                "ENCLAVE_DATABASE_URL": "postgresql+psycopg://enclave@postgres/enclave",
                "ENCLAVE_SECRET_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            }.get(name, "redis://redis:6379/0")
        settings = parse_settings(env, monkeypatch)
        role = component(deployment)
        if role == "instance":
            assert settings.instance.host == "0.0.0.0" and settings.instance.port == 8080
            assert settings.instance.database_url and settings.secret_key is not None
        elif role == "gateway":
            assert settings.gateway.port == 5052
            # The issuer the gateway trusts is the instance's `iss`.
            instance_env = container_env(
                next(d for d in of_kind("Deployment") if component(d) == "instance")["spec"][
                    "template"
                ]["spec"]["containers"][0]
            )
            assert settings.gateway.issuer_url == instance_env["ENCLAVE_INSTANCE__EXTERNAL_URL"]
        else:
            assert settings.model.port == 8000


def test_secrets_and_config_maps_referenced_are_generated() -> None:
    generated: dict[str, set[str]] = {}
    for generator in kustomization()["secretGenerator"]:
        generated[generator["name"]] = {f.split("=", 1)[0] for f in generator["files"]}
        for entry in generator["files"]:
            source = entry.split("=", 1)[1]
            made_by_script = (DEPLOY / "make-secrets.sh").read_text()
            assert re.search(rf"\bnew {re.escape(Path(source).name)}\b", made_by_script), source
    maps = {m["metadata"]["name"] for m in of_kind("ConfigMap")}
    for deployment in of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in generated
        for container in containers(deployment):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in generated[ref["name"]], ref


def test_pods_are_hardened() -> None:
    for deployment in of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in containers(deployment):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


def test_gateway_scales_and_the_network_is_default_deny() -> None:
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "enclave-gateway"
    assert hpa["spec"]["minReplicas"] >= 2
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind("NetworkPolicy")}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    assert policies["model"]["egress"] == []  # the model server talks to nobody
    for name in ("instance", "gateway", "model"):
        for rule in policies[name].get("egress", []) + policies[name].get("ingress", []):
            assert rule.get("ports"), f"{name}: every rule names its ports"
