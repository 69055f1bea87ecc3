"""Grafana: the dashboard JSON is well formed and shows what the issue asks for; every panel's
PromQL parses and selects only metrics, labels and values a real ``gnbsched serve`` exports
(names taken from a live /metrics scrape, suffixes included); every query evaluates in a real
Prometheus and returns data; the datasource and dashboard provisioning match compose.yaml."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import promql_parser
import pytest
import yaml
from deploy_support import DEPLOY, REPO, TARGET_LABELS, query, selector_problems

GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
TTI_BUDGET_S = 0.0005
#: Grafana's interval variables -> a duration PromQL accepts
INTERVAL_VARS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(items: list[dict]) -> Iterator[dict]:
    """Every panel, rows' nested panels included."""
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def targets(dash: dict) -> Iterator[tuple[dict, dict]]:
    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            yield p, t


def to_promql(expr: str) -> str:
    """A panel expression with Grafana's variables replaced: intervals by a duration, template
    variables (used only inside regex label matchers) by ``.*``."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return INTERVAL_VARS.get(name, ".*")

    return VAR.sub(sub, expr)


def walk(expr: str) -> tuple[list[tuple[str, dict[str, str | None]]], list[list[str]]]:
    """(selectors as (metric, {label: value of = matcher or None}), label lists of by-clauses)."""
    sels: list[tuple[str, dict[str, str | None]]] = []
    by: list[list[str]] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {
                m.name: (m.value if m.op == promql_parser.MatchOp.Equal else None) for m in node.matchers.matchers
            }
            sels.append((node.name or matchers.pop("__name__"), matchers))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            by.append(list(node.modifier.labels))

    promql_parser.walk(promql_parser.parse(to_promql(expr)), visit)
    return sels, by


def template_queries(dash: dict) -> list[tuple[str, str, str]]:
    """(variable, metric, label) of every ``label_values(metric, label)`` query variable."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", q)
        assert m, f"variable {v['name']}: unsupported query {q!r}"
        out.append((v["name"], m.group(1), m.group(2)))
    return out


