"""Configuration: every bad file gets its own precise message; good ones load as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from certs import make_pki

from monitor import config
from monitor.cli import main
from monitor.config.sources import FastUniqueKeyLoader, UniqueKeyLoader, parse_json, parse_yaml

CONFIGS = Path(__file__).parent / "configs"
CASES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("case", CASES)
def test_bad_config_message(
    case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check-config` exits 1 and prints exactly the problems in the case's .txt file."""
    monkeypatch.delenv("WSMON_TEST_UNSET_TOKEN", raising=False)
    path = CONFIGS / f"{case}.yaml"
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in out)
    got = [line.removeprefix(prefix) for line in out]
    assert got == (CONFIGS / f"{case}.txt").read_text().splitlines()


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped example passes `check-config` with a one-line summary, the series it
    exports included (one target of three probes and a stream: 10 + 3 x 15 + 29, and the
    two planned-requests gauges of `rate_limits`)."""
    assert main(["check-config", str(ROOT / "config.example.yaml")]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "OK: 1 targets, 4 probes, listen 127.0.0.1:9815; series: " in out
    assert "(86 per target," in out
    cfg = config.load(ROOT / "config.example.yaml")
    (deriv,) = cfg.targets
    assert deriv.url == "wss://ws.derivws.com/websockets/v3?app_id=1089"
    intervals = {p.name: p.interval for p in deriv.probes}
    assert intervals["ping"] == 30
    assert intervals["time"] == 60


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A file that cannot be read is one clear problem, not a traceback."""
    assert main(["check-config", "/nonexistent/wsmon.yaml"]) == 1
    assert "cannot read config: No such file or directory" in capsys.readouterr().out


