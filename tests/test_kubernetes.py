"""Checks for deploy/kubernetes/: the kustomize base and the postgres-cache overlay.

Rendering needs kubectl 1.27+ (kustomize v5) on PATH or in the venv's bin directory
(`.ci/run` installs one when missing); the rule checks need promtool. Missing tools skip
those tests, unless BRIDGE_REQUIRE_TOOLS=1, in which case they fail.

Built-in kinds are validated against the Kubernetes OpenAPI schemas (kubernetes-validate);
the prometheus-operator kinds, which those schemas do not cover, are checked field by field
here, and the PrometheusRule's groups must equal the shipped rule files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bridge import config
from tests.tools import missing_tool, run

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
BASE = KUBE / "base"
OVERLAY = KUBE / "overlays" / "postgres-cache"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
RULE_FILES = sorted((REPO / "monitoring" / "alerts").glob("*.rules.yml"))
RULE_TESTS = sorted((REPO / "monitoring" / "alerts" / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((REPO / "monitoring" / "grafana" / "dashboards").glob("*.json"))
METRICS_FILE = REPO / "deploy" / "bridge" / "metrics.yaml"
NAME = "airflow-metrics-bridge"
# The oldest Kubernetes minor the manifests are meant for, and the newest schemas known.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())

Doc = dict[str, Any]


# ---------------------------------------------------------------- helpers

def kustomize_major(kubectl: str) -> int:
    result = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                            capture_output=True, text=True, check=False, timeout=60)
    try:
        version = json.loads(result.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        return 0
    match = re.match(r"v(\d+)\.", version)
    return int(match.group(1)) if match else 0


@cache
def find_kubectl() -> str | None:
    """A kubectl whose built-in kustomize is v5 or newer: the venv's first, then PATH."""
    candidates = [Path(sys.executable).parent / "kubectl", shutil.which("kubectl")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and kustomize_major(str(candidate)) >= 5:
            return str(candidate)
    return None


def kubectl() -> str:
    found = find_kubectl()
    if found is None:
        missing_tool("no kubectl 1.27+ (kustomize v5) on PATH or in the venv")
    assert found is not None
    return found


@cache
def _render(path: Path) -> str:
    return run([kubectl(), "kustomize", str(path)]).stdout


def render(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(_render(path)) if doc]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and
             (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Doc = containers[0]
    return result


def shipped_groups() -> list[Doc]:
    return [group for path in RULE_FILES
            for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]]


def dockerfile_env() -> dict[str, str]:
    """ENV of the image's final stage: the environment the container starts with."""
    final_stage = DOCKERFILE.read_text(encoding="utf-8").rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", final_stage, re.M):
        for key, value in re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")):
            env[key] = value
    return env


@pytest.fixture(params=[BASE, OVERLAY], ids=["base", "postgres-cache"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    path: Path = request.param
    return render(path)


# ---------------------------------------------------------------- generated files

def test_generated_files_are_what_the_script_writes() -> None:
    result = subprocess.run([sys.executable, str(KUBE / "generate.py"), "--check"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, f"stale generated files:\n{result.stdout}{result.stderr}"
    generated = BASE / "generated"
    assert sorted(p.relative_to(generated).as_posix() for p in generated.rglob("*")
                  if p.is_file()) == sorted(
        ["metrics.yaml", "prometheusrule.yaml", *(f"dashboards/{p.name}" for p in DASHBOARDS)])


def test_generate_check_reports_a_stale_copy(tmp_path: Path) -> None:
    """--check must notice drift: run it on a copy of the tree with one dashboard edited."""
    for part in ("deploy/kubernetes", "deploy/bridge", "monitoring"):
        shutil.copytree(REPO / part, tmp_path / part)
    edited = tmp_path / "monitoring" / "grafana" / "dashboards" / DASHBOARDS[0].name
    edited.write_text(edited.read_text(encoding="utf-8").replace("{", "{ ", 1), encoding="utf-8")
    script = tmp_path / "deploy" / "kubernetes" / "generate.py"
    stale = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                           text=True, check=False, timeout=60)
    assert stale.returncode == 1
    assert stale.stdout == f"stale deploy/kubernetes/base/generated/dashboards/{edited.name}\n"
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, timeout=60)
    copy = tmp_path / "deploy/kubernetes/base/generated/dashboards" / edited.name
    assert copy.read_bytes() == edited.read_bytes()


# ---------------------------------------------------------------- rendering

def test_rendered_objects() -> None:
    base = sorted((d["kind"], d["metadata"]["name"]) for d in render(BASE))
    config_map = next(name for kind, name in base if name.startswith(f"{NAME}-config-"))
    assert re.fullmatch(rf"{NAME}-config-[a-z0-9]{{10}}", config_map), config_map
    dashboards = [("ConfigMap", f"{NAME}-dashboard-{p.stem}") for p in DASHBOARDS]
    assert base == sorted([
        ("ConfigMap", config_map), *dashboards,
        ("Deployment", NAME), ("PersistentVolumeClaim", f"{NAME}-cache"),
        ("PrometheusRule", NAME), ("Service", NAME), ("ServiceMonitor", NAME)])
    overlay = sorted((d["kind"], d["metadata"]["name"]) for d in render(OVERLAY))
    assert overlay == [o for o in base if o[0] != "PersistentVolumeClaim"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_validate_against_the_kubernetes_schemas(
        rendered: list[Doc], version: str) -> None:
    builtin = [d for d in rendered if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in builtin} >= {"ConfigMap", "Deployment", "Service"}
    for doc in builtin:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on {version}: {exc.message}")


def test_schema_validation_catches_a_misspelt_field() -> None:
    """The validation above is strict: an unknown field in a container fails it."""
    deployment = one(render(BASE), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# ---------------------------------------------------------------- Deployment

def test_container_is_locked_down(rendered: list[Doc]) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    uid, gid = re.search(r"--uid (\d+)", dockerfile), re.search(r"--gid (\d+)", dockerfile)
    assert uid and gid, "the Dockerfile creates its user and group with fixed ids"
    image_uid = int(uid.group(1))
    assert int(gid.group(1)) == image_uid
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": image_uid, "runAsGroup": image_uid,
        "fsGroup": image_uid, "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False
    bridge = container(rendered)
    assert bridge["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert bridge["image"] == f"{NAME}:0.1.0"
    assert bridge["command"] == ["airflow-metrics-bridge", "serve"]
    assert bridge["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                                   "limits": {"cpu": "1", "memory": "512Mi"}}
    # A read-only root file system: everything written goes to a mounted volume.
    writable = {m["mountPath"] for m in bridge["volumeMounts"] if not m.get("readOnly")}
    expected = {"/tmp", "/var/lib/bridge"} if one(rendered, "Deployment")["spec"][
        "strategy"]["type"] == "Recreate" else {"/tmp"}
    assert writable == expected


def test_probes_and_ports(rendered: list[Doc]) -> None:
    bridge = container(rendered)
    assert bridge["ports"] == [{"name": "http-metrics", "containerPort": 9101,
                                "protocol": "TCP"}]
    probes = {kind: (bridge[kind]["httpGet"]["path"], bridge[kind]["httpGet"]["port"])
              for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": ("/-/healthy", "http-metrics"),
                      "livenessProbe": ("/-/healthy", "http-metrics"),
                      "readinessProbe": ("/-/ready", "http-metrics")}
    service = one(rendered, "Service", NAME)
    assert service["spec"]["ports"] == [{"name": "http-metrics", "port": 9101,
                                         "targetPort": "http-metrics", "protocol": "TCP"}]
    pod_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_base_keeps_the_sqlite_cache_on_the_claim() -> None:
    docs = render(BASE)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert mounts["cache"] == "/var/lib/bridge"


def test_overlay_has_no_claim_and_rolls_without_a_gap() -> None:
    docs = render(OVERLAY)
    deployment = one(docs, "Deployment")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert not [v for v in volumes if "persistentVolumeClaim" in v]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    assert secrets == {f"{NAME}-airflow-db", f"{NAME}-cache-db"}


def materialize(docs: list[Doc], root: Path, secrets: dict[str, str]) -> dict[str, str]:
    """Lay the pod's volumes out under `root` and return its environment, paths moved there.

    ConfigMaps get their rendered data, Secrets the given contents per secret name, the
    claim and emptyDirs an empty directory. The environment is the image's ENV overlaid
    with the container's, as the container runtime builds it.
    """
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    bridge = container(docs)
    mounts = {m["mountPath"]: volumes[m["name"]] for m in bridge["volumeMounts"]}
    for mount_path, volume in mounts.items():
        target = root / mount_path.lstrip("/")
        target.mkdir(parents=True)
        if "configMap" in volume:
            data = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
            for key, value in data.items():
                (target / key).write_text(value, encoding="utf-8")
        elif "secret" in volume:
            for item in volume["secret"]["items"]:
                content = secrets[volume["secret"]["secretName"]]
                (target / item["path"]).write_text(content + "\n", encoding="utf-8")

    # One pass, longest mount first, so a path already moved is not moved again.
    pattern = re.compile("|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
                         + r"(?=/|$|\s)", re.M)

    def moved(value: str) -> str:
        return pattern.sub(lambda m: str(root / m.group(0).lstrip("/")), value)

    env = {**dockerfile_env(), **{e["name"]: e["value"] for e in bridge["env"]}}
    config_file = Path(moved(env[config.ENV_CONFIG]))
    config_file.write_text(moved(config_file.read_text(encoding="utf-8")), encoding="utf-8")
    return {key: moved(value) for key, value in env.items()}


AIRFLOW_URL = "postgresql://airflow_bridge:s3cret@airflow-db.airflow.svc:5432/airflow"
CACHE_URL = "postgresql://bridge_cache:other@cache-db.airflow.svc:5432/bridge_cache"


def test_base_pod_configuration_resolves(tmp_path: Path) -> None:
    """The settings the bridge builds from the rendered pod: the secret URL, the cache on
    the claim, every metric of deploy/bridge/metrics.yaml."""
    env = materialize(render(BASE), tmp_path, {f"{NAME}-airflow-db": AIRFLOW_URL})
    settings = config.load(environ=env)
    assert settings.airflow_url is not None
    assert settings.airflow_url.render_as_string(hide_password=False) == \
        AIRFLOW_URL.replace("postgresql://", "postgresql+psycopg://")
    assert str(settings.cache_url) == f"sqlite:///{tmp_path}/var/lib/bridge/cache.db"
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9101)
    assert settings.refresh_interval == 10.0
    shipped = yaml.safe_load(METRICS_FILE.read_text(encoding="utf-8"))["metrics"]
    assert [d.name for d in settings.definitions] == [m["name"] for m in shipped]


def test_overlay_pod_takes_the_cache_url_from_its_secret(tmp_path: Path) -> None:
    """The image sets BRIDGE_CACHE_URL to SQLite; the overlay must win over it."""
    env = materialize(render(OVERLAY), tmp_path,
                      {f"{NAME}-airflow-db": AIRFLOW_URL, f"{NAME}-cache-db": CACHE_URL})
    assert dockerfile_env()["BRIDGE_CACHE_URL"].startswith("sqlite:")
    settings = config.load(environ=env)
    assert settings.cache_url.render_as_string(hide_password=False) == \
        CACHE_URL.replace("postgresql://", "postgresql+psycopg://")
    assert settings.airflow_url is not None
    assert settings.airflow_url.host == "airflow-db.airflow.svc"


def test_config_map_carries_the_shipped_metric_definitions(rendered: list[Doc]) -> None:
    volume = next(v for v in one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "config")
    data = one(rendered, "ConfigMap", volume["configMap"]["name"])["data"]
    assert set(data) == {"bridge.yaml", "metrics.yaml"}
    assert data["metrics.yaml"] == METRICS_FILE.read_text(encoding="utf-8")
    assert data["bridge.yaml"] == (BASE / "bridge.yaml").read_text(encoding="utf-8")


# ---------------------------------------------------------------- dashboards

def test_dashboards_are_config_maps_for_the_grafana_sidecar(rendered: list[Doc]) -> None:
    maps = [d for d in rendered if d["kind"] == "ConfigMap" and
            d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert {tuple(m["data"]) for m in maps} == {(p.name,) for p in DASHBOARDS}
    for config_map in maps:
        (key, text), = config_map["data"].items()
        assert text == (REPO / "monitoring/grafana/dashboards" / key).read_text(encoding="utf-8")
        # kubectl apply keeps a copy in an annotation limited to 256 KiB.
        assert len(text.encode("utf-8")) < 200 * 1024, key


# ---------------------------------------------------------------- prometheus-operator

DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")
ENDPOINT_FIELDS = {"port", "targetPort", "path", "scheme", "params", "interval",
                   "scrapeTimeout", "honorLabels", "honorTimestamps", "relabelings",
                   "metricRelabelings", "tlsConfig", "authorization", "basicAuth",
                   "bearerTokenSecret", "oauth2", "proxyUrl", "followRedirects",
                   "enableHttp2", "filterRunning", "trackTimestampsStaleness"}
SERVICE_MONITOR_FIELDS = {"jobLabel", "targetLabels", "podTargetLabels", "endpoints",
                          "selector", "namespaceSelector", "sampleLimit", "targetLimit",
                          "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                          "attachMetadata", "scrapeProtocols", "keepDroppedTargets"}
GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy",
                "query_offset", "labels"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def check_metadata(doc: Doc) -> None:
    metadata = doc["metadata"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", metadata["name"]), metadata
    assert len(metadata["name"]) <= 63
    assert all(isinstance(v, str) for v in metadata.get("labels", {}).values())


def test_service_monitor_scrapes_the_service_as_the_rules_expect(rendered: list[Doc]) -> None:
    monitor = one(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    check_metadata(monitor)
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_FIELDS, set(spec) - SERVICE_MONITOR_FIELDS
    service = one(rendered, "Service", NAME)
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # job="airflow-metrics-bridge", as in every rule and in monitoring/prometheus.yml
    assert labels[spec["jobLabel"]] == NAME
    prometheus = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text(encoding="utf-8"))
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == NAME)
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= ENDPOINT_FIELDS, set(endpoint) - ENDPOINT_FIELDS
    assert endpoint["port"] in port_names
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == \
        (job["metrics_path"], job["scrape_interval"], job["scrape_timeout"])
    assert endpoint["honorLabels"] is False
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])


def test_prometheus_rule_groups_equal_the_shipped_rule_files(rendered: list[Doc]) -> None:
    rule = one(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    check_metadata(rule)
    assert set(rule["spec"]) == {"groups"}
    groups = rule["spec"]["groups"]
    assert groups == shipped_groups()
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), names
    alerts = 0
    for group in groups:
        assert set(group) <= GROUP_FIELDS and group["rules"], group["name"]
        for item in group["rules"]:
            assert set(item) <= RULE_FIELDS, item
            assert ("alert" in item) != ("record" in item), item
            assert isinstance(item["expr"], str) and item["expr"].strip()
            assert DURATION.match(str(item.get("for", "0"))), item
            assert all(isinstance(v, str) for v in item.get("labels", {}).values())
            assert all(isinstance(v, str) for v in item.get("annotations", {}).values())
            alerts += "alert" in item
    assert alerts == sum(len(re.findall(r"^\s*- alert:", p.read_text(encoding="utf-8"), re.M))
                         for p in RULE_FILES)


@pytest.fixture
def extracted_rules(tmp_path: Path) -> Iterator[Path]:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_tool("promtool is not on PATH")
    path = tmp_path / "prometheusrule.rules.yml"
    groups = one(render(BASE), "PrometheusRule")["spec"]["groups"]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    yield path


def test_promtool_checks_the_rendered_rules(extracted_rules: Path) -> None:
    result = run(["promtool", "check", "rules", str(extracted_rules)])
    rules = sum(len(g["rules"]) for g in shipped_groups())
    assert f"SUCCESS: {rules} rules found" in result.stdout, result.stdout


def test_rule_unit_tests_pass_on_the_rendered_rules(extracted_rules: Path) -> None:
    """The promtool unit tests of monitoring/alerts/tests/, pointed at the rendered rules."""
    assert RULE_TESTS
    for test_file in RULE_TESTS:
        spec = yaml.safe_load(test_file.read_text(encoding="utf-8"))
        spec["rule_files"] = [extracted_rules.name]
        copy = extracted_rules.parent / test_file.name
        copy.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        run(["promtool", "test", "rules", copy.name], cwd=extracted_rules.parent)


def test_the_documented_overlay_renders(tmp_path: Path) -> None:
    """The example overlay in deploy/OPERATIONS.md, applied to a copy of the tree."""
    text = (REPO / "deploy" / "OPERATIONS.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n# my-bridge/kustomization.yaml\n(.*?)```", text, re.S)
    assert block, "the example overlay is gone from deploy/OPERATIONS.md"
    shutil.copytree(KUBE, tmp_path / "deploy" / "kubernetes")
    overlay = tmp_path / "my-bridge"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(block.group(1), encoding="utf-8")
    (overlay / "metrics.yaml").write_text("metrics: []\n", encoding="utf-8")
    docs = [d for d in yaml.safe_load_all(run([kubectl(), "kustomize", str(overlay)]).stdout)
            if d]
    assert {d["metadata"]["namespace"] for d in docs} == {"airflow-metrics-bridge"}
    assert {d["metadata"]["labels"]["release"] for d in docs} == {"kube-prometheus-stack"}
    assert container(docs)["image"] == "registry.example.org/airflow-metrics-bridge:0.1.0"
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert "release" not in selector, "the selector of a running Deployment cannot change"
    volume = next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "config")
    data = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    assert data == {"bridge.yaml": (BASE / "bridge.yaml").read_text(encoding="utf-8"),
                    "metrics.yaml": "metrics: []\n"}
