"""deploy/kubernetes runs the daemon the daemon expects to be run, checked without a cluster:

- every manifest is valid Kubernetes, in strict mode (no unknown field), for the oldest and the
  newest version the project supports (kubernetes-validate's schemas, offline);
- what the pods are told agrees with the code: probe paths are routes of the operator app, on the
  port `Settings` reads from the pod's own environment; the environment holds everything
  `healer run` needs in a cluster of replicas; every value `healer config` would mask comes from
  the Secret, by reference, and no secret is written in the files;
- the pods are locked down (non-root, read-only root, no capability, seccomp) with a writable
  HEALER_DATA_DIR; the memory limit holds the render processes the settings allow;
- rollouts and disruptions keep serving pods; the operator port is open to the monitoring
  namespace only; the migration Job runs the daemon's image and configuration.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from fulfilment.secrets import ELLIPSIS
from healer.config import (
    DEFAULT_RENDER_MEMORY_MB,
    MIN_ADMIN_TOKEN_CHARS,
    Settings,
    Source,
    read_configuration,
)
from healer.http.operator import OperatorContext, create_operator_app
from tests.deploy import (
    KUBERNETES,
    KUSTOMIZATION,
    Manifest,
    containers,
    documents,
    effective_env,
    find,
    image_repository,
    kustomization,
    pod_spec,
    quantity,
    render,
    secret_refs,
)

# The oldest Kubernetes the manifests are for (every field they use is GA there), and the newest
# kubernetes-validate knows.
OLDEST_KUBERNETES = "1.29.0"
NEWEST_KUBERNETES = latest_version()

OUTSIDE_KUSTOMIZATION = {"secret.example.yaml", "servicemonitor.yaml"}
SECRET_NAME = "healer"
MONITORING_NAMESPACE = "monitoring"
IMAGE_UID = 10001  # the Dockerfile's user; tests/security/test_deployment.py checks the image side

# Values well-formed for healer's parsers, standing in for the Secret's in the tests that read the
# pod's environment through `Settings`. They are nowhere in the manifests (checked below).
PLACEHOLDER_SECRETS = {
    "DATABASE_URL": "postgresql://healer:placeholder-password@postgres.invalid:5432/shop",
    "AWS_ACCESS_KEY_ID": "AKIAPLACEHOLDER00000",
    "AWS_SECRET_ACCESS_KEY": "placeholder-secret-access-key-0000000000",
    "SENDGRID_API_KEY": "SG.placeholder-sendgrid-key-000000000000",
    "STRIPE_SECRET_KEY": "sk_test_placeholder000000000000000000",
    "STRIPE_WEBHOOK_SECRET": "whsec_placeholder000000000000000000",
    "HEALER_ADMIN_TOKEN": "p" * MIN_ADMIN_TOKEN_CHARS,
}
# What a key, token or password looks like when someone pastes one into a file.
LITERAL_SECRET = re.compile(
    r"sk_(?:live|test)_\w{8,}|rk_(?:live|test)_\w{8,}|whsec_\w{8,}|SG\.[\w-]{8,}|AKIA[0-9A-Z]{16}"
    r"|postgres(?:ql)?://[^:/\s]+:[^@\s]+@"
)

# The daemon's memory outside its render processes, and what a render process holds beyond what
# RLIMIT_DATA counts: deployment.yaml's arithmetic, which this holds the limit to.
MAIN_PROCESS_MIB = 512
UNCAPPED_PER_RENDER_PROCESS_MIB = 64
# The remediator's waveform restorer has a render pool of its own, of one process (healer.wiring).
WAVEFORM_RESTORER_PROCESSES = 1


@cache
def objects() -> tuple[Manifest, ...]:
    return tuple(render())


def deployment() -> Manifest:
    return find(list(objects()), "Deployment", "healer")


def job() -> Manifest:
    return find(list(objects()), "Job")


def daemon_container() -> dict[str, Any]:
    [container] = list(containers(deployment()))
    return container


def job_container() -> dict[str, Any]:
    [container] = list(containers(job()))
    return container


def pod_env(container: Mapping[str, Any]) -> dict[str, str]:
    return effective_env(container, list(objects()), PLACEHOLDER_SECRETS)


def pod_settings(container: Mapping[str, Any]) -> Settings:
    return Settings.from_env(pod_env(container))


@cache
def operator_routes() -> frozenset[str]:
    app = create_operator_app(OperatorContext(sessions=None, pipeline=None, admin_token=None,  # type: ignore[arg-type]
                                              metrics=lambda: (b"", "text/plain")))
    return frozenset(route.path for route in app.routes if hasattr(route, "path"))


def port_number(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or a Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(obj: Manifest) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"]["labels"])


def mib(value: str) -> float:
    return quantity(value) / 2**20


# -- the files and the kustomization --------------------------------------------------------------


def all_manifests() -> list[tuple[str, Manifest]]:
    return [(path.name, doc) for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in documents(path)]


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_every_manifest_is_valid_kubernetes_in_strict_mode(version: str) -> None:
    rendered = [(f"{o['kind']}/{o['metadata']['name']}", o) for o in objects()]
    example = [(name, doc) for name, doc in all_manifests() if name == "secret.example.yaml"]
    assert example, "secret.example.yaml is validated too"

    problems = []
    for where, manifest in rendered + example:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
    assert problems == []


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validation above would catch a misspelt field (readOnlyRootFileSystem, say): it does."""
    broken = yaml.safe_load(yaml.safe_dump(deployment()))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NEWEST_KUBERNETES, strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret_example_and_the_servicemonitor() -> None:
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization()["resources"]) == files - OUTSIDE_KUSTOMIZATION
    assert [o for o in objects() if o["kind"] == "Secret"] == []  # the Secret is made by hand, never shipped


