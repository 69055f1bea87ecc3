"""Prometheus: the scrape config and alert rules pass ``promtool check``, the rules' unit tests
pass ``promtool test rules``, the rules cover what the service promises to alert on and use only
metrics it exports, the PrometheusRule of the monitoring component carries the same rules, and
a real Prometheus on loopback scrapes a running ``gnbsched serve`` and answers PromQL with data."""

from __future__ import annotations

import time

import httpx
import promql_parser
import yaml
from deploy_support import (
    DEPLOY,
    REPO,
    query,
    render,
    run,
    selector_problems,
    shipped_students,
    tool,
)

PROM = DEPLOY / "prometheus"
TTI_BUDGET_S = 0.0005


def rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def selectors(expr: str) -> list[tuple[str, dict[str, str | None]]]:
    """(metric name, {label: value of an = matcher, None for other matchers}) per vector selector."""
    out: list[tuple[str, dict[str, str | None]]] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {
                m.name: (m.value if m.op == promql_parser.MatchOp.Equal else None) for m in node.matchers.matchers
            }
            name = node.name or matchers.pop("__name__", None)
            assert name, f"selector without a metric name in {expr!r}"
            out.append((name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return out


def test_promtool_checks_config_and_rules():
    promtool = tool("promtool")
    out = run([promtool, "check", "config", str(PROM / "prometheus.yml")]).stdout
    assert "SUCCESS" in out and "1 rule files found" in out, out
    out = run([promtool, "check", "rules", str(PROM / "alerts.yml")]).stdout
    assert f"SUCCESS: {len(rules())} rules found" in out, out


def test_alert_rule_unit_tests():
    """deploy/prometheus/alerts_test.yml: each alert fires on a synthetic series, stays quiet on
    a healthy one, with the exact labels and annotations."""
    out = run([tool("promtool"), "test", "rules", str(PROM / "alerts_test.yml")], timeout=60).stdout
    assert "SUCCESS" in out, out
    tested = {
        t["alertname"]
        for case in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert tested == {r["alert"] for r in rules()}, "every alert has a unit test"


def test_required_alerts_exist():
    by_name = {r["alert"]: r for r in rules()}
    required = {
        "GnbschedDecisionLatencyOverTTI": "gnbsched_stage_seconds_bucket",
        "GnbschedFallbackRateHigh": "gnbsched_fallbacks_total",
        "GnbschedValidRatioDrop": "gnbsched_valid_before_repair_total",
        "GnbschedStateStoreDown": "gnbsched_state_store_up",
    }
    for alert, metric in required.items():
        assert alert in by_name, f"missing alert {alert}"
        assert metric in {n for n, _ in selectors(by_name[alert]["expr"])}
        assert by_name[alert]["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(by_name[alert]["annotations"])
    latency = promql_parser.parse(by_name["GnbschedDecisionLatencyOverTTI"]["expr"])
    assert isinstance(latency, promql_parser.BinaryExpr) and latency.rhs.val == TTI_BUDGET_S
    assert latency.lhs.func.name == "histogram_quantile" and latency.lhs.args[0].val == 0.99


def test_prometheus_rule_matches_alerts_file():
    docs = render("prod-monitoring")
    pr = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert pr["spec"]["groups"] == yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]


def test_scrape_config_targets_the_compose_service():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "gnbsched")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    env = compose["services"]["gnbsched"].get("environment", {})
    port = int(env.get("GNBSCHED_REST_PORT", 8000))
    assert job["static_configs"][0]["targets"] == [f"gnbsched:{port}"]
    mounts = compose["services"]["prometheus"]["volumes"]
    for rule_file in cfg["rule_files"]:
        assert any(m.split(":")[1] == f"/etc/prometheus/{rule_file}" for m in mounts), rule_file
    for m in mounts:
        src = m.split(":")[0]
        if src.startswith("./"):
            assert (REPO / src).exists(), src


#: the metric contract of service/metrics.py (sample names as Prometheus sees them)
CONTRACT = {
    "gnbsched_requests_total": {"transport", "preset", "policy", "outcome"},
    "gnbsched_stage_seconds_bucket": {"transport", "preset", "stage", "le"},
    "gnbsched_request_seconds_bucket": {"transport", "le"},
    "gnbsched_decisions_total": {"policy"},
    "gnbsched_valid_before_repair_total": {"policy"},
    "gnbsched_repairs_total": {"policy"},
    "gnbsched_violations_total": {"kind"},
    "gnbsched_fallbacks_total": {"requested", "served", "reason"},
    "gnbsched_state_store_errors_total": {"op"},
    "gnbsched_state_store_up": set(),
    "gnbsched_policy_info": {"policy", "version"},
}


def test_live_service_exports_the_whole_contract(live_service):
    """The fixture's traffic made every family of the contract produce samples, with its labels
    (so the dashboard and rule checks below compare against a complete scrape)."""
    for name, labels in CONTRACT.items():
        assert name in live_service.samples, f"{name}: no sample after the fixture's requests"
        assert {k for lbl in live_service.samples[name] for k in lbl} == labels, name
    stages = {lbl["stage"] for lbl in live_service.samples["gnbsched_stage_seconds_bucket"]}
    assert stages == {"serialize", "policy", "check", "repair", "total", "decode", "state", "encode"}
    transports = {lbl["transport"] for lbl in live_service.samples["gnbsched_request_seconds_bucket"]}
    assert transports == {"rest", "grpc"}
    outcomes = {lbl["outcome"] for lbl in live_service.samples["gnbsched_requests_total"]}
    assert {"ok", "fallback", "rejected"} <= outcomes
    infos = [lbl for lbl in live_service.samples["gnbsched_policy_info"] if lbl["policy"] == "student"]
    for preset, version in shipped_students():
        assert any(f"{preset}={version}" in lbl["version"] or lbl["version"] == version for lbl in infos), (
            f"model version {preset}/{version} not in gnbsched_policy_info: {infos}"
        )
    assert live_service.samples["gnbsched_state_store_up"] == [{}]
    assert "gnbsched_state_store_up 0.0" in live_service.metrics_text, "Redis was stopped"


def test_alert_rules_use_exported_metrics(live_service):
    """Every selector of every rule names a metric the running service exports (suffixes as
    scraped), with labels it carries and values it takes."""
    problems = [
        f"{rule['alert']}: {p}"
        for rule in rules()
        for name, matchers in selectors(rule["expr"])
        for p in selector_problems(name, matchers, live_service.samples)
    ]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- a real Prometheus
def test_prometheus_scrapes_the_running_service(prometheus: str):
    """Prometheus (Debian package) on 127.0.0.1 with 1 s scrapes and rule evaluation, temporary
    storage and the repo's alert rules, scraping ``gnbsched serve``: its HTTP API returns the
    service's decision count (> 0), the target is up, the rules load and evaluate healthy, and
    the state-store alert expression holds (the fixture stopped Redis)."""
    result = query(prometheus, 'sum(gnbsched_decisions_total{job="gnbsched"})')
    assert result and float(result[0]["value"][1]) >= 10  # every request of the fixture was decided
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    loaded: list[dict] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        if loaded and all(r.get("lastEvaluation", "0").startswith("20") for r in loaded):
            break
        time.sleep(0.5)
    assert {r["name"] for r in loaded} == {r["alert"] for r in rules()}
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
    store_down = next(r for r in rules() if r["alert"] == "GnbschedStateStoreDown")
    assert query(prometheus, store_down["expr"]), "Redis is down: the state-store alert expression must hold"
    errors = query(prometheus, "sum(gnbsched_state_store_errors_total)")
    assert errors and float(errors[0]["value"][1]) > 0
