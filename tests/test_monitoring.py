"""Checks for monitoring/: Prometheus config, alert rules and their unit tests,
Alertmanager config, Grafana provisioning and dashboards.

The promtool/amtool checks need those tools on PATH (they ship with
Prometheus and Alertmanager). Without them the checks are skipped,
unless BRIDGE_REQUIRE_TOOLS=1, in which case they fail.
"""

from __future__ import annotations

import json
import re
import shutil
from itertools import combinations
from pathlib import Path

import yaml

from bridge import catalog
from bridge.definitions import load_definitions
from tests.tools import missing_tool, run

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
RULES_DIR = MONITORING / "alerts"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
RULE_TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))

BRIDGE_JOB = "airflow-metrics-bridge"

# The metrics airflow-metrics-bridge serves: its catalog and the shipped business metrics.
# Histograms are listed separately because only they may be queried with _bucket/_sum/_count.
HISTOGRAMS = {spec.name for spec in catalog.HISTOGRAMS}
CATALOG = {spec.name for spec in catalog.CATALOG} | {
    d.name for d in load_definitions(REPO / "deploy" / "bridge" / "metrics.yaml", catalog.BY_NAME)}

# Series Prometheus itself provides for every target.
PROMETHEUS_SERIES = {"up"}

SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_PARTS = ("What it means:", "Likely causes:", "Check first:")


# ---------------------------------------------------------------- helpers

def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_tool(f"{name} is not on PATH")
    return path


def load_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def rules() -> list[dict]:
    out = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                out.append(dict(rule, _file=path.name))
    return out


