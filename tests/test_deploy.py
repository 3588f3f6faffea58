"""The operations kit, proven with the real tools: promtool, amtool and a real Prometheus."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import StartDaemon, target
from wsserver import WSTestServer

from monitor.metrics import Metrics
from monitor.registry import Registry

ROOT = Path(__file__).parent.parent
PROM = ROOT / "deploy/prometheus"
ALERTS = PROM / "alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/wsmon.json"
RUNBOOK = ROOT / "docs/runbook.md"
REQUIRED_ALERTS = {
    "WsmonDown", "WsmonTargetDown", "WsmonProbesFailing", "WsmonHighRTT",
    "WsmonAbnormalClosures", "WsmonReconnectStorm", "WsmonClockSkew", "WsmonConfigReloadFailed",
    "WsmonFileDescriptorsExhausted", "WsmonEventLoopLagging",
}  # fmt: skip


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"`{name}` is needed: Debian package `{package}` (`make test` installs it)"
    return path


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


class TestPromtool:
    def test_check_rules(self) -> None:
        """`promtool check rules` accepts the alert rules."""
        proc = run(tool("promtool", "prometheus"), "check", "rules", str(ALERTS))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_check_config(self) -> None:
        """`promtool check config` accepts the example scrape configuration."""
        proc = run(tool("promtool", "prometheus"), "check", "config", "prometheus.yml", cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_rule_unit_tests(self) -> None:
        """`promtool test rules`: every alert has firing and not-firing cases, all pass."""
        proc = run(tool("promtool", "prometheus"), "test", "rules", "alerts_test.yml", cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
        assert tested == {rule["alert"] for rule in alert_rules()}
        assert "exp_alerts: []" in (PROM / "alerts_test.yml").read_text()

    def test_alertmanager_config(self) -> None:
        """`amtool check-config` accepts the example routing."""
        proc = run(
            tool("amtool", "prometheus-alertmanager"),
            "check-config",
            str(ROOT / "deploy/alertmanager/alertmanager.yml"),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


class TestNames:
    def exported(self) -> set[str]:
        """Every sample name wsmon exposes, with histogram and counter suffixes."""
        registry = Registry()
        Metrics(registry)
        names: set[str] = {"up"}
        for family in registry.collect():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":  # classic series, and the native one
                names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
                names.add(family.name)
            else:
                names.add(family.name)
        return names

    @staticmethod
    def used(exprs: Iterator[str]) -> set[str]:
        return {n for e in exprs for n in re.findall(r"\b(wsmon_\w+|up)\b(?=\s*[{\[)])", e)}

    def test_alert_rules_use_only_exported_metrics(self) -> None:
        """Every metric an alert rule queries is one wsmon exports."""
        used = self.used(rule["expr"] for rule in alert_rules())
        assert used
        assert used <= self.exported(), used - self.exported()

    def test_dashboard_uses_only_exported_metrics(self) -> None:
        """Every metric a dashboard panel or variable queries is one wsmon exports."""
        dash = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
        used = self.used(iter(exprs))
        assert len(used) >= 10
        assert used <= self.exported(), used - self.exported()

    def test_every_alert_documented(self) -> None:
        """The required alerts exist, each with summary, description and a runbook_url that
        points at a heading of docs/runbook.md."""
        rules = alert_rules()
        assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
        headings = {
            re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
            for line in RUNBOOK.read_text().splitlines()
            if line.startswith("#")
        }
        for rule in rules:
            notes = rule["annotations"]
            assert notes["summary"]
            assert notes["description"]
            anchor = notes["runbook_url"].split("docs/runbook.md#", 1)[1]
            assert anchor in headings, anchor
            assert rule["labels"]["severity"] in ("critical", "warning")


async def test_promtool_check_metrics(server: WSTestServer, start_daemon: StartDaemon) -> None:
    """`promtool check metrics` finds no problem in wsmon's /metrics, every series set."""
    probes = [
        {"name": "ping", "send": {"ping": 1}, "interval": "50ms", "timeout": "40ms"},
        {"name": "time", "send": {"time": 1}, "interval": "50ms", "timeout": "40ms"},
        {"name": "frame", "kind": "ws-ping", "interval": "50ms", "timeout": "40ms"},
    ]
    h = await start_daemon(target("t", server.url, probes=probes))
    await h.wait_for(lambda: h.exists("wsmon_server_time_offset_seconds", target="t"))
    await server.close_all(4001)
    await h.wait_for(lambda: h.value("wsmon_reconnects_total", target="t") == 1)
    async with aiohttp.ClientSession() as http, http.get(f"{h.base_url}/metrics") as r:
        text = await r.text()
    proc = subprocess.run(
        [tool("promtool", "prometheus"), "check", "metrics"],
        input=text, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == proc.stderr.strip() == ""


class Prometheus:
    """A real Prometheus on 127.0.0.1 with a 1 s scrape and evaluation interval."""

    def __init__(
        self, tmp: Path, wsmon_port: int | list[int], features: tuple[str, ...] = ()
    ) -> None:
        ports = wsmon_port if isinstance(wsmon_port, list) else [wsmon_port]
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        rules = ALERTS.read_text()
        # The test copy of the rules: same expressions, `for:` shortened to seconds.
        rules = re.sub(r"for: \d+m", "for: 2s", rules)
        (tmp / "alerts.yml").write_text(rules)
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp / "alerts.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "wsmon",
                            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}],
                        }
                    ],
                }
            )
        )
        self.proc = subprocess.Popen(
            [tool("prometheus", "prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             *(f"--enable-feature={f}" for f in features)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"

    async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with http.get(f"{self.base}{path}", params=params) as r:
            return await r.json()

    async def until(self, check: Any, what: str, timeout: float = 30.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
                try:
                    result = await check(http)
                except aiohttp.ClientError:
                    result = None
                if result:
                    return result
                await asyncio.sleep(0.25)
        raise AssertionError(f"Prometheus: {what} not seen within {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(port: int, features: tuple[str, ...] = ()) -> Prometheus:
        p = Prometheus(tmp_path / str(len(started)), port, features)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


# The alerting pipeline is the subject here, not the receive path (tests/test_connection.py).
@pytest.mark.parametrize("receive_path", ["hooked"], indirect=True)
async def test_end_to_end_alert_fires_and_resolves(
    start_daemon: StartDaemon, prometheus_factory: Any
) -> None:
    """A real Prometheus scrapes wsmon: RTT samples become queryable; killing the WebSocket
    server makes WsmonTargetDown fire; bringing it back resolves it."""
    server = WSTestServer()
    await server.start()
    port = server.port
    reconnect = {"initial_delay": "50ms", "max_delay": "200ms"}
    probes = [{"name": "ping", "send": {"ping": 1}, "interval": "200ms", "timeout": "100ms"}]
    h = await start_daemon(target("api", server.url, reconnect=reconnect, probes=probes))
    prom = prometheus_factory(h.daemon.port)
    try:
        await prom.until(lambda http: _ready(http, prom.base), "readiness")

        async def rtt(http: aiohttp.ClientSession) -> Any:
            q = 'wsmon_probe_rtt_seconds_count{target="api"} > 0'
            body = await prom.get(http, "/api/v1/query", query=q)
            return body["data"]["result"]

        (sample,) = await prom.until(rtt, "RTT samples")
        assert float(sample["value"][1]) > 0

        async def alerts(http: aiohttp.ClientSession) -> list[dict[str, Any]]:
            body = await prom.get(http, "/api/v1/alerts")
            return [
                a for a in body["data"]["alerts"] if a["labels"]["alertname"] == "WsmonTargetDown"
            ]

        assert await alerts_now(prom, alerts) == []
        await server.stop()

        async def firing(http: aiohttp.ClientSession) -> Any:
            return [a for a in await alerts(http) if a["state"] == "firing"]

        (alert,) = await prom.until(firing, "WsmonTargetDown firing")
        assert alert["labels"]["target"] == "api"
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("docs/runbook.md#wsmontargetdown")

        server = WSTestServer(port=port)
        await server.start()

        async def resolved(http: aiohttp.ClientSession) -> bool:
            return await alerts(http) == []

        await prom.until(resolved, "WsmonTargetDown resolved")
        assert h.value("wsmon_connected", target="api") == 1
    finally:
        await server.stop()


async def _ready(http: aiohttp.ClientSession, base: str) -> bool:
    async with http.get(f"{base}/-/ready") as r:
        return r.status == 200


async def alerts_now(prom: Prometheus, alerts: Any) -> Any:
    async with aiohttp.ClientSession() as http:
        return await alerts(http)


# --- native histograms, scraped by a real Prometheus ------------------------------------------


@pytest.mark.parametrize("receive_path", ["hooked"], indirect=True)
@pytest.mark.parametrize("histograms", ["native", "classic"])
async def test_prometheus_takes_the_protobuf_exposition(
    histograms: str, start_daemon: StartDaemon, prometheus_factory: Any
) -> None:
    """Prometheus with native histograms on asks for protobuf. With `histograms: native`
    it stores the RTT histogram as one series, and the p99 of a server that answers after
    200 ms lies within one native bucket of it; with `classic`, the same request gets the
    classic buckets. Every other family arrives too."""
    server = WSTestServer(reply_delay=0.2)
    await server.start()
    probes = [{"name": "ping", "send": {"ping": 1}, "interval": "400ms", "timeout": "300ms"}]
    h = await start_daemon(
        target("api", server.url, probes=probes), metrics={"histograms": histograms}
    )
    prom = prometheus_factory(h.daemon.port, ("native-histograms",))
    try:
        await prom.until(lambda http: _ready(http, prom.base), "readiness")

        async def query(http: aiohttp.ClientSession, q: str) -> list[Any]:
            result: list[Any] = (await prom.get(http, "/api/v1/query", query=q))["data"]["result"]
            return result

        if histograms == "classic":
            # 8 buckets and +Inf, count and sum: as in the text format
            q = 'count({__name__=~"wsmon_probe_rtt_seconds.*",target="api"}) == 11'
            await prom.until(lambda http: query(http, q), "the classic RTT series")
            return

        async def p99(http: aiohttp.ClientSession) -> Any:
            q = 'histogram_quantile(0.99, rate(wsmon_probe_rtt_seconds{target="api"}[1m]))'
            return await query(http, q)

        (row,) = await prom.until(p99, "p99 of the native RTT histogram")
        quantile = float(row["value"][1])
        width = 2 ** (1 / 8)  # one bucket at schema 3
        assert 0.2 / width <= quantile <= 0.2 * width * width, quantile
        async with aiohttp.ClientSession() as http:
            names = await query(
                http, 'count by (__name__) ({__name__=~"wsmon_probe_rtt_seconds.*",target="api"})'
            )
            assert [r["metric"]["__name__"] for r in names] == ["wsmon_probe_rtt_seconds"]
            assert await query(http, 'wsmon_up{target="api"} == 1')
            assert await query(http, "process_open_fds")
            assert await query(http, 'wsmon_connect_failures_total{reason="resource"} == 0')
            # The rules over histograms read native ones too (thresholds lowered to fire now)
            rules = {r["alert"]: r["expr"] for r in alert_rules()}
            assert await query(http, rules["WsmonHighRTT"].replace("> 0.5", "> 0.1"))
            assert await query(http, rules["WsmonEventLoopLagging"].replace("> 0.1", ">= 0"))
    finally:
        await server.stop()


# --- /probe: the multi-target job and the prometheus-operator Probe ----------------------------

PROBE_JOB = PROM / "probe.yml"
PROBE_CR = PROM / "probe-operator.yaml"
# The prometheus-operator CRD schema check that `make test` installs (tests/test_kubernetes.py).
SCHEMA_CHECK = ROOT / "deploy/kubernetes/schema-check"


def probe_job() -> dict[str, Any]:
    (job,) = yaml.safe_load(PROBE_JOB.read_text())["scrape_configs"]
    return dict(job)


class TestProbeJob:
    def test_promtool_checks_the_probe_job(self) -> None:
        """`promtool check config` accepts the multi-target job."""
        proc = run(tool("promtool", "prometheus"), "check", "config", "probe.yml", cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_the_job_relabels_as_blackbox_does(self) -> None:
        """/probe with a module; the URL becomes the `target` parameter and the instance,
        and the request goes to wsmon."""
        job = probe_job()
        assert job["metrics_path"] == "/probe"
        assert job["params"] == {"module": ["deriv_ping"]}
        assert job["relabel_configs"][:2] == [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
        ]
        assert job["relabel_configs"][2]["target_label"] == "__address__"

    def test_operator_probe_says_the_same(self) -> None:
        """The `Probe` example names the same module, job, prober path and targets."""
        doc = yaml.safe_load(PROBE_CR.read_text())
        assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "Probe")
        spec, job = doc["spec"], probe_job()
        assert spec["jobName"] == job["job_name"]
        assert [spec["module"]] == job["params"]["module"]
        assert spec["prober"]["path"] == "/probe"
        assert spec["prober"]["url"].endswith(":9815")
        assert spec["targets"]["staticConfig"]["static"] == job["static_configs"][0]["targets"]
        assert spec["scrapeTimeout"] == job["scrape_timeout"]
        assert set(spec) <= {"jobName", "module", "interval", "scrapeTimeout", "prober", "targets"}

    def test_operator_probe_matches_the_crd_schema(self) -> None:
        """The `Probe` example validates against the Probe CRD's schema (the operator's API
        types as generated validators, the npm package `make test` installs for the
        PodMonitor too), and a broken one does not."""
        node = shutil.which("node")
        validator = SCHEMA_CHECK / "node_modules/@kubernetes-models/prometheus-operator"
        if node is None or not validator.is_dir():
            message = "node and `npm ci --prefix deploy/kubernetes/schema-check` (`make test`)"
            if os.environ.get("CI"):
                pytest.fail(f"{message} are needed")
            pytest.skip(f"{message} are needed")

        def check(doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [node, str(SCHEMA_CHECK / "validate.mjs")],
                input=json.dumps([doc]), capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        doc = yaml.safe_load(PROBE_CR.read_text())
        proc = check(doc)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc["spec"]["interval"] = 30
        del doc["spec"]["prober"]["url"]
        proc = check(doc)
        assert proc.returncode == 1, proc.stdout
        assert "spec/interval must be string" in proc.stdout
        assert "prober must have required property url" in proc.stdout


class ProbePrometheus(Prometheus):
    """A real Prometheus whose one job is `job` (1 s scrapes), with the helpers of
    `Prometheus`."""

    def __init__(self, tmp: Path, job: dict[str, Any]) -> None:
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": [job]}))
        self.proc = subprocess.Popen(
            [tool("prometheus", "prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"


# How Prometheus reaches the daemon is the subject here, not the receive path.
@pytest.mark.parametrize("receive_path", ["hooked"], indirect=True)
async def test_prometheus_probes_through_the_relabelling(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A real Prometheus running deploy/prometheus/probe.yml's job (targets and wsmon's
    address put in, scrapes shortened) records probe_success per URL: 1 for a server that
    answers, 0 for a closed port, each with its URL as `instance`."""
    module = {"probes": [{"name": "ping", "send": {"ping": 1}, "timeout": "300ms"}]}
    async with WSTestServer() as server:
        h = await start_daemon(
            probe_endpoint={
                "allowed_targets": ["ws://127.0.0.1:*"],
                "modules": {"deriv_ping": module},
            }
        )
        closed = f"ws://127.0.0.1:{free_port()}/ws"
        job = probe_job()
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [server.url, closed]}]
        job["relabel_configs"][2]["replacement"] = f"127.0.0.1:{h.daemon.port}"
        prom = ProbePrometheus(tmp_path / "prom", job)
        try:

            async def results(http: aiohttp.ClientSession) -> Any:
                body = await prom.get(http, "/api/v1/query", query="probe_success")
                found = body["data"]["result"]
                return found if len(found) == 2 else None

            found = await prom.until(results, "probe_success of both URLs")
        finally:
            prom.stop()
    by_instance = {r["metric"]["instance"]: r["value"][1] for r in found}
    assert by_instance == {server.url: "1", closed: "0"}
    assert {r["metric"]["job"] for r in found} == {"wsmon_probe"}
