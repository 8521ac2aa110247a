"""Checks for deploy/docker-compose.attach.yaml: the bridge (and the monitoring profile)
next to an Airflow metadata DB that runs elsewhere, its URL read from a secret file.

`docker-compose config` needs docker-compose (1.28+) on PATH; it validates and renders the
file without a Docker engine and without the secret files. When it is missing those tests
skip, unless BRIDGE_REQUIRE_TOOLS=1, in which case they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ATTACH_FILE = DEPLOY / "docker-compose.attach.yaml"
FULL_FILE = DEPLOY / "docker-compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
MONITORING = {"prometheus", "alertmanager", "grafana"}

Doc = dict[str, Any]


def need(reason: str) -> None:
    if os.environ.get("BRIDGE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason} and BRIDGE_REQUIRE_TOOLS=1")
    pytest.skip(f"{reason} (set BRIDGE_REQUIRE_TOOLS=1 to make this a failure)")


def compose_tool() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        need("docker-compose is not on PATH")
    assert path is not None
    return path


def run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True,
                              timeout=120).stdout
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"`{' '.join(cmd)}` exited {exc.returncode}\n"
                    f"--- stdout\n{exc.stdout}\n--- stderr\n{exc.stderr}")


def load(path: Path) -> Doc:
    doc: Doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def secret_names(service: Doc) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def test_attach_config_is_valid_and_starts_only_the_bridge() -> None:
    tool = compose_tool()
    run([tool, "-f", str(ATTACH_FILE), "config", "-q"])
    with_profile = run([tool, "-f", str(ATTACH_FILE), "--profile", "monitoring", "config",
                        "--services"]).split()
    assert sorted(with_profile) == sorted({"bridge"} | MONITORING)
    # `config` lists every service whatever the profile; what starts without one is the
    # services without `profiles`.
    rendered = yaml.safe_load(run([tool, "-f", str(ATTACH_FILE), "config"]))
    profiles = {name: s.get("profiles", []) for name, s in rendered["services"].items()}
    assert profiles == {"bridge": [], **{name: ["monitoring"] for name in MONITORING}}


def test_attach_services_are_those_of_the_full_stack() -> None:
    """Same bridge and monitoring services, minus what ties them to the bundled Airflow."""
    attach, full = load(ATTACH_FILE)["services"], load(FULL_FILE)["services"]
    assert set(attach) == {"bridge"} | MONITORING
    for name in MONITORING:
        assert attach[name] == full[name], name
    bridge = dict(attach["bridge"])
    assert bridge.pop("extra_hosts") == ["host.docker.internal:host-gateway"]
    assert bridge == {k: v for k, v in full["bridge"].items() if k != "depends_on"}
    assert "depends_on" not in attach["bridge"]


def test_attach_secrets_are_files_the_full_stack_also_uses() -> None:
    attach, full = load(ATTACH_FILE), load(FULL_FILE)
    used = set().union(*(secret_names(s) for s in attach["services"].values()))
    assert set(attach["secrets"]) == used == {"bridge_db_url", "grafana_admin_password",
                                             "discord_webhook_url",
                                             "discord_webhook_url_ml_team"}
    for name, spec in attach["secrets"].items():
        # The same files, so ./secrets/generate.sh and secrets/README.md cover them.
        assert spec == full["secrets"][name], name
    text = ATTACH_FILE.read_text(encoding="utf-8")
    assert not re.search(r"://[^/\s:@<]+:[^@\s/<]+@", text), "credentials inside a URL"


def test_attach_mounts_and_ports() -> None:
    for name, service in load(ATTACH_FILE)["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} is missing"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is public"
    volumes = load(ATTACH_FILE)["services"]["bridge"]["volumes"]
    assert "bridge-cache:/var/lib/bridge" in volumes, "the cache needs a named volume"


def image_env() -> dict[str, str]:
    final_stage = DOCKERFILE.read_text(encoding="utf-8").rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", final_stage, re.M):
        env.update(re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")))
    return env


def test_bridge_reads_the_url_from_the_secret_file(tmp_path: Path) -> None:
    """The bridge's own loader on the rendered service: URL from the secret file, cache
    on the volume, metric definitions from the mounted file."""
    tool = compose_tool()
    rendered = yaml.safe_load(run([tool, "-f", str(ATTACH_FILE), "config"]))
    bridge = rendered["services"]["bridge"]
    url = "postgresql://airflow_bridge:pw@airflow-db.example.internal:5432/airflow"
    mounts = {"/run/secrets/bridge_db_url": tmp_path / "bridge_db_url",
              "/var/lib/bridge": tmp_path / "cache"}
    mounts["/run/secrets/bridge_db_url"].write_text(url + "\n", encoding="utf-8")
    for volume in bridge["volumes"]:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) \
            else volume.split(":")[:2]
        if target not in mounts:
            mounts[target] = Path(source)
    assert mounts["/etc/bridge/metrics.yaml"] == DEPLOY / "bridge" / "metrics.yaml"

    def moved(value: str) -> str:
        for target, place in mounts.items():
            value = value.replace(target, str(place))
        return value

    env = {k: moved(str(v)) for k, v in {**image_env(), **bridge["environment"]}.items()}
    settings = config.load(environ=env)
    assert settings.airflow_url is not None
    assert settings.airflow_url.render_as_string(hide_password=False) == \
        url.replace("postgresql://", "postgresql+psycopg://")
    assert str(settings.cache_url) == f"sqlite:///{tmp_path}/cache/cache.db"
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9101)
    shipped = yaml.safe_load((DEPLOY / "bridge/metrics.yaml").read_text(encoding="utf-8"))
    assert [d.name for d in settings.definitions] == [m["name"] for m in shipped["metrics"]]
