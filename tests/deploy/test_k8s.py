"""Kubernetes manifests: every overlay renders with ``kubectl kustomize`` (offline) and passes
``kubernetes-validate --strict`` for a current Kubernetes; then the wiring a schema cannot see:
selectors, named ports, probes, hardening, settings, replicas against the state store."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib

import pytest
from deploy_support import K8S, OVERLAYS, REPO, render, run, tool

#: the Kubernetes release the manifests are validated against (kubernetes-validate ships it)
K8S_VERSION = "1.32.0"
#: kinds whose schemas are CRDs of the Prometheus Operator, not part of Kubernetes: the
#: validator has no schema for them (it would fail "Couldn't find schema"). They are checked
#: field by field below (ServiceMonitor) and in test_prometheus.py (PrometheusRule).
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
APP = {"app.kubernetes.io/name": "gnbsched", "app.kubernetes.io/component": "scheduler"}


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in kinds(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_templates(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod template) of every Deployment / StatefulSet."""
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def scheduler(docs: list[dict]) -> tuple[dict, dict, dict]:
    """(Deployment, pod spec, gnbsched container)."""
    dep = one(docs, "Deployment", "gnbsched")
    spec = dep["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "gnbsched")
    return dep, spec, container


def settings_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment: its envFrom ConfigMaps (which must be rendered) and env."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        cm = one(docs, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


# ----------------------------------------------------------------------------- schema validation
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_schema_validation(overlay, tmp_path):
    import yaml

    docs = render(overlay)
    assert docs, f"{overlay} renders nothing"
    core = [d for d in docs if (d["apiVersion"], d["kind"]) not in OPERATOR_KINDS]
    skipped = [d for d in docs if (d["apiVersion"], d["kind"]) in OPERATOR_KINDS]
    if overlay != "prod-monitoring":
        assert not skipped, f"{overlay} needs the Prometheus Operator CRDs; only prod-monitoring may"
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core, sort_keys=False))
    out = run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)], timeout=60).stdout
    for d in core:  # each document was really checked against a schema, none passed unchecked
        resource = f"{d['kind'].lower()}/{d['metadata']['name']}"
        assert f"passed for resource {resource} against version" in out, f"{resource} not validated:\n{out}"


def test_base_renders_and_validates(tmp_path):
    out = run([tool("kubectl"), "kustomize", str(K8S / "base")]).stdout
    path = tmp_path / "base.yaml"
    path.write_text(out)
    run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)], timeout=60)