def test_the_kustomization_sets_the_namespace_labels_and_an_overridable_image() -> None:
    spec = kustomization()
    namespace = spec["namespace"]

    assert namespace == "healer"
    assert find(list(objects()), "Namespace")["metadata"]["name"] == namespace
    assert all(o["metadata"]["namespace"] == namespace for o in objects() if o["kind"] != "Namespace")
    assert all(o["metadata"]["labels"]["app.kubernetes.io/name"] == "healer" for o in objects())
    [image] = spec["images"]
    assert image["name"] == "healer" and str(image["newTag"])
    for workload in (deployment(), job()):
        assert {c["image"] for c in containers(workload)} == {f"healer:{image['newTag']}"}


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = find(list(objects()), "Namespace")["metadata"]["labels"]

    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def kustomize_command() -> list[str] | None:
    if path := shutil.which("kustomize"):
        return [path, "build", str(KUBERNETES)]
    if path := shutil.which("kubectl"):
        return [path, "kustomize", str(KUBERNETES)]
    return None


def test_the_loader_renders_what_kustomize_renders() -> None:
    """The other tests read `render()`'s output: it must be what the cluster would get, as
    kustomize (or kubectl's, which this machine's image ships) renders it."""
    command = kustomize_command()
    if command is None:  # Debian's kubernetes-client (1.20) is too old for this kustomization
        pytest.fail("neither kustomize nor kubectl is installed: install kubectl 1.27 or newer "
                    "(or kustomize 5) so that render() is cross-checked")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    def keyed(manifests: list[Manifest]) -> dict[tuple[str, str], Manifest]:
        return {(m["kind"], m["metadata"]["name"]): m for m in manifests}

    assert keyed([d for d in yaml.safe_load_all(done.stdout) if d]) == keyed(list(objects()))


def test_the_release_steps_apply_the_config_then_the_migration_then_the_rest() -> None:
    """kustomization.yaml and the README give the same steps, and their label selectors pick
    the ConfigMap, then the Job (its pod needs the ConfigMap), from the rendered objects."""
    step = re.compile(r"kubectl apply -k deploy/kubernetes -l ([\w./-]+)=([\w.-]+)")
    steps = step.findall(KUSTOMIZATION.read_text())
    picked = [[(o["kind"], o["metadata"]["name"]) for o in objects() if o["metadata"]["labels"].get(key) == value]
              for key, value in steps]

    assert picked == [[("ConfigMap", "healer")], [("Job", "healer-db-upgrade")]]
    assert step.findall((KUBERNETES.parents[1] / "README.md").read_text()) == steps