def alert_rules() -> list[dict]:
    return [r for r in rules() if "alert" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def dashboards() -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text(encoding="utf-8"))) for p in DASHBOARD_FILES]


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels folded into a collapsed row
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target of every dashboard."""
    out = []
    for path, dash in dashboards():
        for panel in panels(dash):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"{path.name}: {panel.get('title')!r}", target["expr"]))
    return out


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (Grafana variables allowed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^{}]*\}", " ", s)                       # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                       # ranges, subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)                      # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def unknown_metrics(names: set[str]) -> set[str]:
    allowed = CATALOG | PROMETHEUS_SERIES | recorded_names()
    unknown = set()
    for name in names:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in allowed:
            continue
        if base != name and base in HISTOGRAMS:
            continue
        unknown.add(name)
    return unknown


# ---------------------------------------------------------------- Prometheus

def test_prometheus_config_is_valid() -> None:
    promtool = require_tool("promtool")
    # promtool resolves rule_files relative to the config file, like Prometheus.
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert f"{len(RULE_FILES)} rule files found" in result.stdout, result.stdout


def test_prometheus_config_scrapes_bridge_and_alerts() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    bridge = jobs.get(BRIDGE_JOB)
    assert bridge is not None, f"no scrape job {BRIDGE_JOB!r}: {sorted(jobs)}"
    assert bridge.get("scrape_interval") == "30s"
    assert bridge.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in bridge["static_configs"] for t in sc["targets"]]
    assert targets == ["bridge:9101"]
    assert not bridge.get("honor_labels", False), \
        "honor_labels would let the bridge's `job` label replace the target job label"
    am_targets = [t for am in config["alerting"]["alertmanagers"]
                  for sc in am["static_configs"] for t in sc["targets"]]
    assert am_targets == ["alertmanager:9093"]
    matched = {p for pattern in config["rule_files"]
               for p in PROMETHEUS_CONFIG.parent.glob(pattern)}
    assert matched == set(RULE_FILES), \
        f"rule_files {config['rule_files']} match {sorted(map(str, matched))}"


def test_alert_rules_are_valid() -> None:
    promtool = require_tool("promtool")
    run([promtool, "check", "rules", *map(str, RULE_FILES)])


def test_alert_rule_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    assert RULE_TEST_FILES, "no promtool unit tests in monitoring/alerts/tests/"
    run([promtool, "test", "rules", *map(str, RULE_TEST_FILES)])


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    tested_rule_files = set()
    for path in RULE_TEST_FILES:
        doc = load_yaml(path)
        tested_rule_files |= {(path.parent / f).resolve() for f in doc["rule_files"]}
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                bucket = firing if case.get("exp_alerts") else quiet
                bucket[case["alertname"]] = bucket.get(case["alertname"], 0) + 1
    assert tested_rule_files == {p.resolve() for p in RULE_FILES}, \
        "every rules file must be loaded by a unit-test file"
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    problems = [f"{n}: firing cases={firing.get(n, 0)}, quiet cases={quiet.get(n, 0)}"
                for n in names if not firing.get(n) or not quiet.get(n)]
    assert not problems, "alerts without both kinds of unit test:\n" + "\n".join(problems)
    unknown = (set(firing) | set(quiet)) - set(names)
    assert not unknown, f"unit tests for alerts that do not exist: {sorted(unknown)}"


def test_firing_unit_tests_pin_labels_and_annotations() -> None:
    for path in RULE_TEST_FILES:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    where = f"{path.name}: {test['name']}"
                    assert "severity" in alert.get("exp_labels", {}), where
                    annotations = alert.get("exp_annotations", {})
                    assert {"summary", "description"} <= set(annotations), where


def test_alerts_have_severity_and_runbook_annotations() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        assert rule["labels"].get("component") in {"airflow", "bridge", "model"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name}: no summary"
        description = annotations.get("description", "")
        missing = [part for part in RUNBOOK_PARTS if part not in description]
        assert not missing, f"{name}: description lacks {missing}"


def test_alert_exprs_use_only_known_metrics() -> None:
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule.get('alert') or rule.get('record')}: no metric found"
        unknown = unknown_metrics(names)
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_metric_name_parser() -> None:
    expr = ('histogram_quantile(0.95, sum by (dag_id, le) (rate('
            'airflow_task_instance_queued_seconds_bucket{dag_id=~"$dag_id"}[$window]))) > 300 '
            'unless on (dag_id) (time() - max by (dag_id) (airflow_dag_paused offset 5m) == 1) '
            'or label_replace(vector(1e3), "dag_id", "x", "", "")')
    assert metric_names(expr) == {"airflow_task_instance_queued_seconds_bucket",
                                  "airflow_dag_paused"}
    assert unknown_metrics({"airflow_dag_paused_bucket", "nope"}) == \
        {"airflow_dag_paused_bucket", "nope"}


# ---------------------------------------------------------------- Alertmanager

def _amtool_version(amtool: str) -> tuple[int, int]:
    out = run([amtool, "--version"])
    match = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    assert match, f"cannot read the amtool version from {out.stdout!r}"
    return int(match.group(1)), int(match.group(2))


def _checkable_config(amtool: str, tmp_path: Path) -> Path:
    """The shipped config, or for an amtool older than 0.28 a copy it can read."""
    config_path = ALERTMANAGER_CONFIG
    if _amtool_version(amtool) < (0, 28):
        # discord_configs.webhook_url_file exists from Alertmanager 0.28 on
        # (the compose file pins such an image); an older amtool only knows the
        # inline webhook_url, so check a copy that uses a dummy inline URL.
        text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
        assert "webhook_url_file:" in text
        config_path = tmp_path / "alertmanager.yml"
        config_path.write_text(re.sub(
            r"webhook_url_file: /run/secrets/\w+",
            "webhook_url: https://discord.invalid/api/webhooks/0/test", text), encoding="utf-8")
    return config_path


def test_alertmanager_config_is_valid(tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    result = run([amtool, "check-config", str(_checkable_config(amtool, tmp_path))])
    assert "SUCCESS" in result.stdout, result.stdout


def test_alertmanager_routes_by_dag_owner(tmp_path: Path) -> None:
    """The owners label the alert rules join from airflow_dag_info picks the channel."""
    amtool = require_tool("amtool")
    config_path = _checkable_config(amtool, tmp_path)
    expected = {"ml-team": "discord-ml-team", "airflow, ml-team": "discord-ml-team",
                "ml-team,data": "discord-ml-team", "ml-teamx": "discord", "data-eng": "discord"}
    for owners, receiver in expected.items():
        for severity in ("warning", "critical"):
            routed = run([amtool, "config", "routes", "test", f"--config.file={config_path}",
                          f"owners={owners}", "alertname=AirflowDagRunFailed",
                          f"severity={severity}"])
            assert routed.stdout.strip() == receiver, (owners, routed.stdout)
    unowned = run([amtool, "config", "routes", "test", f"--config.file={config_path}",
                   "alertname=AirflowDagRunFailed", "severity=warning"])
    assert unowned.stdout.strip() == "discord"


def test_alertmanager_routes_to_discord_with_file_secret() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    assert not re.search(r"^\s*webhook_url:", text, re.M), "inline webhook URL"
    receivers = {r["name"]: r for r in config["receivers"]}
    discord = receivers[config["route"]["receiver"]]["discord_configs"]
    assert [d["webhook_url_file"] for d in discord] == ["/run/secrets/discord_webhook_url"]
    route = config["route"]
    assert {"alertname", "dag_id"} <= set(route["group_by"])
    for key in ("group_wait", "group_interval", "repeat_interval"):
        assert route.get(key), key


def test_alertmanager_inhibition_refers_to_real_alerts() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    names = {r["alert"] for r in alert_rules()}
    components = {r["labels"]["component"] for r in alert_rules()}
    bridge_down_inhibits = False
    for rule in config["inhibit_rules"]:
        for matcher in rule.get("source_matchers", []) + rule.get("target_matchers", []):
            label, _op, value = re.match(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"?([^"]*)"?\s*$',
                                        matcher).groups()
            if label == "alertname":
                for alt in value.split("|"):
                    assert alt in names, f"inhibit rule names unknown alert {alt!r}"
            if label == "component":
                assert set(value.split("|")) <= components, matcher
        if any("AirflowBridgeTargetDown" in m for m in rule.get("source_matchers", [])) and \
                any(m.replace(" ", "").startswith("component=~") and "airflow" in m
                    for m in rule.get("target_matchers", [])):
            bridge_down_inhibits = True
    assert bridge_down_inhibits, "bridge down must inhibit the Airflow alerts"


# ---------------------------------------------------------------- Grafana

def test_grafana_provisioning_files() -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    [ds] = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_dashboards_have_unique_uids_and_panel_ids() -> None:
    assert {p.name for p in DASHBOARD_FILES} >= {"airflow-overview.json",
                                                 "bike-model-quality.json"}
    uids = [dash["uid"] for _, dash in dashboards()]
    assert all(uids) and len(uids) == len(set(uids)), f"dashboard uids: {uids}"
    for path, dash in dashboards():
        ids = [panel["id"] for panel in panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {ids}"


def test_dashboards_use_the_datasource_variable() -> None:
    for path, dash in dashboards():
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables.get("datasource", {}).get("type") == "datasource", path.name
        assert variables["datasource"].get("query") == "prometheus", path.name
        for panel in panels(dash):
            if panel.get("type") == "row":
                continue
            where = f"{path.name}: panel {panel['id']} {panel.get('title')!r}"
            assert panel.get("datasource", {}).get("uid") == "${datasource}", where
            for target in panel.get("targets", []):
                uid = target.get("datasource", {}).get("uid", "${datasource}")
                assert uid == "${datasource}", where
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "${datasource}", variable["name"]


def test_every_panel_has_a_promql_target() -> None:
    for path, dash in dashboards():
        for panel in panels(dash):
            if panel.get("type") == "row":
                continue
            exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
            assert exprs and all(exprs), \
                f"{path.name}: panel {panel['id']} {panel.get('title')!r} has empty targets"
            assert panel.get("title"), f"{path.name}: panel {panel['id']} has no title"


def test_dashboard_grid_fits_and_does_not_overlap() -> None:
    for path, dash in dashboards():
        boxes = []
        for panel in panels(dash):
            g = panel["gridPos"]
            where = f"{path.name}: panel {panel['id']} {panel.get('title')!r} {g}"
            assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, where
            assert g["x"] + g["w"] <= 24, f"{where} exceeds 24 columns"
            boxes.append((where, g))
        for (wa, a), (wb, b) in combinations(boxes, 2):
            overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                       and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
            assert not overlap, f"overlapping panels:\n  {wa}\n  {wb}"


def test_dashboards_use_only_known_metrics_and_cover_the_catalog() -> None:
    used: set[str] = set()
    for where, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = unknown_metrics(names)
        assert not unknown, f"{where}: unknown metrics {unknown} in {expr!r}"
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(
            r"_(bucket|sum|count)$", "", n) in HISTOGRAMS else n for n in names}
    for path, dash in dashboards():
        for variable in dash["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"] if isinstance(variable["query"], dict) \
                    else variable["query"]
                match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
                assert match, f"{path.name}: variable query {query!r}"
                assert not unknown_metrics({match.group(1)}), query
    missing = CATALOG - used
    assert not missing, f"metrics shown on no dashboard: {sorted(missing)}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Let promtool parse every panel query, with Grafana variables filled in."""
    promtool = require_tool("promtool")
    substitutions = {"$__rate_interval": "2m", "$__range": "1d", "$__interval": "1m",
                     "$window": "1d", "$dag_id": ".*"}
    rules_doc = {"groups": [{"name": "dashboard-queries", "rules": []}]}
    for i, (where, expr) in enumerate(dashboard_exprs()):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unsubstituted variable in {expr!r}"
        rules_doc["groups"][0]["rules"].append({"record": f"dashboard:query_{i}:check",
                                                "expr": expr})
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump(rules_doc), encoding="utf-8")
    run([promtool, "check", "rules", str(path)])