def test_validator_rejects_an_unknown_field(tmp_path):
    """The strict validation above would notice a typo (it is not a no-op)."""
    import yaml

    dep = json.loads(json.dumps(one(render("dev"), "Deployment", "gnbsched")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = dep["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(dep))
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stdout


# ----------------------------------------------------------------------------- every overlay
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_and_no_floating_images(overlay):
    docs = render(overlay)
    ns = [d["metadata"]["name"] for d in kinds(docs, "Namespace")]
    assert len(ns) == 1, "each overlay creates its namespace"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == ns[0], f"{d['kind']}/{d['metadata']['name']} outside {ns[0]}"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for _w, tpl in pod_templates(docs):
        for c in tpl["spec"]["containers"]:
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest", f"{c['image']}: pin a tag"
            if c["name"] == "gnbsched":
                assert c["image"] == f"gnbsched:{version}", "the scheduler image tag follows the package version"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scheduler_probes_ports_and_shutdown(overlay):
    docs = render(overlay)
    _dep, spec, c = scheduler(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"http", "grpc"}
    env = settings_env(docs, c)
    assert int(env["GNBSCHED_REST_PORT"]) == ports["http"] and int(env["GNBSCHED_GRPC_PORT"]) == ports["grpc"]
    assert env["GNBSCHED_HOST"] == "0.0.0.0"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] == "http", (probe, get)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and 0 < float(pre_stop[1]) < spec["terminationGracePeriodSeconds"]
    assert spec["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_and_bounded(overlay):
    docs = render(overlay)
    for workload, tpl in pod_templates(docs):
        spec = tpl["spec"]
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            for m in mounts.values():
                assert m in volumes or m in claims, f"{where}: mount of undeclared volume {m}"
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be an emptyDir"
            assert c["livenessProbe"] and c["readinessProbe"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_the_right_pods_by_named_ports(overlay):
    docs = render(overlay)
    workloads = pod_templates(docs)
    for svc in kinds(docs, "Service"):
        sel = svc["spec"]["selector"]
        matched = [(w, t) for w, t in workloads if selects(sel, t["metadata"]["labels"])]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} workloads"
        _w, tpl = matched[0]
        container_ports = {p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["name"] and p["targetPort"] in container_ports, (svc["metadata"]["name"], p)
    main = one(docs, "Service", "gnbsched")
    assert {p["name"]: p["port"] for p in main["spec"]["ports"]} == {"http": 8000, "grpc": 50051}
    assert selects(main["spec"]["selector"], scheduler(docs)[0]["spec"]["template"]["metadata"]["labels"])
    dep = scheduler(docs)[0]
    assert dep["spec"]["selector"]["matchLabels"] == APP


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_configmap_parses_as_settings(overlay, monkeypatch):
    from service.config import Settings

    docs = render(overlay)
    _dep, _spec, c = scheduler(docs)
    env = settings_env(docs, c)
    known = {f"GNBSCHED_{k.upper()}" for k in Settings.model_fields} | {"GNBSCHED_MODEL_DIR"}
    unknown = {k for k in env if k.startswith("GNBSCHED_")} - known
    assert not unknown, f"ConfigMap keys that are no setting: {unknown}"
    for k in list(os.environ):
        if k.startswith("GNBSCHED_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.host == "0.0.0.0" and s.workers == 0  # one process per core given, with shared state
    if s.state_url.startswith("memory"):
        assert s.worker_count() == 1  # in-process state: a cell must stay in one process
    assert s.fallbacks, "a fallback chain keeps slots served when the requested policy fails"
    from service.policies.registry import names

    for p in [s.default_policy_spectrum, s.default_policy_mac, *s.fallbacks, *s.preloaded_policies()]:
        assert p in names(), f"{p} is not a registered policy"


# ----------------------------------------------------------------------------- dev and prod
def test_dev_is_one_replica_with_in_process_state():
    docs = render("dev")
    dep, _spec, c = scheduler(docs)
    assert dep["spec"]["replicas"] == 1
    assert settings_env(docs, c)["GNBSCHED_STATE_URL"] == "memory://"
    assert not kinds(docs, "HorizontalPodAutoscaler"), "memory:// state must not be scaled out"
    assert not kinds(docs, "StatefulSet")


def test_prod_scales_replicas_that_share_redis():
    docs = render("prod")
    dep, _spec, c = scheduler(docs)
    hpa = one(docs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] == dep["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    assert c["resources"]["requests"]["cpu"], "the CPU-utilization HPA needs a CPU request"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a PDB must still allow a drain"
    # GNBSCHED_STATE_URL -> a Service on 6379 -> the Redis StatefulSet (with a headless governing Service)
    url = settings_env(docs, c)["GNBSCHED_STATE_URL"]
    assert url.startswith("redis://")
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    svc = one(docs, "Service", host)
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    sts = one(docs, "StatefulSet")
    assert selects(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    governing = one(docs, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert sts["spec"]["volumeClaimTemplates"], "Redis keeps its append-only file on a volume"
    # only the scheduler's pods may reach Redis
    netpol = one(docs, "NetworkPolicy")
    assert selects(netpol["spec"]["podSelector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
    allowed = netpol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert selects(allowed, dep["spec"]["template"]["metadata"]["labels"])


def test_service_monitor_scrapes_the_scheduler_service():
    """The ServiceMonitor (CRD, outside the validator's schemas): fields of monitoring.coreos.com/v1
    that the operator reads, and a selector that picks exactly the scheduler's Service."""
    docs = render("prod-monitoring")
    sm = one(docs, "ServiceMonitor")
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels"}
    matched = [
        s for s in kinds(docs, "Service") if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in matched] == ["gnbsched"], "scrape each pod once, through one Service"
    port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert ep["port"] in port_names and ep["path"] == "/metrics"
    # the job label is the Service's app name: what the alert rules' up{job="gnbsched"} expects
    assert matched[0]["metadata"]["labels"][sm["spec"]["jobLabel"]] == "gnbsched"
    # everything of prod is still there
    prod = {(d["kind"], d["metadata"]["name"]) for d in render("prod")}
    assert prod <= {(d["kind"], d["metadata"]["name"]) for d in docs}