# -- what the pods are told agrees with the daemon ------------------------------------------------------


def test_the_probes_are_the_operator_apps_routes_on_the_operator_port() -> None:
    container = daemon_container()
    settings = pod_settings(container)
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}

    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    assert {"/livez", "/readyz"} <= operator_routes()
    assert {port_number(container, p["port"]) for p in probes.values()} == {settings.ops_port}
    assert settings.ops_port == Settings.from_env({}).ops_port == 8081  # the daemon's default, unchanged
    assert settings.ops_port != settings.http_port
    assert (settings.http_host, settings.ops_host) == ("0.0.0.0", "0.0.0.0")  # reachable at the pod's address


def test_the_startup_probe_gives_the_daemon_minutes_and_liveness_waits_out_a_blip() -> None:
    container = daemon_container()
    startup, liveness = container["startupProbe"], container["livenessProbe"]

    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert liveness["failureThreshold"] >= 3
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["timeoutSeconds"] >= 2  # kubelet's default (1 s) fails a busy daemon


def test_the_container_ports_are_the_listeners_ports() -> None:
    container = daemon_container()
    settings = pod_settings(container)

    assert port_number(container, "public") == settings.http_port
    assert port_number(container, "ops") == settings.ops_port


def test_prometheus_annotations_name_the_operator_ports_metrics() -> None:
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]

    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(pod_settings(daemon_container()).ops_port)
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in operator_routes()


def required_for_healer_run() -> set[str]:
    """What a daemon among replicas cannot run without, as the daemon itself says it: what
    `healer run` refuses to start without, and every peer healer would otherwise run embedded
    (SQLite, a local store, an outbox: one per pod, so replicas would not share orders); plus the
    admin token, without which the admin API refuses every operator."""
    bare = Settings.from_env({})
    refused = {re.match(r"([A-Z0-9_]+) is unset", p).group(1) for p in bare.daemon_problems()}  # type: ignore[union-attr]
    embedded = {re.match(r"([A-Z0-9_]+) unset", n).group(1) for n in bare.embedded_defaults()}  # type: ignore[union-attr]
    return refused | embedded | {"HEALER_ADMIN_TOKEN"}


def test_every_variable_healer_run_needs_is_set() -> None:
    required = required_for_healer_run()
    assert {"STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "DATABASE_URL", "S3_BUCKET", "SENDGRID_API_KEY",
            "HEALER_ADMIN_TOKEN"} <= required

    for container in (daemon_container(), job_container()):
        env = pod_env(container)
        assert required - set(env) == set()
        settings = Settings.from_env(env)  # every value parses
        assert settings.daemon_problems() == []
        assert settings.embedded_defaults() == []
        assert settings.admin_token is not None and len(settings.admin_token.value) >= MIN_ADMIN_TOKEN_CHARS


def secret_variables(env: Mapping[str, str]) -> set[str]:
    """The variables `healer config` masks: the daemon's own idea of what is secret."""
    return {v.name for v in read_configuration(env).variables
            if v.source is Source.ENV and (ELLIPSIS in v.value or "***" in v.value)}


