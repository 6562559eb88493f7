"""docker-compose.yml, the Dockerfile and .dockerignore, checked without Docker.

No Docker engine runs here, so the stack cannot be started: instead every
file a service refers to must exist, every image must be pinned, the ports,
addresses and DRIFTLINE_* variables must agree with the worker's settings,
the compose config must pass ``driftline check-config``, and where a compose
CLI is installed it validates the file against the compose specification.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from driftline.streams.settings import Settings, load_settings
from tests.ops.support import (
    COMPOSE_CONFIG,
    COMPOSE_FILE,
    CONTRACTS,
    DOCKERFILE,
    IMAGE_CONTRACTS,
    PROMETHEUS_CONFIG,
    ROOT,
    image_config_to_local,
    interpolate,
    load_yaml,
    settings_key,
)
from tests.worker_process import run_cli

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# -- helpers -------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def services() -> dict[str, Any]:
    result: dict[str, Any] = compose()["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[Path, str]:
    """Host path -> container path of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            out[(COMPOSE_FILE.parent / source).resolve()] = target
    return out


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            lines.append(pending)
            pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_args() -> dict[str, str]:
    return dict(
        arg.split("=", 1) for op, arg in dockerfile_instructions() if op == "ARG" and "=" in arg
    )


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    return [str(v) for v in value]


def image_pinned(image: str) -> bool:
    """A version tag (``3.9.1``, ``v2.55.1``, ``7.4.2-alpine``) or a digest; never ``latest``."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and bool(re.match(r"v?\d+(\.\d+)+", tag))


@pytest.fixture(scope="module")
def local_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compose config with its (image) contract paths mapped to the repo."""
    path = tmp_path_factory.mktemp("compose") / "driftline.yaml"
    path.write_text(image_config_to_local(COMPOSE_CONFIG.read_text(encoding="utf-8")))
    return path


@pytest.fixture(scope="module")
def worker_settings(local_config: Path) -> Settings:
    """The compose worker's effective settings: its config file plus its environment."""
    return load_settings(local_config, env=environment(services()["worker"]))


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Roughly Docker's rule: a pattern matches the path or one of its parents."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    hit = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        for candidate in candidates:
            tails = ["/".join(candidate.split("/")[i:]) for i in range(len(candidate.split("/")))]
            if fnmatch.fnmatchcase(candidate, pattern) or (
                pattern.startswith("**/")
                and any(fnmatch.fnmatchcase(t, pattern[3:]) for t in tails)
            ):
                hit = not negate
    return hit


# -- compose -------------------------------------------------------------------