@pytest.fixture(params=DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def dash(request) -> dict:
    return load(request.param)


def test_there_is_a_dashboard():
    assert DASHBOARDS, "deploy/grafana/dashboards has no dashboard JSON"


# ----------------------------------------------------------------------------- structure
def test_dashboard_structure(dash):
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    ds_var = next(v for v in dash["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for p in panels(dash["panels"]):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${" + ds_var["name"] + "}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]


def test_every_query_parses_and_variables_stay_in_matchers(dash):
    for p, t in targets(dash):
        walk(t["expr"])  # raises on a syntax error
        # a template variable outside a quoted matcher would change the query's structure
        unquoted = re.sub(r'"[^"]*"', '""', t["expr"])
        for m in VAR.finditer(unquoted):
            assert (m.group(1) or m.group(2)) in INTERVAL_VARS, f"{p['title']}: {m.group(0)} outside a matcher"


def test_dashboard_shows_the_required_views(dash):
    """Latency p50/p99 per stage and transport against the TTI budget, decisions/s by policy,
    valid-before-repair ratio, repairs, fallbacks by reason, state-store errors, model version."""

    def find(pred) -> list[dict]:
        return [p for p in panels(dash["panels"]) if p["type"] != "row" and pred(p)]

    def exprs(p: dict) -> list[str]:
        return [t["expr"] for t in p["targets"]]

    def quantiles(p: dict, metric: str) -> set[float]:
        qs = set()
        for e in exprs(p):
            node = promql_parser.parse(to_promql(e))
            if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
                sels, by = walk(e)
                if {n for n, _ in sels} == {metric} and by and {"le", "stage", "transport"} <= set(by[0]):
                    qs.add(node.args[0].val)
        return qs

    latency = find(lambda p: {0.5, 0.99} <= quantiles(p, "gnbsched_stage_seconds_bucket"))
    assert latency, "no panel with p50 and p99 of gnbsched_stage_seconds by stage and transport"
    steps = latency[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert TTI_BUDGET_S in [s["value"] for s in steps], "the latency panel must mark the 0.5 ms TTI budget"
    assert latency[0]["fieldConfig"]["defaults"]["unit"] == "s"
    assert latency[0]["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] in ("line", "line+area", "dashed")

    def by_labels(p: dict) -> set[str]:
        return {lbl for e in exprs(p) for labels in walk(e)[1] for lbl in labels}

    def metrics(p: dict) -> set[str]:
        return {n for e in exprs(p) for n, _ in walk(e)[0]}

    assert find(
        lambda p: (
            metrics(p) == {"gnbsched_decisions_total"}
            and "policy" in by_labels(p)
            and p["fieldConfig"]["defaults"]["unit"] in ("ops", "reqps")
        )
    ), "decisions/s by policy"
    assert find(
        lambda p: (
            metrics(p) == {"gnbsched_valid_before_repair_total", "gnbsched_decisions_total"}
            and p["fieldConfig"]["defaults"]["unit"] == "percentunit"
        )
    ), "valid-before-repair ratio"
    assert find(lambda p: "gnbsched_repairs_total" in metrics(p)), "repairs"
    assert find(lambda p: metrics(p) == {"gnbsched_fallbacks_total"} and "reason" in by_labels(p)), (
        "fallbacks by reason"
    )
    assert find(lambda p: "gnbsched_state_store_errors_total" in metrics(p)), "state-store errors"
    model = find(lambda p: "gnbsched_policy_info" in metrics(p))
    assert model and {"policy", "version"} <= by_labels(model[0]) | set(
        model[0].get("transformations", [{}])[0].get("options", {}).get("indexByName", {})
    ), "model version"


# ----------------------------------------------------------------------------- against the service
def test_every_metric_a_panel_uses_is_exported(dash, live_service):
    """Names from a live scrape of ``gnbsched serve`` after the fixture's requests: every family
    has samples, so a name that is missing here is a name the service does not export."""
    samples = live_service.samples
    problems = []
    for p, t in targets(dash):
        sels, by = walk(t["expr"])
        metric_labels = {k for name, _ in sels for lbl in samples.get(name, []) for k in lbl}
        problems += [f"{p['title']}: {x}" for name, m in sels for x in selector_problems(name, m, samples)]
        for labels in by:
            missing = set(labels) - metric_labels - TARGET_LABELS
            if missing:
                problems.append(f"{p['title']}: aggregates by {sorted(missing)}, which its metrics do not carry")
        for lbl in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            if lbl not in metric_labels | TARGET_LABELS:
                problems.append(f"{p['title']}: legend uses {{{{{lbl}}}}}, not a label of its metrics")
    for var, metric, label in template_queries(dash):
        if metric not in samples or not any(label in lbl for lbl in samples[metric]):
            problems.append(f"variable {var}: label_values({metric}, {label}) has no values")
    assert not problems, "\n".join(problems)


def test_every_query_returns_data_in_prometheus(dash, prometheus):
    """Each panel query, variables substituted, evaluates in the real Prometheus scraping the
    service and returns series (rates need two scrapes: waited for)."""
    deadline = time.monotonic() + 20
    while not query(prometheus, "count_over_time(gnbsched_decisions_total[1m]) >= 3"):
        assert time.monotonic() < deadline, "Prometheus did not take 3 scrapes in 20 s"
        time.sleep(0.5)
    empty = [(p["title"], t["refId"]) for p, t in targets(dash) if not query(prometheus, to_promql(t["expr"]))]
    assert not empty, f"queries without data: {empty}"


# ----------------------------------------------------------------------------- provisioning
def test_provisioning_matches_the_dashboard_and_compose():
    ds_docs = [yaml.safe_load(p.read_text()) for p in sorted((GRAFANA / "provisioning" / "datasources").glob("*.y*ml"))]
    datasources = [d for doc in ds_docs for d in doc["datasources"]]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    ds = datasources[0]
    for path in DASHBOARDS:
        var = next(v for v in load(path)["templating"]["list"] if v["type"] == "datasource")
        assert var["current"]["value"] == ds["uid"], "the dashboard's default datasource is the provisioned one"
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    host, port = ds["url"].removeprefix("http://").split(":")
    assert host in compose["services"], f"datasource host {host} is not a compose service"
    assert any(m.endswith(f":{port}") for m in compose["services"][host]["ports"])
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["grafana"]["volumes"]}
    for m_src in mounts.values():
        if m_src.startswith("./"):
            assert (REPO / m_src).exists(), m_src
    assert mounts["/etc/grafana/provisioning/datasources"] == "./deploy/grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./deploy/grafana/provisioning/dashboards"
    providers = [
        p
        for f in sorted((GRAFANA / "provisioning" / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers
    for prov in providers:
        src = mounts.get(prov["options"]["path"])
        assert src == "./deploy/grafana/dashboards", f"provider path {prov['options']['path']} is not mounted"
    home = compose["services"]["grafana"]["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        rel = Path(home).relative_to(providers[0]["options"]["path"])
        assert (GRAFANA / "dashboards" / rel).is_file(), home
