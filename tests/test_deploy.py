"""Checks for deploy/: the compose file, secrets handling, the bridge image and
the SQL that gives the bridge its read-only access.

`docker-compose config -q` needs docker-compose (1.28+) on PATH; it validates
the file without a Docker engine and without the secret files. The database
tests need `psql`, and run on the tests' PostgreSQL (tests/postgres.py: the
server of BRIDGE_TEST_DATABASE_URL, or the embedded one). Missing tools skip
those tests, unless BRIDGE_REQUIRE_TOOLS=1, in which case they fail.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.postgres import Postgres

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yaml"
GRANT_SQL = DEPLOY / "postgres" / "grant-bridge-readonly.sql"
INIT_DIR = DEPLOY / "postgres" / "init"
SECRETS_DIR = DEPLOY / "secrets"
DOCKERFILE = DEPLOY / "Dockerfile"

# Exactly the tables the bridge reads (the queries of bridge/airflow/source.py).
BRIDGE_TABLES = ("dag_run", "task_instance", "task_instance_history", "xcom", "slot_pool",
                 "job", "dag", "dag_tag", "import_error", "parse_import_error", "alembic_version")
MONITORING_SERVICES = {"prometheus", "alertmanager", "grafana"}
CORE_SERVICES = {"postgres", "airflow-init", "airflow-scheduler", "airflow-api-server",
                 "airflow-dag-processor", "bridge-grants", "bridge"}
# Environment variable names that carry credentials; they may only point at
# files (…_FILE) or commands reading files (…_CMD).
SENSITIVE_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|WEBHOOK|SQL_ALCHEMY_CONN|DB_URL")


# ---------------------------------------------------------------- helpers

def need(reason: str) -> None:
    if os.environ.get("BRIDGE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason} and BRIDGE_REQUIRE_TOOLS=1")
    pytest.skip(f"{reason} (set BRIDGE_REQUIRE_TOOLS=1 to make this a failure)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        need(f"{name} is not on PATH")
    return path


def run(cmd: list[str], *, cwd: Path = REPO, env: dict[str, str] | None = None,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, input=input_text, check=True,
                              capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"`{' '.join(cmd)}` exited {exc.returncode}\n"
                    f"--- stdout\n{exc.stdout}\n--- stderr\n{exc.stderr}")


def compose() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def services() -> dict[str, dict]:
    return compose()["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def secret_names(service: dict) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def image_default(image: str) -> str:
    """`${VAR:-default}` -> default; anything else unchanged."""
    match = re.fullmatch(r"\$\{\w+:?-([^}]+)\}", image)
    return match.group(1) if match else image


# ---------------------------------------------------------------- compose

def test_compose_config_is_valid() -> None:
    tool = require_tool("docker-compose")
    # Secret files need not exist for `config`; nothing is created in the repo.
    run([tool, "-f", str(COMPOSE_FILE), "config", "-q"])
    result = run([tool, "-f", str(COMPOSE_FILE), "--profile", "monitoring", "config",
                  "--services"])
    listed = set(result.stdout.split())
    assert listed >= CORE_SERVICES | MONITORING_SERVICES, listed


def test_compose_services_and_profiles() -> None:
    svc = services()
    assert CORE_SERVICES | {"airflow-triggerer"} <= set(svc), sorted(svc)
    for name, service in svc.items():
        profiles = set(service.get("profiles", []))
        if name in MONITORING_SERVICES:
            assert profiles == {"monitoring"}, name
        else:
            assert not profiles, f"{name} should start without a profile"


def test_images_are_pinned() -> None:
    for name, service in services().items():
        if "image" not in service:
            continue
        image = image_default(service["image"])
        repo_part, _, tag = image.rpartition(":")
        assert repo_part and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} uses :latest"
    airflow_image = image_default(services()["airflow-scheduler"]["image"])
    assert re.fullmatch(r"apache/airflow:3\.\d+\.\d+.*", airflow_image), airflow_image
    assert image_default(services()["postgres"]["image"]).startswith("postgres:16")


def test_secrets_come_from_files_only() -> None:
    doc = compose()
    declared = doc["secrets"]
    for name, spec in declared.items():
        assert set(spec) == {"file"}, f"secret {name}: only `file:` is allowed, got {spec}"
        assert re.fullmatch(r"\./secrets/[a-z0-9_]+\.txt", spec["file"]), spec["file"]
    for name, service in doc["services"].items():
        missing = secret_names(service) - set(declared)
        assert not missing, f"{name} uses undeclared secrets {missing}"
        for key, value in env_of(service).items():
            if SENSITIVE_ENV.search(key):
                assert key.endswith(("_FILE", "_CMD")), \
                    f"{name}: {key} must be read from a secret file"
                assert "/run/secrets/" in value, f"{name}: {key}={value!r}"
                secret = re.search(r"/run/secrets/(\w+)", value).group(1)
                assert secret in secret_names(service), \
                    f"{name}: {key} reads secret {secret!r} that is not mounted"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert not re.search(r"://[^/\s:@]+:[^@\s/]+@", text), "credentials inside a URL"
    literal = re.search(r"(?i)^.*(password|passwd)[ \t]*[:=][ \t]*['\"]?\w.*$", text, re.M)
    assert not literal, f"literal password in compose: {literal and literal.group(0)}"
    assert "POSTGRES_HOST_AUTH_METHOD" not in text


def test_bridge_service() -> None:
    bridge = services()["bridge"]
    assert bridge["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert env_of(bridge) == {
        "BRIDGE_AIRFLOW_DB_URL_FILE": "/run/secrets/bridge_db_url",
        "BRIDGE_LISTEN_ADDRESS": "0.0.0.0:9101",
        "BRIDGE_CACHE_URL": "sqlite:////var/lib/bridge/cache.db",
        "BRIDGE_METRICS_FILE": "/etc/bridge/metrics.yaml",
    }
    assert secret_names(bridge) == {"bridge_db_url"}
    volumes = bridge["volumes"]
    assert "./bridge/metrics.yaml:/etc/bridge/metrics.yaml:ro" in volumes
    assert any(v.split(":")[1] == "/var/lib/bridge" and not v.startswith((".", "/"))
               for v in volumes), f"cache must be on a named volume: {volumes}"
    deps = bridge["depends_on"]
    assert deps["bridge-grants"]["condition"] == "service_completed_successfully"
    grants = services()["bridge-grants"]
    assert grants["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "grant-bridge-readonly.sql" in " ".join(grants["command"])


def test_airflow_services() -> None:
    svc = services()
    init = svc["airflow-init"]
    script = " ".join(init["command"])
    assert "airflow db migrate" in script
    assert "airflow users create" in script and "/run/secrets/airflow_admin_password" in script
    assert "airflow_admin_password" in secret_names(init)
    assert "airflow-init" not in init.get("depends_on", {}), "airflow-init waits for itself"
    for name in ("airflow-scheduler", "airflow-api-server", "airflow-dag-processor",
                 "airflow-triggerer"):
        service = svc[name]
        env = env_of(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert service["depends_on"]["airflow-init"]["condition"] == \
            "service_completed_successfully", name
        assert "./airflow/dags:/opt/airflow/dags:ro" in service["volumes"], name
    assert svc["airflow-api-server"]["command"] == "api-server"
    assert svc["airflow-dag-processor"]["command"] == "dag-processor"


def test_monitoring_services_mount_the_monitoring_tree() -> None:
    svc = services()
    prometheus = svc["prometheus"]
    assert "--storage.tsdb.retention.time=15d" in prometheus["command"]
    config_flag = next(c for c in prometheus["command"] if c.startswith("--config.file="))
    mounts = dict(v.rsplit(":", 2)[:2] if v.count(":") >= 2 else v.split(":")
                  for v in prometheus["volumes"])
    assert mounts["../monitoring/prometheus.yml"] == config_flag.split("=", 1)[1]
    assert mounts["../monitoring/alerts"] == \
        str(Path(config_flag.split("=", 1)[1]).parent / "alerts")
    alertmanager = svc["alertmanager"]
    assert "discord_webhook_url" in secret_names(alertmanager)
    version = re.search(r":v(\d+)\.(\d+)", alertmanager["image"])
    assert version and (int(version.group(1)), int(version.group(2))) >= (0, 28), \
        "discord_configs.webhook_url_file needs Alertmanager >= 0.28"
    grafana = svc["grafana"]
    assert env_of(grafana)["GF_SECURITY_ADMIN_PASSWORD__FILE"] == \
        "/run/secrets/grafana_admin_password"
    providers = yaml.safe_load((REPO / "monitoring/grafana/provisioning/dashboards/"
                                "dashboards.yml").read_text(encoding="utf-8"))
    dashboards_path = providers["providers"][0]["options"]["path"]
    assert f"../monitoring/grafana/dashboards:{dashboards_path}:ro" in grafana["volumes"]
    assert "../monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in \
        grafana["volumes"]


def test_bind_mount_sources_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                # A missing source would make Docker create an empty directory in its
                # place.
                assert (DEPLOY / source).exists(), \
                    f"{name}: bind-mount source deploy/{source.removeprefix('./')} is missing"


def test_published_ports_bind_to_localhost() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is public"


# ---------------------------------------------------------------- secrets

def test_secret_files_are_ignored_and_documented() -> None:
    assert "secrets/*.txt" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    readme = (SECRETS_DIR / "README.md").read_text(encoding="utf-8")
    for spec in compose()["secrets"].values():
        assert Path(spec["file"]).name in readme, f"{spec['file']} missing from README"
    if shutil.which("git") and (REPO / ".git").exists():
        tracked = subprocess.run(["git", "ls-files", "deploy/secrets"], cwd=REPO,
                                 capture_output=True, text=True, check=False).stdout.split()
        assert not [t for t in tracked if t.endswith(".txt")], f"secret files tracked: {tracked}"


def test_generate_secrets_script(tmp_path: Path) -> None:
    require_tool("bash")
    work = tmp_path / "secrets"
    work.mkdir()
    shutil.copy2(SECRETS_DIR / "generate.sh", work / "generate.sh")
    run(["bash", str(work / "generate.sh")], cwd=tmp_path)
    created = {p.name for p in work.glob("*.txt")}
    expected = {Path(s["file"]).name for s in compose()["secrets"].values()}
    assert created == expected
    values = {p.stem: p.read_text(encoding="utf-8") for p in work.glob("*.txt")}
    assert all(v and not v.endswith("\n") for v in values.values())
    assert values["airflow_db_url"] == \
        f"postgresql+psycopg2://airflow:{values['airflow_db_password']}@postgres:5432/airflow"
    assert values["bridge_db_url"] == \
        f"postgresql+psycopg://airflow_bridge:{values['bridge_db_password']}@postgres:5432/airflow"
    assert len(base64.urlsafe_b64decode(values["airflow_fernet_key"])) == 32
    passwords = [values[k] for k in values if k.endswith("password")]
    assert len(set(passwords)) == len(passwords), "generated passwords repeat"
    before = dict(values)
    run(["bash", str(work / "generate.sh")], cwd=tmp_path)
    assert {p.stem: p.read_text(encoding="utf-8") for p in work.glob("*.txt")} == before, \
        "a second run must keep existing secrets"


# ---------------------------------------------------------------- image

def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f == "python:3.11-slim" for f in froms), froms
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    assert re.search(r"^EXPOSE\s+9101\s*$", text, re.M)
    assert re.search(r'^CMD \["airflow-metrics-bridge", "serve"\]\s*$', text, re.M)
    healthcheck = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, re.M | re.S)
    assert healthcheck and "http://127.0.0.1:9101/-/healthy" in healthcheck.group(0)
    assert '"python"' in healthcheck.group(0) and "curl" not in healthcheck.group(0)
    for needed in ("pyproject.toml", "bridge", "migrations"):
        assert re.search(rf"^COPY .*\b{needed}\b", text, re.M), f"{needed} not copied"
    assert not re.search(r"^(ENV|ARG).*(PASSWORD|SECRET|://[^/\s]*@)", text, re.M)
    assert not re.search(r"^COPY\s+(\S*/)?(deploy|secrets)\b", text, re.M), \
        "configuration and secrets are mounted at run time, not copied"
    rules = [line.strip() for line in
             (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert rules[0] == "*", "the ignore file should exclude everything, then re-include"
    assert {"!pyproject.toml", "!bridge/", "!migrations/"} <= set(rules), rules
    assert not any(r.startswith("!") and ("secret" in r or "deploy" in r) for r in rules)


# ---------------------------------------------------------------- PostgreSQL

@pytest.fixture
def admin_url(pg: Postgres) -> str:
    """A libpq URL of the tests' server; an embedded one is reached by its socket
    directory (…?host=/path)."""
    require_tool("psql")
    return pg.libpq()


def with_database(url: str, database: str) -> str:
    return str(make_url(url).set(database=database).render_as_string(hide_password=False))


def psql(url: str, *args: str, sql: str | None = None,
         env: dict[str, str] | None = None) -> str:
    cmd = ["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-At", *args]
    if sql is not None:
        cmd += ["-c", sql]
    return run(cmd, env=env).stdout


@pytest.fixture
def scratch(admin_url: str) -> Iterator[dict[str, str]]:
    """A uniquely named database and role names; dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    names = {"db": f"bridge_test_{suffix}", "bridge_role": f"airflow_bridge_test_{suffix}",
             "owner_role": f"airflow_owner_test_{suffix}"}
    try:
        yield names
    finally:
        subprocess.run(["psql", admin_url, "-X", "-q", "-c",
                        f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)'],
                       capture_output=True, check=False, timeout=60)
        for role in (names["bridge_role"], names["owner_role"]):
            subprocess.run(["psql", admin_url, "-X", "-q", "-c", f'DROP ROLE IF EXISTS "{role}"'],
                           capture_output=True, check=False, timeout=60)