class TestValues:
    def test_durations(self) -> None:
        """Durations accept ms, s, m, h and bare seconds; zero, negative and words are errors."""
        assert config.parse_duration("250ms") == 0.25
        assert config.parse_duration("5s") == 5
        assert config.parse_duration("2m") == 120
        assert config.parse_duration("1h") == 3600
        assert config.parse_duration(1.5) == 1.5
        assert config.parse_duration("7") == 7
        for bad in ("0s", -1, "5 minutes", "", True, "1d", None):
            with pytest.raises(ValueError, match="invalid duration"):
                config.parse_duration(bad)

    def test_defaults_are_inherited_and_overridden(self) -> None:
        """Targets inherit `defaults`; per-target keys win, nested reconnect keys merge."""
        cfg = config.loads(
            """
            defaults:
              connect_timeout: 3s
              correlation_field: rid
              reconnect: {initial_delay: 200ms, max_delay: 30s}
              probes:
                - {name: p, send: {ping: 1}, interval: 10s, timeout: 1s}
            targets:
              - {name: a, url: "ws://h/a"}
              - name: b
                url: "ws://h/b"
                connect_timeout: 1s
                reconnect: {max_delay: 5s}
                probes: [{name: f, kind: ws-ping, interval: 2s, timeout: 1s}]
            """
        )
        a, b = cfg.targets
        assert a.connect_timeout == 3
        assert a.correlation_field == b.correlation_field == "rid"
        assert [p.name for p in a.probes] == ["p"]
        assert b.connect_timeout == 1
        assert b.reconnect.initial_delay == 0.2
        assert b.reconnect.max_delay == 5
        assert b.reconnect.multiplier == 2.0
        assert [p.name for p in b.probes] == ["f"]

    def test_targets_share_what_defaults_gave_them(self) -> None:
        """Targets that take their probes (or headers) from `defaults` share one list (memory
        at 10,000 targets); a target with its own keeps them; values are unaffected."""
        cfg = config.loads(
            """
            defaults:
              probes: [{name: p, send: {ping: 1}, interval: 10s, timeout: 1s}]
            targets:
              - {name: a, url: "ws://h/a"}
              - {name: b, url: "ws://h/b", headers: {X-A: "1"}}
              - {name: c, url: "ws://h/c", probes: [{name: q, send: {time: 1}}]}
            """
        )
        a, b, c = cfg.targets
        assert a.probes is b.probes
        assert a.headers is c.headers
        assert a.model_fields_set is b.model_fields_set
        assert [p.name for p in c.probes] == ["q"]
        assert (a.name, a.url, b.headers, c.headers) == ("a", "ws://h/a", {"X-A": "1"}, {})
        assert b.model_dump()["headers"] == {"X-A": "1"}
        assert a == config.TargetConfig.model_validate({**a.model_dump(), "url": "ws://h/a"})

    def test_builtin_defaults(self) -> None:
        """With nothing set, the contract's defaults apply."""
        (t,) = config.loads('targets: [{name: a, url: "wss://h/"}]').targets
        assert t.connect_timeout == 10
        assert t.correlation_field == "req_id"
        assert (t.reconnect.initial_delay, t.reconnect.max_delay) == (1, 60)
        assert t.reconnect.multiplier == 2
        (probe,) = t.probes
        assert (probe.name, probe.send, probe.interval, probe.timeout) == (
            "ping",
            {"ping": 1},
            30,
            5,
        )

    def test_env_expansion_and_secrets(self) -> None:
        """`${VAR}` is replaced anywhere; the value becomes a secret that logs redact."""
        cfg = config.loads(
            """
            targets:
              - name: a
                url: "wss://h/ws?app_id=${APP}&token=s3cr3t-query"
                headers: {Authorization: "Bearer ${TOKEN}"}
            """,
            env={"APP": "1089", "TOKEN": "tok-123456"},
        )
        (t,) = cfg.targets
        assert t.url == "wss://h/ws?app_id=1089&token=s3cr3t-query"
        assert t.headers == {"Authorization": "Bearer tok-123456"}
        assert {"tok-123456", "Bearer tok-123456", "s3cr3t-query"} <= cfg.secrets

    def test_correlation_field_null(self) -> None:
        """`correlation_field: null` switches to in-order matching."""
        (t,) = config.loads('targets: [{name: a, url: "ws://h/", correlation_field: null}]').targets
        assert t.correlation_field is None

    def test_reconnect_bounds_checked_after_merge(self) -> None:
        """max_delay below an inherited initial_delay is reported at the target."""
        with pytest.raises(config.ConfigError) as err:
            config.loads(
                """
                defaults: {reconnect: {initial_delay: 10s}}
                targets: [{name: a, url: "ws://h/", reconnect: {max_delay: 5s}}]
                """
            )
        assert err.value.problems == [
            "targets[0].reconnect.max_delay: must be >= initial_delay (5s < 10s)"
        ]

    def test_sections_merge_key_by_key(self) -> None:
        """A section a target sets (`auth` here) keeps the keys it leaves out from the
        defaults' section; the target's section must still be valid on its own."""
        doc = """
            defaults: {auth: {send: {authorize: tok-1234}, expect: {msg_type: authorize}}}
            targets: [{name: a, url: "ws://h/", auth: {%s}}]
            """
        (t,) = config.loads(doc % "send: {authorize: tok-5678}, timeout: 2s").targets
        assert t.auth is not None
        assert (t.auth.send, t.auth.expect, t.auth.timeout) == (
            {"authorize": "tok-5678"},
            {"msg_type": "authorize"},
            2,
        )
        with pytest.raises(config.ConfigError) as err:
            config.loads(doc % "timeout: 2s")
        assert err.value.problems == ["targets[0].auth.send: required key is missing"]

    def test_own_problems_before_merged_ones(self, tmp_path: Path) -> None:
        """A target with problems of its own is reported for those alone; a default that does
        not fit it (a client key for another certificate) is reported once they are fixed."""
        pki = make_pki(tmp_path)
        both = tmp_path / "server-both.pem"  # valid on its own: certificate and key
        both.write_bytes(pki.server.cert.read_bytes() + pki.server.key.read_bytes())
        doc = f"""
            defaults: {{tls: {{cert_file: "{pki.client.cert}", key_file: "{pki.client.key}"}}}}
            targets: [{{name: %s, url: "wss://h/", tls: {{cert_file: "{both}"}}}}]
            """
        with pytest.raises(config.ConfigError) as err:
            config.loads(doc % "'a b'")
        assert err.value.problems == [
            "targets[0].name: invalid name 'a b': use letters, digits, '_', '.', '-'"
        ]
        with pytest.raises(config.ConfigError) as err:
            config.loads(doc % "a")
        (problem,) = err.value.problems
        assert problem.startswith(f"targets[0].tls: cannot load cert_file '{both}' / key_file")

    def test_empty_file(self) -> None:
        """An empty file says that a target is needed."""
        with pytest.raises(config.ConfigError) as err:
            config.loads("")
        assert err.value.problems == ["targets: at least one target is required"]