def test_every_secret_comes_from_the_secret_by_reference() -> None:
    secrets = secret_variables(pod_env(daemon_container()))
    assert secrets >= {"DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SENDGRID_API_KEY",
                       "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "HEALER_ADMIN_TOKEN"}

    config = find(list(objects()), "ConfigMap")["data"]
    assert secrets & set(config) == set()
    for container in (daemon_container(), job_container()):
        refs = secret_refs(container)
        assert set(refs) == secrets, "every secret, and nothing else, from the Secret"
        assert {name for name, _ in refs.values()} == {SECRET_NAME}
        assert all(key == variable for variable, (_, key) in refs.items())  # keys named as the variables
        assert [e["name"] for e in container.get("env", []) if e["name"] in secrets and "value" in e] == []


def test_no_literal_secret_is_written_in_any_file() -> None:
    for path in sorted(KUBERNETES.iterdir()):
        text = path.read_text()
        assert LITERAL_SECRET.findall(text) == [], path.name
        assert not any(value in text for value in PLACEHOLDER_SECRETS.values()), path.name
    assert LITERAL_SECRET.search(PLACEHOLDER_SECRETS["DATABASE_URL"])  # the pattern does catch one


def test_the_secret_example_holds_exactly_the_referenced_keys_all_empty() -> None:
    [example] = documents(KUBERNETES / "secret.example.yaml")
    referenced = {key for name, key in secret_refs(daemon_container()).values()}

    assert (example["kind"], example["metadata"]["name"]) == ("Secret", SECRET_NAME)
    assert example["metadata"]["namespace"] == kustomization()["namespace"]
    assert set(example["stringData"]) == referenced and "data" not in example
    assert {k: v for k, v in example["stringData"].items() if v} == {}
    text = (KUBERNETES / "secret.example.yaml").read_text()
    assert "kubectl -n healer create secret generic healer" in text
    # Applied unfilled, the daemon refuses to start, naming what it lacks (empty is unset).
    env = effective_env(daemon_container(), list(objects()), example["stringData"])
    assert Settings.from_env(env).daemon_problems()


def test_kubernetes_runs_no_docker_healer() -> None:
    for container in (daemon_container(), job_container()):
        env = pod_env(container)
        settings = Settings.from_env(env)
        assert env["HEALER_AUTOHEAL_DOCKER"] == "off" and not settings.autoheal_docker
        assert "DOCKER_HOST" not in env and settings.docker_host is None
        mounts = " ".join(m["mountPath"] for m in container.get("volumeMounts", []))
        assert "docker.sock" not in mounts


def test_alerts_link_to_the_runbook_on_the_operator_service() -> None:
    settings = pod_settings(daemon_container())
    namespace = kustomization()["namespace"]
    service = find(list(objects()), "Service", "healer-ops")
    [port] = service["spec"]["ports"]

    assert settings.runbook_base_url == f"http://healer-ops.{namespace}.svc:{port['port']}/runbook"
    assert "/runbook" in operator_routes()


# -- the pods are locked down -----------------------------------------------------------------------


def effective_security(workload: Manifest, container: Mapping[str, Any]) -> dict[str, Any]:
    """The container's securityContext over the pod's, for the fields both may set."""
    pod = pod_spec(workload).get("securityContext", {})
    own = container.get("securityContext", {})
    shared = ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
    return {**{k: pod[k] for k in shared if k in pod}, **own}


@pytest.mark.parametrize("which", ["deployment", "job"])
def test_the_pods_run_non_root_read_only_without_capabilities(which: str) -> None:
    workload = deployment() if which == "deployment" else job()
    spec = pod_spec(workload)
    [container] = list(containers(workload))
    security = effective_security(workload, container)

    assert security["runAsNonRoot"] is True and security["runAsUser"] == IMAGE_UID
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security.get("privileged", False) is False
    assert spec["automountServiceAccountToken"] is False  # healer never calls the Kubernetes API
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


@pytest.mark.parametrize("which", ["deployment", "job"])
def test_the_data_dir_and_tmp_are_writable_scratch(which: str) -> None:
    workload = deployment() if which == "deployment" else job()
    [container] = list(containers(workload))
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    data_dir = str(pod_settings(container).data_dir)

    for path in (data_dir, "/tmp"):
        assert "emptyDir" in mounted[path], path
        assert quantity(mounted[path]["emptyDir"]["sizeLimit"]) > 0  # bounded: the kubelet evicts past it
    assert not any(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] in (data_dir, "/tmp"))