def create_stub_tables(url: str) -> None:
    tables = [*BRIDGE_TABLES, "connection", "variable"]
    psql(url, sql="; ".join(f"CREATE TABLE {t} (id integer)" for t in tables))


def test_grant_script_grants_select_on_exactly_the_bridge_tables(
        admin_url: str, scratch: dict[str, str]) -> None:
    db, role = scratch["db"], scratch["bridge_role"]
    psql(admin_url, sql=f'CREATE DATABASE "{db}"')
    psql(admin_url, sql=f'CREATE ROLE "{role}" NOLOGIN')
    db_url = with_database(admin_url, db)
    create_stub_tables(db_url)

    for _ in range(2):  # re-running must be harmless
        psql(db_url, "-v", f"bridge_role={role}", "-f", str(GRANT_SQL))

    rows = psql(db_url, sql=(
        "SELECT c.relname, has_table_privilege({r}, c.oid, 'SELECT'), "
        "has_table_privilege({r}, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r'".format(r=f"'{role}'")))
    privileges = {name: (sel == "t", write == "t")
                  for name, sel, write in (line.split("|") for line in rows.splitlines())}
    assert privileges == {**{t: (True, False) for t in BRIDGE_TABLES},
                          "connection": (False, False), "variable": (False, False)}
    assert psql(db_url, sql=f"SELECT has_database_privilege('{role}', current_database(), "
                            f"'CONNECT'), has_database_privilege('{role}', current_database(), "
                            "'CREATE')") == "t|f\n"