def test_env_in_keys_and_merge_keys() -> None:
    """`${VAR}` is expanded in mapping keys too; YAML merge keys may be overridden."""
    cfg = config.loads(
        """
        defaults:
          probes:
            - &p {name: ping, send: {ping: 1}, interval: 10s, timeout: 1s}
        targets:
          - name: a
            url: "wss://h/"
            headers: {"${HEADER}": "v"}
            probes:
              - {<<: *p, name: other}
        """,
        env={"HEADER": "X-Api-Key"},
    )
    (t,) = cfg.targets
    assert t.headers == {"X-Api-Key": "v"}
    assert [p.name for p in t.probes] == ["other"]


def test_the_targets_key_is_written_out() -> None:
    """The targets are expanded one at a time (a shard expands only its own), so the key
    that holds them must be written as it is, not made by `${VAR}`."""
    with pytest.raises(config.ConfigError) as err:
        config.loads('"${KEY}": [{name: a, url: "ws://h/"}]\n', env={"KEY": "targets"})
    assert "targets: the key `targets` must be written out, not made by ${VAR}" in (
        err.value.problems
    )


def test_file_and_credential_values(tmp_path: Path) -> None:
    """`{file: PATH}` and `{credential: NAME}` (from $CREDENTIALS_DIRECTORY, as systemd's
    LoadCredential= provides) become the file's content, and count as secrets."""
    (tmp_path / "token").write_text("tok-from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "deriv-token").write_text("tok-from-credential")
    cfg = config.loads(
        f"""
        targets:
          - name: a
            url: "wss://h/"
            headers:
              Authorization: {{file: "{tmp_path / "token"}"}}
              X-Token: {{credential: deriv-token}}
        """,
        env={"CREDENTIALS_DIRECTORY": str(creds)},
    )
    (t,) = cfg.targets
    assert t.headers == {"Authorization": "tok-from-file", "X-Token": "tok-from-credential"}
    assert {"tok-from-file", "tok-from-credential"} <= cfg.secrets


def test_unreadable_secret_files_are_one_problem_each(tmp_path: Path) -> None:
    """A missing file, or a credential without $CREDENTIALS_DIRECTORY, is one precise problem."""
    with pytest.raises(config.ConfigError) as err:
        config.loads(
            """
            targets:
              - name: a
                url: "wss://h/"
                headers: {A: {file: /nonexistent/token}, B: {credential: tok}}
            """,
            env={},
        )
    assert err.value.problems == [
        "targets[0].headers.A: cannot read file '/nonexistent/token': No such file or directory",
        "targets[0].headers.B: credential 'tok' needs $CREDENTIALS_DIRECTORY "
        "(set by systemd's LoadCredential=)",
    ]


@pytest.mark.parametrize(("value", "seconds"), [
    (0, 0.0), ("0", 0.0), ("0ms", 0.0), ("30ms", 0.030), (0.25, 0.25), ("1s", 1.0),
])  # fmt: skip
def test_send_alignment_values(value: object, seconds: float) -> None:
    doc = f"send_alignment: {value}\ntargets: [{{name: a, url: 'ws://127.0.0.1:9/ws'}}]\n"
    assert config.loads(doc).send_alignment == seconds


def test_send_alignment_defaults_to_off() -> None:
    assert config.loads("targets: [{name: a, url: 'ws://127.0.0.1:9/ws'}]\n").send_alignment == 0


FAST_YAML = pytest.mark.skipif(FastUniqueKeyLoader is None, reason="PyYAML built without libyaml")


@FAST_YAML
@pytest.mark.parametrize(
    "text",
    [
        (ROOT / "config.example.yaml").read_text(),
        "p: &p {a: 1, b: [1, 2.5, '3', null, true, 2001-12-14]}\nq: {<<: *p, b: x}\n",
        "big: 123456789012345678901234567890\nhex: 0x1f\noct: 0o17\nf: .inf\nt: yes\n",
    ],
)
def test_libyaml_loader_builds_what_the_python_loader_builds(text: str) -> None:
    """The fast loader is only a faster scanner and parser: the same objects come out."""
    import yaml

    fast = FastUniqueKeyLoader
    assert fast is not None
    assert yaml.load(text, Loader=fast) == yaml.load(text, Loader=UniqueKeyLoader)


@FAST_YAML
def test_libyaml_loader_rejects_duplicate_keys_itself() -> None:
    """Duplicate keys are refused on the fast path too, not only by the fallback."""
    import yaml

    fast = FastUniqueKeyLoader
    assert fast is not None
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'a'"):
        yaml.load("x: {a: 1, a: 2}\n", Loader=fast)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1.5, "b": [0, -7, 2.5e+3, -0.25, true, false, null], "c": {"d": "x\\/y\\u00e9"}}',
        '{"n": 123456789012345678901234567890, "s": "${HOME}", "e": {}, "l": []}',
        # What YAML 1.1 reads otherwise (strings, not numbers): the YAML loader decides.
        '{"exp": 1e5, "exp2": 1.5E10, "nan": NaN, "inf": -Infinity}',
    ],
)
def test_json_is_read_as_yaml_reads_it(text: str) -> None:
    """A JSON config (generated configs often are) is read by the json module, many times
    faster, and gives exactly what the YAML loader gives."""
    import yaml

    problems: list[str] = []
    assert parse_yaml(text, problems) == yaml.load(text, Loader=UniqueKeyLoader)
    assert not problems