def test_the_memory_limit_holds_every_render_process_the_settings_allow() -> None:
    container = daemon_container()
    settings = pod_settings(container)
    literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    render_processes = settings.workers + WAVEFORM_RESTORER_PROCESSES
    needed = MAIN_PROCESS_MIB + render_processes * (settings.render_memory_mb + UNCAPPED_PER_RENDER_PROCESS_MIB)

    # Set here, not left to defaults: HEALER_WORKERS would be the node's cores.
    assert {"HEALER_WORKERS", "HEALER_RENDER_MEMORY_MB"} <= set(literal)
    assert settings.render_memory_mb == DEFAULT_RENDER_MEMORY_MB  # the same uploads pass as anywhere else
    assert needed <= mib(limits["memory"]) <= needed + 1024, "the limit is the arithmetic, not a guess"
    assert settings.workers <= quantity(limits["cpu"])  # a core per CPU-bound render
    assert mib(requests["memory"]) >= 256  # the idle daemon (README's footprint: 246 MiB PSS)


@pytest.mark.parametrize("which", ["deployment", "job"])
def test_resource_requests_are_within_limits(which: str) -> None:
    [container] = list(containers(deployment() if which == "deployment" else job()))
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]

    assert set(requests) == set(limits) == {"cpu", "memory", "ephemeral-storage"}
    assert {k: (requests[k], limits[k]) for k in requests if quantity(requests[k]) > quantity(limits[k])} == {}


def test_the_ephemeral_storage_limit_holds_the_scratch_volumes() -> None:
    spec = pod_spec(deployment())
    [container] = list(containers(deployment()))
    scratch = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in spec["volumes"] if "emptyDir" in v)

    assert quantity(container["resources"]["limits"]["ephemeral-storage"]) > scratch


def test_a_stopping_pod_finishes_its_render() -> None:
    settings = pod_settings(daemon_container())
    spec = pod_spec(deployment())
    pre_stop = daemon_container()["lifecycle"]["preStop"]["exec"]["command"]
    [pause] = [float(word) for word in pre_stop if re.fullmatch(r"\d+(\.\d+)?", word)]

    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > pause + settings.render_timeout_seconds


# -- rollouts and disruptions ------------------------------------------------------------------------


def test_three_replicas_roll_without_losing_one() -> None:
    spec = deployment()["spec"]
    rolling = spec["strategy"]["rollingUpdate"]

    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1  # 0 and 0 would never progress
    assert selects(spec["selector"]["matchLabels"], pod_labels(deployment()))
    assert not selects(spec["selector"]["matchLabels"], pod_labels(job()))  # the Job's pod is not a replica


def test_the_daemon_runs_healer_run_and_the_job_migrates() -> None:
    daemon, migration = daemon_container(), job_container()

    assert daemon["command"] == ["healer", "run"]  # never `db upgrade` from three replicas at once
    assert migration["command"] == ["healer", "db", "upgrade"]
    assert migration["image"] == daemon["image"]
    assert image_repository(daemon["image"]) == "healer"
    assert migration["envFrom"] == daemon["envFrom"]
    assert migration["env"] == daemon["env"]
    assert pod_env(migration) == pod_env(daemon)