def test_grant_script_fails_for_a_missing_role(admin_url: str, scratch: dict[str, str]) -> None:
    db = scratch["db"]
    psql(admin_url, sql=f'CREATE DATABASE "{db}"')
    result = subprocess.run(
        ["psql", with_database(admin_url, db), "-X", "-v", "ON_ERROR_STOP=1",
         "-v", f"bridge_role={scratch['bridge_role']}", "-f", str(GRANT_SQL)],
        capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode != 0 and "does not exist" in result.stderr, result.stderr


def test_init_scripts_and_grants_end_to_end(admin_url: str, scratch: dict[str, str],
                                            tmp_path: Path) -> None:
    """The postgres init scripts, then the grants as the Airflow owner, then a
    session as the bridge role: reads work, writes are refused."""
    admin = make_url(admin_url)
    db, owner, bridge = scratch["db"], scratch["owner_role"], scratch["bridge_role"]
    owner_pw, bridge_pw = f"o'{uuid.uuid4().hex} x", uuid.uuid4().hex
    (tmp_path / "owner").write_text(owner_pw + "\n", encoding="utf-8")
    (tmp_path / "bridge").write_text(bridge_pw, encoding="utf-8")
    env = {**os.environ,
           "PGHOST": admin.host or str(admin.query.get("host", "")),
           "PGPORT": str(admin.port or 5432),
           "POSTGRES_USER": admin.username or "postgres",
           "POSTGRES_DB": admin.database or "postgres",
           "AIRFLOW_DB_USER": owner, "AIRFLOW_DB_NAME": db,
           "AIRFLOW_DB_PASSWORD_FILE": str(tmp_path / "owner"),
           "BRIDGE_DB_ROLE": bridge, "BRIDGE_DB_PASSWORD_FILE": str(tmp_path / "bridge")}
    if admin.password:
        env["PGPASSWORD"] = str(admin.password)
    for script in sorted(INIT_DIR.glob("*.sh")):
        run(["bash", str(script)], env=env)

    settings = psql(admin_url, sql=(
        "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s "
        f"JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = '{bridge}'"))
    assert "default_transaction_read_only=on" in settings
    assert "statement_timeout=30s" in settings
    flags = psql(admin_url, sql=(
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
        f"WHERE rolname = '{bridge}'"))
    assert flags == "t|f|f|f\n"

    def as_role(role: str, password: str) -> str:
        return str(admin.set(username=role, password=None, database=db)
                   .render_as_string(hide_password=False))

    owner_env = {**os.environ, "PGPASSWORD": owner_pw}
    bridge_env = {**os.environ, "PGPASSWORD": bridge_pw}
    owner_url, bridge_url = as_role(owner, owner_pw), as_role(bridge, bridge_pw)
    psql(owner_url, env=owner_env, sql="; ".join(
        f"CREATE TABLE {t} (id integer)" for t in
        ("dag_run", "task_instance", "xcom", "job", "dag", "import_error", "alembic_version",
         "connection")))
    psql(owner_url, "-v", f"bridge_role={bridge}", "-f", str(GRANT_SQL), env=owner_env)

    assert psql(bridge_url, env=bridge_env, sql="SELECT count(*) FROM dag_run") == "0\n"
    assert psql(bridge_url, env=bridge_env,
                sql="SHOW default_transaction_read_only") == "on\n"
    for statement, error in (("INSERT INTO dag_run VALUES (1)", "read-only transaction"),
                             ("SELECT * FROM connection", "permission denied"),
                             ("CREATE TABLE t (i int)", "read-only transaction")):
        result = subprocess.run(["psql", bridge_url, "-X", "-v", "ON_ERROR_STOP=1", "-c",
                                 statement], env=bridge_env, capture_output=True, text=True,
                                check=False, timeout=60)
        assert result.returncode != 0 and error in result.stderr, (statement, result.stderr)


def test_operations_guide_covers_the_runbook() -> None:
    text = (DEPLOY / "OPERATIONS.md").read_text(encoding="utf-8")
    for needed in ("docker compose --profile monitoring up -d", "grant-bridge-readonly.sql",
                   "CREATE ROLE airflow_bridge", "default_transaction_read_only",
                   "airflow-metrics-bridge migrate", "/-/ready", "503",
                   "airflow_bridge_metadb_up 0", "Prometheus target down", "No data yet"):
        assert needed in text, f"OPERATIONS.md does not mention {needed!r}"