def test_services_have_an_image_or_a_build_and_images_are_pinned() -> None:
    for name, service in services().items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "image" in service:
            assert image_pinned(service["image"]), f"{name}: pin {service['image']!r} to a version"
        if "build" in service:
            build = service["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert context.is_dir() and dockerfile.is_file(), f"{name}: build {build}"


def test_expected_services_and_images() -> None:
    s = services()
    assert set(s) >= {"kafka", "redis", "worker", "producer", "prometheus", "grafana"}
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert s["redis"]["image"].startswith("redis:7.4")
    assert s["redis"]["image"].endswith("-alpine")
    assert s["prometheus"]["image"].startswith("prom/prometheus:v")
    assert s["grafana"]["image"].startswith("grafana/grafana:")


def test_depends_on_targets_exist_and_healthy_ones_have_a_healthcheck() -> None:
    s = services()
    image_healthcheck = any(op == "HEALTHCHECK" for op, _ in dockerfile_instructions())
    for name, service in s.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            assert target in s, f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            assert condition in CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                check = s[target].get("healthcheck")
                has_check = (check is not None and not check.get("disable")) or (
                    check is None and "build" in s[target] and image_healthcheck
                )
                assert has_check, f"{name} waits for {target} to be healthy; it has no check"
        check = service.get("healthcheck")
        if check and not check.get("disable"):
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert s["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert s["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_mounted_files_exist_and_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    used = set()
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume}"
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_driftline_variables_are_settings_keys() -> None:
    for name, service in services().items():
        for variable in environment(service):
            if variable.startswith("DRIFTLINE_"):
                assert settings_key(variable), f"{name}: {variable} is no driftline setting"


def test_compose_config_passes_check_config(local_config: Path) -> None:
    result = run_cli("check-config", str(local_config), env=environment(services()["worker"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and "kafka   kafka:9092" in result.stdout
    # the paths in the file are the image's, which the Dockerfile fills
    text = COMPOSE_CONFIG.read_text(encoding="utf-8")
    for path in re.findall(rf"{IMAGE_CONTRACTS}/(\S+)", text):
        assert (CONTRACTS / path).is_file(), path


def test_worker_wiring_agrees_with_its_settings(worker_settings: Settings) -> None:
    s = services()
    worker = s["worker"]
    settings = worker_settings
    config_target = bind_mounts(worker)[COMPOSE_CONFIG.resolve()]
    command = worker.get("command") or exec_form(
        next(arg for op, arg in dockerfile_instructions() if op == "CMD")
    )
    assert command[-2:] == ["-c", config_target], command

    # metrics: config == published container port == Prometheus target == EXPOSE
    port = settings.metrics.port
    assert port in container_ports(worker)
    assert settings.metrics.host == "0.0.0.0", "Prometheus scrapes from another container"
    exposed = {int(arg.split("/")[0]) for op, arg in dockerfile_instructions() if op == "EXPOSE"}
    assert port in exposed
    [job] = [
        j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "driftline"
    ]
    targets = {(name, sd["port"]) for sd in job.get("dns_sd_configs", []) for name in sd["names"]}
    for static in job.get("static_configs", []):
        targets |= {(t.split(":")[0], int(t.split(":")[1])) for t in static["targets"]}
    assert targets == {("worker", port)}, targets

    # Kafka and Redis: the services' internal addresses
    kafka_env = environment(s["kafka"])
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(a.endswith("://" + settings.kafka.bootstrap_servers) for a in advertised)
    assert settings.kafka.bootstrap_servers.split(":")[0] in s
    assert settings.redis.url.startswith("redis://redis:6379/")
    assert settings.kafka.create_topics, "the stack has no other way to create the topics"


def test_kafka_is_kraft_with_internal_and_host_listeners() -> None:
    kafka = services()["kafka"]
    env = environment(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    listeners = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert set(listeners) == {"INTERNAL", "EXTERNAL"}
    host_port = int(listeners["EXTERNAL"].split(":")[1])
    assert host_port in container_ports(kafka), "the host listener must be published"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    protocol_map = dict(
        p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocol_map) >= set(listeners) | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]}


def test_redis_appends_only() -> None:
    redis = services()["redis"]
    command = redis["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_demo_producer_wiring(worker_settings: Settings) -> None:
    s = services()
    producer = s["producer"]
    env = environment(producer)
    settings = worker_settings
    assert env["DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS"] == settings.kafka.bootstrap_servers
    [source] = [x for x in settings.sources if x.topic == env["DEMO_TOPIC"]]
    assert int(env["DEMO_MAX_EVENT_BYTES"]) == source.max_event_bytes
    script = (ROOT / "ops" / "compose" / "demo_producer.py").resolve()
    assert producer["entrypoint"][-1] == bind_mounts(producer)[script]
    assert producer["depends_on"]["worker"]["condition"] == "service_healthy"
    assert producer["healthcheck"].get("disable"), "the image's check is the worker's"


def test_grafana_and_prometheus_mounts() -> None:
    s = services()
    prometheus = s["prometheus"]
    mounts = bind_mounts(prometheus)
    config_dir = mounts[(ROOT / "ops" / "prometheus").resolve()]
    assert f"--config.file={config_dir}/prometheus.yml" in prometheus["command"]
    grafana = environment(s["grafana"])
    assert grafana.get("GF_AUTH_ANONYMOUS_ENABLED") == "true" or grafana.get(
        "GF_SECURITY_ADMIN_PASSWORD"
    )


def test_compose_cli_accepts_the_file(tmp_path: Path) -> None:
    """The compose specification's own check, where a compose CLI is installed."""
    commands = []
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        commands.append([docker, "compose"])
    if shutil.which("docker-compose"):
        commands.append([str(shutil.which("docker-compose"))])
    if not commands:
        pytest.skip("no compose CLI (docker compose / docker-compose) to validate the file")
    result = subprocess.run(
        [*commands[0], "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- Dockerfile ----------------------------------------------------------------


def test_dockerfile_builds_in_stages_from_a_pinned_base() -> None:
    instructions = dockerfile_instructions()
    args = dockerfile_args()
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: build, then a runtime stage without build tools"
    for stage in stages:
        image = stage.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), image
    assert any("pip install ." in arg for op, arg in instructions if op == "RUN")
    assert any(op == "COPY" and "--from=build" in arg for op, arg in instructions)


def test_dockerfile_runs_the_worker_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    args = dockerfile_args()
    users = [arg for op, arg in instructions if op == "USER"]
    assert users, "no USER"
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1]).split(":")[0]
    assert user not in ("root", "0"), user
    assert exec_form(next(arg for op, arg in instructions if op == "ENTRYPOINT")) == ["driftline"]
    cmd = exec_form(next(arg for op, arg in reversed(instructions) if op == "CMD"))
    assert cmd == ["worker", "-c", "/etc/driftline/driftline.yaml"]
    healthcheck = next(arg for op, arg in instructions if op == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck
    assert "DRIFTLINE_METRICS__PORT" in healthcheck
    exposed = [arg for op, arg in instructions if op == "EXPOSE"]
    assert exposed == [str(Settings.model_fields["metrics"].default.port)]


def test_dockerfile_copies_exist_and_are_not_dockerignored() -> None:
    patterns = dockerignore_patterns()
    for pattern in (".git", ".venv", "tests"):
        assert pattern in patterns, f".dockerignore should leave out {pattern}"
    copied: list[str] = []
    for op, arg in dockerfile_instructions():
        if op != "COPY" or "--from=" in arg:
            continue
        sources = arg.split()[:-1]
        copied.extend(s for s in sources if not s.startswith("--"))
    assert {"pyproject.toml", "README.md", "schemas/contracts"} <= set(copied)
    for source in copied:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" in relative or relative.endswith((".pyc", ".pyo")):
                continue
            assert not ignored(relative, patterns), f"{relative} is copied but .dockerignored"
    # the contracts land where the configs expect them
    assert any(
        op == "COPY" and arg.split()[-1] == IMAGE_CONTRACTS for op, arg in dockerfile_instructions()
    )