def test_the_job_is_one_migration_bounded_in_time() -> None:
    spec = job()["spec"]

    assert spec["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert 0 < spec["backoffLimit"] <= 6
    assert spec["activeDeadlineSeconds"] > 0
    assert spec.get("parallelism", 1) == 1 and spec.get("completions", 1) == 1
    assert job()["metadata"]["name"] == "healer-db-upgrade"  # the name kustomization.yaml's steps wait on
    assert "job/healer-db-upgrade" in (KUBERNETES / "kustomization.yaml").read_text()


def test_the_disruption_budget_keeps_two_of_three_serving() -> None:
    budget = find(list(objects()), "PodDisruptionBudget")["spec"]
    replicas = deployment()["spec"]["replicas"]
    assert ("minAvailable" in budget) != ("maxUnavailable" in budget)
    disruptable = budget["maxUnavailable"] if "maxUnavailable" in budget else replicas - budget["minAvailable"]

    assert isinstance(disruptable, int)  # not a percentage: exact for three
    assert 1 <= disruptable <= replicas - 2  # drains progress, and two daemons still work orders
    assert budget["selector"]["matchLabels"] == deployment()["spec"]["selector"]["matchLabels"]


def test_replicas_spread_across_nodes() -> None:
    [spread] = pod_spec(deployment())["topologySpreadConstraints"]

    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert selects(spread["labelSelector"]["matchLabels"], pod_labels(deployment()))


# -- services and the network --------------------------------------------------------------------------


def test_the_public_service_serves_the_public_port_only() -> None:
    service = find(list(objects()), "Service", "healer")["spec"]
    container = daemon_container()
    settings = pod_settings(container)

    assert selects(service["selector"], pod_labels(deployment()))
    assert [(p["port"], port_number(container, p["targetPort"])) for p in service["ports"]] == [
        (settings.http_port, settings.http_port)]


def test_the_operator_service_is_cluster_internal_on_the_operator_port() -> None:
    service = find(list(objects()), "Service", "healer-ops")["spec"]
    container = daemon_container()
    settings = pod_settings(container)

    assert service["type"] == "ClusterIP"
    assert selects(service["selector"], pod_labels(deployment()))
    assert [(p["port"], port_number(container, p["targetPort"])) for p in service["ports"]] == [
        (settings.ops_port, settings.ops_port)]


def test_the_network_policy_admits_the_operator_port_from_monitoring_only() -> None:
    policy = find(list(objects()), "NetworkPolicy")["spec"]
    settings = pod_settings(daemon_container())
    rules = policy["ingress"]

    assert selects(policy["podSelector"]["matchLabels"], pod_labels(deployment()))
    assert "Ingress" in policy["policyTypes"]
    assert all(rule.get("ports") for rule in rules), "a rule without ports opens every port"
    ops_rules = [r for r in rules if any(p["port"] in (settings.ops_port, "ops") for p in r["ports"])]
    public_rules = [r for r in rules if any(p["port"] in (settings.http_port, "public") for p in r["ports"])]
    assert ops_rules and all(r.get("from") == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}] for r in ops_rules)
    assert public_rules and all("from" not in r for r in public_rules)  # customers and Stripe: anyone
    assert not [r for r in public_rules if any(p["port"] in (settings.ops_port, "ops") for p in r["ports"])]


# -- the ServiceMonitor (a CRD: no schema offline, so its structure is checked here) ----------------------

SERVICEMONITOR_SPEC_FIELDS = {"jobLabel", "namespaceSelector", "selector", "endpoints", "targetLabels",
                              "podTargetLabels", "sampleLimit"}
SERVICEMONITOR_ENDPOINT_FIELDS = {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings",
                                  "metricRelabelings", "honorLabels"}


def test_the_servicemonitor_scrapes_the_operator_service_as_job_healer() -> None:
    [monitor] = documents(KUBERNETES / "servicemonitor.yaml")
    spec = monitor["spec"]
    service = find(list(objects()), "Service", "healer-ops")
    namespace = kustomization()["namespace"]
    prometheus = yaml.safe_load((KUBERNETES.parents[1] / "dashboards" / "prometheus" / "prometheus.yml").read_text())
    [compose_job] = [job for job in prometheus["scrape_configs"] if job.get("metrics_path") == "/metrics"]

    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == namespace
    assert set(spec) <= SERVICEMONITOR_SPEC_FIELDS
    assert spec["namespaceSelector"] == {"matchNames": [namespace]}
    assert selects(spec["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not selects(spec["selector"]["matchLabels"], find(list(objects()), "Service", "healer")["metadata"]["labels"])
    # The alert rules and dashboards select the job compose's Prometheus names.
    assert service["metadata"]["labels"][spec["jobLabel"]] == compose_job["job_name"] == "healer"
    [endpoint] = spec["endpoints"]
    assert set(endpoint) <= SERVICEMONITOR_ENDPOINT_FIELDS
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics" and "/metrics" in operator_routes()
    assert re.fullmatch(r"\d+s", endpoint["interval"])

