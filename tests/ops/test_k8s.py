"""Kubernetes manifests in ops/k8s, checked without a cluster.

The ConfigMap's config must pass ``driftline check-config`` with the
Deployment's environment; probes, ports, the Secret references, the
read-only root file system with a writable data dir, and the selectors of
the Service and PodMonitor must fit together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.streams.settings import SECRET_KEYS, load_settings
from tests.ops.support import (
    K8S_DIR,
    image_config_to_local,
    load_yaml,
    load_yaml_documents,
    settings_key,
)
from tests.worker_process import run_cli

SECRET_VARIABLES = {
    "DRIFTLINE_KAFKA__SASL_PASSWORD",
    "DRIFTLINE_REDIS__PASSWORD",
    "DRIFTLINE_METRICS__TOKEN",
}


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, for the files kustomization.yaml lists plus the example Secret."""
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    files = [K8S_DIR / name for name in kustomization["resources"]]
    files.append(K8S_DIR / "secret.example.yaml")
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        assert path.is_file(), f"kustomization names {path.name}, which does not exist"
        for doc in load_yaml_documents(path):
            assert doc["kind"] not in out, f"two {doc['kind']} manifests"
            out[doc["kind"]] = doc
    return out


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [worker] = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = worker
    return result


def test_every_manifest_file_is_in_the_kustomization() -> None:
    listed = set(load_yaml(K8S_DIR / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {
        "kustomization.yaml",
        "secret.example.yaml",
    }
    assert listed == on_disk
    assert set(manifests()) == {"ConfigMap", "Deployment", "Service", "PodMonitor", "Secret"}


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    m = manifests()
    config = tmp_path / "driftline.yaml"
    config.write_text(image_config_to_local(m["ConfigMap"]["data"]["driftline.yaml"]))
    env = deployment_env(m["Deployment"])
    result = run_cli("check-config", str(config), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    settings = load_settings(config, env=env)
    assert settings.metrics.host == "0.0.0.0"
    assert settings.worker.data_dir is not None


def deployment_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's environment, secrets filled with placeholders."""
    env = {}
    for item in container(deployment)["env"]:
        env[item["name"]] = item.get("value", "placeholder-secret")
    return env


def test_env_maps_to_settings_and_secrets_come_from_the_secret() -> None:
    m = manifests()
    secret = m["Secret"]
    env = {item["name"]: item for item in container(m["Deployment"])["env"]}
    for name in env:
        assert name.startswith("DRIFTLINE_") and settings_key(name), f"{name} is no setting"
    assert set(env) >= SECRET_VARIABLES
    secret_settings = {f"{section}.{key}" for section, key in SECRET_KEYS}
    for name, item in env.items():
        if settings_key(name) in secret_settings:
            assert "value" not in item, f"{name}: secrets only through secretKeyRef"
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], f"{name}: no key {ref['key']} in the Secret"


def test_probes_and_ports_match_the_metrics_settings() -> None:
    m = manifests()
    worker = container(m["Deployment"])
    text = m["ConfigMap"]["data"]["driftline.yaml"]
    port = load_yaml_port(text)
    [metrics_port] = worker["ports"]
    assert metrics_port["containerPort"] == port and metrics_port["name"] == "metrics"
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    annotations = m["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    [service_port] = m["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "metrics"
    [endpoint] = m["PodMonitor"]["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    token = endpoint["authorization"]["credentials"]
    assert token == {"name": m["Secret"]["metadata"]["name"], "key": "metrics-token"}


def load_yaml_port(config_text: str) -> int:
    port: int = yaml.safe_load(config_text)["metrics"]["port"]
    return port


def test_config_is_mounted_where_the_worker_reads_it() -> None:
    m = manifests()
    spec = m["Deployment"]["spec"]["template"]["spec"]
    worker = container(m["Deployment"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {v["mountPath"]: v for v in worker["volumeMounts"]}
    for mount in mounts.values():
        assert mount["name"] in volumes, f"mount of unknown volume {mount['name']}"
    config_path = worker["args"][worker["args"].index("-c") + 1]
    directory, _, key = config_path.rpartition("/")
    volume = volumes[mounts[directory]["name"]]
    assert volume["configMap"]["name"] == m["ConfigMap"]["metadata"]["name"]
    assert key in m["ConfigMap"]["data"]
    assert worker["args"][0] == "worker"


def test_security_context_read_only_root_with_a_writable_data_dir() -> None:
    m = manifests()
    spec = m["Deployment"]["spec"]["template"]["spec"]
    worker = container(m["Deployment"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec.get("automountServiceAccountToken") is False
    sc = worker["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    env = {item["name"]: item.get("value") for item in worker["env"]}
    data_dir = env["DRIFTLINE_WORKER__DATA_DIR"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    [mount] = [v for v in worker["volumeMounts"] if v["mountPath"] == data_dir]
    assert "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly")


def test_resources_image_and_replicas() -> None:
    deployment = manifests()["Deployment"]
    worker = container(deployment)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(worker["resources"][kind]), kind
    name, _, tag = worker["image"].rpartition(":")
    assert name and tag and tag != "latest"
    assert deployment["spec"]["replicas"] >= 1
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 30, "SIGTERM finishes the batch in hand"


@pytest.mark.parametrize("kind", ["Service", "PodMonitor"])
def test_selectors_match_the_pods(kind: str) -> None:
    m = manifests()
    pod_labels = m["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert m["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spec = m[kind]["spec"]
    selector = spec["selector"].get("matchLabels", spec["selector"])
    assert selector.items() <= pod_labels.items(), f"{kind} selects no worker pod"
    if kind == "PodMonitor":
        # the alert rules select job="driftline"
        assert pod_labels[spec["jobLabel"]] == "driftline"


def test_replicas_share_one_consumer_group() -> None:
    """Scaling out works because every pod has the same app_id (= consumer group)."""
    m = manifests()
    config = yaml.safe_load(m["ConfigMap"]["data"]["driftline.yaml"])
    assert config["app_id"]
    names = {item["name"] for item in container(m["Deployment"])["env"]}
    assert "DRIFTLINE_APP_ID" not in names, "a per-pod app_id would split the consumer group"