def test_json_with_a_duplicate_key_is_refused_as_yaml_refuses_it() -> None:
    problems: list[str] = []
    assert parse_yaml('{"targets": [], "listen": "a", "listen": "b"}', problems) is None
    assert problems == ["line 1, column 32: YAML syntax error: duplicate key 'listen'"]
    assert parse_json('{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(ValueError, match="duplicate"):
        parse_json('{"a": 1, "a": 1}')


def test_a_json_config_loads_like_its_yaml_twin() -> None:
    doc = {
        "send_alignment": "30ms",
        "defaults": {"probes": [{"name": "p", "send": {"ping": 1}, "interval": "2.5s"}]},
        "targets": [{"name": f"t{i}", "url": f"ws://127.0.0.1:{9000 + i}/ws"} for i in range(5)],
    }
    import yaml

    assert config.loads(json.dumps(doc)) == config.loads(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "\\ud83d\\ude00"}',  # a surrogate pair: JSON joins it, YAML does not
        '{"a": "x\u0085y"}',  # NEL, which YAML folds
        '{"a": "x\u2028 y"}',
        '{"a": "x\x7fy"}',  # DEL, which YAML refuses
        '{"' + "k" * 1100 + '": 1}',  # a key longer than YAML allows
    ],
)
def test_json_that_yaml_reads_otherwise_goes_to_the_yaml_loader(text: str) -> None:
    """Where YAML and JSON disagree about a text, YAML decides: the same value, or the same
    refusal, as a file that is not JSON would get."""
    import yaml

    problems: list[str] = []
    got = parse_yaml(text, problems)
    try:
        want = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError:
        assert got is None
        assert problems
    else:
        assert got == want
        assert not problems
