"""deploy/kubernetes: both overlays render with kustomize, validate against the Kubernetes schemas, and
carry the security properties the operator guide promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from custos.server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("trial", "production")
BIN = Path(sys.executable).parent


def kubectl() -> str:
    exe = shutil.which("kubectl")
    assert exe, "kubectl (with Kustomize 5) is part of the machine image"
    return exe


@cache
def rendered(overlay: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


def one(overlay: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects(overlay) if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_validate(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered(overlay))
    exe = BIN / "kubernetes-validate"
    assert exe.exists(), "kubernetes-validate (in the test extra) is not installed"
    result = subprocess.run(
        [str(exe), "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The validator catches a misspelt field in these objects.
    broken = [o for o in objects(overlay)]
    deployment = next(o for o in broken if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    path.write_text(yaml.safe_dump_all(broken))
    result = subprocess.run(
        [str(exe), "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security(overlay: str) -> None:
    pod = one(overlay, "Deployment", "custos")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    for each in [container, *pod["initContainers"]]:
        ctx = each["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, each["name"]
        assert ctx["allowPrivilegeEscalation"] is False, each["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, each["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(each["resources"][kind]), (each["name"], kind)
    # Native gRPC probes on the plaintext health-only port the settings open.
    settings = one(overlay, "ConfigMap")["data"]
    health_port = int(settings["CUSTOS_HEALTH_LISTEN"].rpartition(":")[2])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == health_port, probe
    # Writable paths are volumes; /tmp is one (read-only root).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert settings["CUSTOS_DATA_DIR"] in mounts and "/tmp" in mounts
    assert mounts["/etc/custos/keys"]["readOnly"] is True and mounts["/etc/custos/keys"]["name"] == "keys"
    # Every CUSTOS_ variable is a real setting.
    names = set(settings) | {e["name"] for e in container.get("env", [])}
    for name in names:
        assert name.removeprefix("CUSTOS_").lower() in Settings.model_fields, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined(overlay: str) -> None:
    assert not [o for o in objects(overlay) if o["kind"] == "Secret"]
    pod = one(overlay, "Deployment", "custos")["spec"]["template"]["spec"]
    secret_volumes = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secret_volumes == {"custos-master-key", "custos-tls"}
    settings = one(overlay, "ConfigMap")["data"]
    # The key file the server reads is the private copy the init container makes from the Secret.
    (init,) = pod["initContainers"]
    key_file = settings["CUSTOS_KEY_FILE"]
    assert init["command"][:3] == ["install", "-m", "0400"] and init["command"][-1] == key_file
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert init["command"][-2].startswith(mounts["master-key"] + "/")
    server_mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert key_file.startswith(server_mounts["keys"]["mountPath"] + "/")
    assert mounts["keys"] == server_mounts["keys"]["mountPath"]
    keys_volume = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert keys_volume["emptyDir"]["medium"] == "Memory"
    assert not any("postgres" in str(v) or "password" in str(v).lower() for v in settings.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_network_policy(overlay: str) -> None:
    deployment = one(overlay, "Deployment", "custos")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(overlay, "Service", "custos")
    assert matches(service["spec"]["selector"], pod_labels)
    assert {p["name"] for p in service["spec"]["ports"]} >= {"grpc"}
    policy = one(overlay, "NetworkPolicy", "custos")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], pod_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    grpc_rule = next(r for r in policy["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"])
    for peer in grpc_rule["from"]:
        assert peer["podSelector"]["matchLabels"] == {"custos.io/client": "true"}
    egress_ports = {(p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]}
    dns = next(r for r in policy["egress"] if {"port": 53, "protocol": "UDP"} in r["ports"])
    # Selectors are not rewritten by the common labels (kube-dns does not carry ours).
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    if overlay == "trial":
        assert egress_ports == {(53, "UDP"), (53, "TCP")}
    else:
        assert egress_ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (8000, "TCP")}


def test_trial_overlay() -> None:
    deployment = one("trial", "Deployment", "custos")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    claim = one("trial", "PersistentVolumeClaim")
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    env = pod["containers"][0].get("env", [])
    assert "CUSTOS_DATABASE_URL" not in {e["name"] for e in env}  # SQLite in the data directory
    assert not [o for o in objects("trial") if o["kind"] == "PodDisruptionBudget"]


def test_production_overlay() -> None:
    deployment = one("production", "Deployment", "custos")
    assert deployment["spec"]["replicas"] > 1
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    ref = env["CUSTOS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "custos-database", "key": "url", "optional": False}
    pdb = one("production", "PodDisruptionBudget")
    assert matches(
        pdb["spec"]["selector"]["matchLabels"],
        pod_labels := deployment["spec"]["template"]["metadata"]["labels"],
    )
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert pod_labels
    claim = one("production", "PersistentVolumeClaim", "custos-shared")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert all(o["metadata"].get("namespace") == "custos" for o in objects("production"))


def test_production_engine_is_a_vllm_only_custos_reaches() -> None:
    """The vLLM Deployment, its Service, NetworkPolicy and weights claim, and the settings that use them."""
    engine = one("production", "Deployment", "custos-vllm")
    pod = engine["spec"]["template"]["spec"]
    pod_labels = engine["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {e["name"]: e["value"] for e in container["env"]}["HF_HUB_OFFLINE"] == "1"
    assert not any("log-requests" in a for a in container["args"] if a.startswith("--enable"))
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    claim = one("production", "PersistentVolumeClaim", models["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    # Custos is pointed at the engine's Service, by name and port, and asks for the served model.
    service = one("production", "Service", "custos-vllm")
    assert matches(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["port"] == int(args["port"])
    settings = one("production", "ConfigMap")["data"]
    assert settings["CUSTOS_ENGINE_BACKEND"] == "openai"
    assert settings["CUSTOS_UPSTREAM_BASE_URL"] == f"http://{service['metadata']['name']}:{port['port']}/v1"
    assert settings["CUSTOS_UPSTREAM_MODEL"] == args["served-model-name"]
    upstream = {
        k.removeprefix("CUSTOS_").lower(): v for k, v in settings.items() if "UPSTREAM" in k or "ENGINE" in k
    }
    assert load_settings(**upstream).upstream_max_in_flight == int(settings["CUSTOS_UPSTREAM_MAX_IN_FLIGHT"])
    # Only Custos's server pods may reach the engine; the engine may reach nothing.
    policy = one("production", "NetworkPolicy", "custos-vllm")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], pod_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []
    (rule,) = policy["ingress"]
    server_labels = one("production", "Deployment", "custos")["spec"]["template"]["metadata"]["labels"]
    assert [matches(peer["podSelector"]["matchLabels"], server_labels) for peer in rule["from"]] == [True]
    assert all("namespaceSelector" not in peer for peer in rule["from"])
    # And Custos's own egress admits the engine on its port.
    custos_egress = one("production", "NetworkPolicy", "custos")["spec"]["egress"]
    to_engine = [
        r for r in custos_egress if any(matches(p["podSelector"]["matchLabels"], pod_labels) for p in r["to"])
    ]
    assert [p["port"] for r in to_engine for p in r["ports"]] == [port["port"]]
