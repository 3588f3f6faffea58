"""Input fuzzing: arbitrary bytes and JSON at the reply path, arbitrary YAML at the config loader.

The properties: nothing crashes; a bad reply is only ever a counted error, and a bad config is
only ever a ConfigError whose problems are precise `path: reason` lines.

Every test runs a fixed, derandomized set of examples (CI sees the same inputs every run) and
uses no example database (nothing replayed from earlier runs). The reproducers at the end of
each section pin inputs that once crashed the daemon or escaped the config loader.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import io
import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor import config, probes, replies
from monitor.aiohooks import Hooks
from monitor.config import ConfigError, ProbeConfig
from monitor.config.daemon import RawConfig
from monitor.correlation import Correlator, Pending, Reply
from monitor.handles import UNMATCHED_REASONS
from monitor.log import Logging
from monitor.metrics import Metrics
from monitor.session import Runtime, Session

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=80,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- strategies --------------------------------------------------------------------------

# Still below the 4300-digit limit of int(str) / str(int) (json.dumps would raise on more).
HUGE_INT = 10**1000
# Integers beyond any float (about 1.8e308) reach durations and the reply's `time` too.
FLOAT_RANGE_INT = HUGE_INT

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-HUGE_INT, max_value=HUGE_INT),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)


def json_values(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> Any:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=12,
    )


json_any = json_values(json_scalars, st.text(max_size=10))
json_objects = st.dictionaries(st.text(max_size=10), json_any, max_size=4)


def has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list):
        return any(has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(has_nan(v) for v in value.values())
    return False


def reference_parse(text: str) -> dict[str, Any] | None:
    """What `parse` must return: the JSON object, or None for anything else."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def canonical(value: Any) -> str:
    """Comparable form of a JSON value, NaN included (NaN != NaN, but "NaN" == "NaN")."""
    return json.dumps(value)


def fits_float(n: float) -> bool:
    try:
        float(n)
    except OverflowError:  # an integer no float holds
        return False
    return True


def shallow(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), re-raising a RecursionError without its thousand frames (pytest
    would spend seconds formatting them for every xfail report)."""
    try:
        return fn(*args, **kwargs)
    except RecursionError as exc:
        raise exc.with_traceback(None) from None


# --- 1. the reply parser -------------------------------------------------------------------


@FUZZ
@given(st.text())
def test_parse_arbitrary_text(text: str) -> None:
    """parse never raises on any text; it returns the JSON object exactly when the text is
    one, and None for everything else (other JSON values, garbage)."""
    got = replies.parse(text)
    want = reference_parse(text)
    if want is None:
        assert got is None
    else:
        assert isinstance(got, dict)
        assert canonical(got) == canonical(want)


@FUZZ
@given(st.binary(max_size=2000).map(lambda b: b.decode("utf-8", errors="replace")))
def test_parse_arbitrary_bytes(text: str) -> None:
    """parse never raises on arbitrary bytes (decoded as a text frame would be, with
    replacement characters) and returns a dict or None."""
    got = replies.parse(text)
    assert got is None or isinstance(got, dict)
    assert (got is None) == (reference_parse(text) is None)


@FUZZ
@given(json_any, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_parse_any_json_value(value: Any, pad: str) -> None:
    """For json.dumps of any JSON value (NaN, ±Infinity and integers of hundreds of digits
    included), parse returns an equal dict exactly when the value is an object, else None."""
    text = pad + json.dumps(value) + pad
    got = replies.parse(text)
    if isinstance(value, dict):
        assert isinstance(got, dict)
        assert canonical(got) == canonical(value)
    else:
        assert got is None


@pytest.mark.parametrize(
    "text",
    ['{"a":1}', '{"a":1} ', '{"a":1}\n\t', ' {"a":1}', '{"a":1}x', '{"a":1}{}', '{"a":1},',
     '{"a":', '{"a":1', "{", "{}", '{"a":"\\x"}', '{"a":NaN}', '{"a":' + "9" * 5000 + "}",
     "{" * 100_000, '{"a":1}\ufeff', "\ufeff{}", '{"a":[1,2,{"b":null}]}'],
)  # fmt: skip
def test_parse_agrees_with_json_loads_around_an_object(text: str) -> None:
    """Text that starts like an object, with or without something after it, parses
    exactly as `json.loads` reads it: trailing whitespace is fine, trailing data is not."""
    assert canonical(shallow(replies.parse, text)) == canonical(reference_parse(text))


def test_parse_large_object() -> None:
    """A ~1 MB JSON object parses (and a ~1 MB non-object, or truncated one, is just None)."""
    big = {"req_id": 7, "data": list(range(150_000)), "blob": "x" * 200_000}
    text = json.dumps(big)
    assert len(text) > 1_000_000
    assert replies.parse(text) == big
    assert replies.parse(text[:-1]) is None
    assert replies.parse(json.dumps(big["data"])) is None
    assert replies.parse("x" * 1_000_000) is None


def test_parse_moderately_nested() -> None:
    """Nesting well inside the recursion limit parses normally."""
    assert replies.parse("[" * 200 + "]" * 200) is None
    nested = '{"a":' * 200 + "1" + "}" * 200
    got = replies.parse(nested)
    assert isinstance(got, dict)
    assert "a" in got


DEEP = [
    pytest.param("[" * 10_000, id="10k-open-brackets"),
    pytest.param("[" * 10_000 + "]" * 10_000, id="10k-nested-lists"),
    pytest.param('{"a":' * 10_000 + "1" + "}" * 10_000, id="10k-nested-objects"),
]


@pytest.mark.parametrize("text", DEEP)
def test_parse_deeply_nested(text: str) -> None:
    """Deeply nested JSON (10,000 levels, a 10-20 KB frame) is not a crash: parse -> None."""
    assert shallow(replies.parse, text) is None


# --- 2. correlation ------------------------------------------------------------------------

ID_FIELD = "req_id"
ids = st.one_of(
    st.integers(min_value=-3, max_value=12),
    st.integers(min_value=-HUGE_INT, max_value=HUGE_INT),
    st.booleans(),
    st.floats(min_value=-3, max_value=12),
    st.sampled_from([1.0, 2.0, 3.0, float("nan"), float("inf")]),
    st.integers(min_value=0, max_value=12).map(str),
    st.none(),
    json_any,
)
messages = st.one_of(
    st.none(),
    json_objects,
    st.builds(
        lambda extra, key: {**extra, ID_FIELD: key},
        json_objects,
        ids,
    ),
    # As the receive loop sees them: whatever parse makes of the text.
    st.text(max_size=40).map(replies.parse),
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop that only makes futures (nothing runs on it)."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


REPLIES: dict[int, Reply] = {}  # id(pending) -> the reply handed to it


def pending(lp: asyncio.AbstractEventLoop, key: Any) -> Pending:
    return Pending(key, lambda p, reply: REPLIES.__setitem__(id(p), reply))


def answered(p: Pending) -> bool:
    return p.done and id(p) in REPLIES


@FUZZ
@given(n_waiting=st.integers(0, 8), batch=st.lists(messages, max_size=15))
def test_correlator_by_id(
    loop: asyncio.AbstractEventLoop, n_waiting: int, batch: list[dict[str, Any] | None]
) -> None:
    """With a correlation field, match never raises; it returns a Pending only for a
    registered integer id (never for true, "1" or 1.0), each at most once, and otherwise
    exactly the reason: invalid_json (not an object), missing_id (no integer id), unknown_id."""
    c = Correlator(ID_FIELD)
    registered: dict[int, Pending] = {}
    for _ in range(n_waiting):
        p = pending(loop, c.next_id())
        c.register(p)
        registered[p.key] = p
    returned: set[int] = set()
    for msg in batch:
        got = c.match(msg)
        if msg is None:
            assert got == "invalid_json"
            continue
        key = msg.get(ID_FIELD)
        if type(key) is not int:  # JSON gives no other int subclass than bool
            assert got == "missing_id"
        elif key in registered and key not in returned:
            assert got is registered[key]
            returned.add(key)
        else:
            assert got == "unknown_id"
    assert c.waiting == n_waiting - len(returned)
    if n_waiting and not c.waiting:  # answered all: the table goes with the last request
        assert sys.getsizeof(c._by_id) == sys.getsizeof({})


@FUZZ
@given(n_waiting=st.integers(0, 8), batch=st.lists(messages, max_size=15))
def test_correlator_in_order(
    loop: asyncio.AbstractEventLoop, n_waiting: int, batch: list[dict[str, Any] | None]
) -> None:
    """Without a correlation field, whatever arrives answers the oldest waiting probe, each
    exactly once, in order; once none waits, every message is unknown_id. Never raises."""
    c = Correlator(None)
    order = [pending(loop, None) for _ in range(n_waiting)]
    for p in order:
        c.register(p)
    got = [c.match(msg) for msg in batch]
    answered = [g for g in got if isinstance(g, Pending)]
    assert answered == order[: len(answered)]
    assert len({id(p) for p in answered}) == len(answered)
    assert len(answered) == min(n_waiting, len(batch))
    assert all(g == "unknown_id" for g in got[len(answered) :])


# --- 3. judging a matched reply --------------------------------------------------------------

OUTCOMES = {"ok", "api_error", "unexpected_reply", "invalid_json"}
errors = st.one_of(
    json_any, json_objects, st.fixed_dictionaries({"code": json_any, "message": json_any})
)
reply_objects = st.one_of(
    st.none(),
    json_objects,
    st.builds(lambda extra, err: {**extra, "error": err}, json_objects, errors),
    st.text(max_size=40).map(replies.parse),
)
expects = st.one_of(st.none(), json_objects)


def probe_config(expect: dict[str, Any] | None) -> ProbeConfig:
    # Built without validation: these tests are about judging replies, and a config with a
    # NaN or infinity in `expect` is rejected by the loader (see the config tests).
    return ProbeConfig.model_construct(name="p", kind="message", send={"ping": 1}, expect=expect)


@FUZZ
@given(expects, reply_objects)
def test_judge_total(expect: dict[str, Any] | None, message: dict[str, Any] | None) -> None:
    """judge never raises and returns one of ok/api_error/unexpected_reply/invalid_json with a
    string detail; a non-object is invalid_json; a reply carrying an `error` object is an
    api_error, never ok; ok means `expect` (if any) is a subset of the reply."""
    outcome, detail = replies.judge(probe_config(expect), message)
    assert outcome in OUTCOMES
    assert isinstance(detail, str)
    if message is None:
        assert outcome == "invalid_json"
    elif isinstance(message.get("error"), dict):
        assert outcome == "api_error"
        assert detail
    elif outcome == "ok":
        assert expect is None or replies.subset(expect, message)
    else:
        assert outcome == "unexpected_reply"


@FUZZ
@given(json_objects.filter(lambda d: not has_nan(d)), json_objects)
def test_judge_superset_is_ok(expect: dict[str, Any], extra: dict[str, Any]) -> None:
    """A reply holding every key of `expect` with its value (plus anything else) and no
    `error` object is ok."""
    expect = {k: v for k, v in expect.items() if not (k == "error" and isinstance(v, dict))}
    reply = {**extra, **expect}
    if isinstance(reply.get("error"), dict):
        del reply["error"]
    outcome, _ = replies.judge(probe_config(expect or None), reply)
    assert outcome == "ok"


@FUZZ
@given(expects, reply_objects)
def test_judge_auth_total(expect: dict[str, Any] | None, message: dict[str, Any] | None) -> None:
    """judge_auth (the reply to the auth message) obeys the same rules as judge: never
    raises, a known outcome with a string detail, an `error` object is never ok."""
    outcome, detail = replies.judge_auth(expect, message)
    assert outcome in OUTCOMES
    assert isinstance(detail, str)
    assert (outcome, bool(detail)) == (
        replies.judge(probe_config(expect), message)[0],
        outcome != "ok",
    )


@FUZZ
@given(json_any, json_any)
def test_subset_total(expected: Any, actual: Any) -> None:
    """subset never raises on any pair of JSON values and returns a bool."""
    assert isinstance(replies.subset(expected, actual), bool)


@FUZZ
@given(json_any.filter(lambda v: not has_nan(v)))
def test_subset_reflexive(value: Any) -> None:
    """subset(x, x) holds for every JSON value without NaN, and for its JSON round trip."""
    assert replies.subset(value, value)
    assert replies.subset(value, json.loads(json.dumps(value)))


# --- 4. server clock offset ----------------------------------------------------------------

times = st.one_of(
    json_scalars.filter(lambda v: not isinstance(v, int) or abs(v) < FLOAT_RANGE_INT),
    st.integers(min_value=-FLOAT_RANGE_INT, max_value=FLOAT_RANGE_INT),
    st.floats(min_value=1e9, max_value=2e12),
    st.integers(min_value=10**9, max_value=2 * 10**12),
    st.sampled_from([1e9, 1e11, 1e308, -1e308, float("nan"), float("inf"), 10**308]),
    json_any,
)


@FUZZ
@given(
    extra=json_objects,
    value=times,
    present=st.booleans(),
    sent_wall=st.floats(min_value=0, max_value=4e9),
    rtt=st.floats(min_value=0, max_value=1e4),
)
def test_server_time_offset_total(
    extra: dict[str, Any], value: Any, present: bool, sent_wall: float, rtt: float
) -> None:
    """server_time_offset never raises; it returns None or a finite float, and a float
    exactly when `time` is a finite, non-bool epoch number (>= 1e9)."""
    msg = dict(extra)
    if present:
        msg["time"] = value
    got = replies.server_time_offset(msg, sent_wall, rtt)
    assert got is None or (type(got) is float and math.isfinite(got))
    t = msg.get("time")
    is_epoch = (
        isinstance(t, int | float)
        and not isinstance(t, bool)
        and fits_float(t)
        and math.isfinite(t)
        and t >= 1e9
    )
    assert (got is not None) == is_epoch


@pytest.mark.parametrize("digits", [309, 400, 4000])
def test_server_time_offset_int_beyond_float_range(digits: int) -> None:
    """A reply whose `time` is an integer too large for a float has no usable epoch: None."""
    msg = replies.parse('{"req_id": 1, "time": 1' + "0" * digits + "}")
    assert msg is not None
    assert replies.server_time_offset(msg, 1.7e9, 0.01) is None


# --- 5. the receive side of a real Session --------------------------------------------------


class DummyWS:
    """Stands in for the aiohttp WebSocket: handling a text frame never touches it."""

    closed = False


_TARGETS: dict[str | None, config.TargetConfig] = {}


def session_target(field: str | None) -> config.TargetConfig:
    if field not in _TARGETS:
        doc = {"targets": [{"name": "t", "url": "ws://127.0.0.1:1/", "correlation_field": field}]}
        _TARGETS[field] = config.loads(yaml.safe_dump(doc), "<fuzz>", env={}).targets[0]
    return _TARGETS[field]


def new_registry() -> Any:
    """The registry Metrics is built on: monitor.registry.Registry where it exists, else
    prometheus_client's CollectorRegistry (both answer get_sample_value)."""
    try:
        from monitor.registry import Registry
    except ImportError:
        return CollectorRegistry()
    return Registry()


def make_session(field: str | None) -> tuple[Session, Any]:
    registry = new_registry()
    metrics = Metrics(registry).for_target("t", [("ping", "message")])
    log = Logging("json", "info", stream=io.StringIO()).logger
    ws: Any = DummyWS()
    runtime = Runtime.create(asyncio.new_event_loop(), Hooks())
    return Session(session_target(field), ws, metrics, log, runtime, random.Random(0)), registry


def unmatched(registry: Any) -> dict[str, float]:
    return {
        r: registry.get_sample_value("wsmon_unmatched_messages_total", {"target": "t", "reason": r})
        or 0.0
        for r in UNMATCHED_REASONS
    }


frames = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: b.decode("utf-8", errors="replace")),
    json_any.map(json.dumps),
    st.builds(lambda extra, key: json.dumps({**extra, ID_FIELD: key}), json_objects, ids),
)
fields = st.sampled_from([ID_FIELD, None])


@FUZZ
@given(field=fields, batch=st.lists(frames, max_size=15))
def test_session_counts_every_unmatched_frame(field: str | None, batch: list[str]) -> None:
    """Session.handle never raises on any text frame; with no probe waiting, every frame is
    counted exactly once in wsmon_unmatched_messages_total, under the right reason."""
    session, registry = make_session(field)
    for i, text in enumerate(batch):
        session.handle(WSMsgType.TEXT, text, float(i))
    counts = unmatched(registry)
    assert sum(counts.values()) == len(batch)
    assert counts["binary"] == 0
    if field is None:
        assert counts["unknown_id"] == len(batch)
    else:
        assert counts["invalid_json"] == sum(replies.parse(t) is None for t in batch)


@FUZZ
@given(field=fields, n_waiting=st.integers(1, 6), batch=st.lists(frames, max_size=15))
def test_session_with_waiting_probes(
    loop: asyncio.AbstractEventLoop, field: str | None, n_waiting: int, batch: list[str]
) -> None:
    """With probes waiting, every frame either completes one waiting probe (with the frame's
    own text and parsed message) or is counted as unmatched: matched + unmatched == frames."""
    session, registry = make_session(field)
    waiting = []
    for _ in range(n_waiting):
        key = session.correlator.next_id() if field else None
        p = pending(loop, key)
        session.correlator.register(p)
        waiting.append(p)
    # Make some frames answer the waiting ids.
    batch = [*batch, *(json.dumps({ID_FIELD: p.key}) for p in waiting[::2] if p.key)]
    for i, text in enumerate(batch):
        session.handle(WSMsgType.TEXT, text, float(i))
    done = [p for p in waiting if answered(p)]
    assert len(done) + sum(unmatched(registry).values()) == len(batch)
    if field is not None:
        assert all(answered(p) for p in waiting[::2])
    for p in done:
        reply = REPLIES[id(p)]
        assert reply.raw in batch
        assert canonical(reply.message) == canonical(replies.parse(reply.raw))
        if field is not None:
            assert reply.message is not None
            assert reply.message[field] == p.key
            assert type(reply.message[field]) is int


def test_session_large_frame() -> None:
    """Text frames of ~1 MB are each one counted message, not a crash."""
    session, registry = make_session(ID_FIELD)
    session.handle(WSMsgType.TEXT, json.dumps({"data": "x" * 1_000_000}), 0.0)
    session.handle(WSMsgType.TEXT, "[" + "1," * 500_000 + "1]", 0.0)
    session.handle(WSMsgType.TEXT, "\x00" * 1_000_000, 0.0)
    assert unmatched(registry) == {
        "invalid_json": 2,
        "binary": 0,
        "missing_id": 0,
        "unknown_id": 0,
        "unsolicited": 1,  # an object without req_id while no request waits
    }


@pytest.mark.parametrize("text", DEEP)
def test_session_deeply_nested_frame(text: str) -> None:
    """A deeply nested frame is counted as invalid_json like any other non-object."""
    session, registry = make_session(ID_FIELD)
    shallow(session.handle, WSMsgType.TEXT, text, 0.0)
    assert unmatched(registry)["invalid_json"] == 1


# --- 6. the config loader --------------------------------------------------------------------

ENV = {"SET_VAR": "from-the-environment"}
MODELS = (
    RawConfig,
    config.TargetConfig,
    config.ProbeConfig,
    config.ReconnectConfig,
    config.TCPConfig,
    config.LogConfig,
    config.MetricsConfig,
    config.HTTPConfig,
)
KNOWN_KEYS = sorted({"targets", *(name for m in MODELS for name in m.model_fields)})
# `file:` and `credential:` read files; they get their own strategy with safe paths.
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=10))

safe_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-FLOAT_RANGE_INT, max_value=FLOAT_RANGE_INT),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
yaml_values = json_values(safe_scalars, keys)
durations = st.one_of(
    st.from_regex(r"\A ?-?[0-9]{0,400}(\.[0-9]{0,6})? ?(ms|s|m|h|d|us|min|)? ?\Z"),
    st.sampled_from(
        ["0s", "-5s", "0.0001ms", "1e3s", "1.5.5s", "inf", "nan", "5 minutes", "\u0663s",
         "1_000s", " 5s ", "9" * 400 + "h", "", "s", "ms"]
    ),
)  # fmt: skip
numbers = st.one_of(
    st.integers(min_value=-10, max_value=300),
    st.integers(min_value=-FLOAT_RANGE_INT, max_value=FLOAT_RANGE_INT),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64 + 1, 10**308, -(10**308)]),
    st.floats(),
)
env_refs = st.sampled_from(
    ["${SET_VAR}", "${UNSET_VAR}", "${}", "${1X}", "$SET_VAR", "${SET_VAR", "a${SET_VAR}b${X}"]
)
secret_files = st.one_of(
    st.fixed_dictionaries(
        {"file": st.sampled_from(["", "/nonexistent/wsmon", "/", "missing-relative", 5])}
    ),
    st.fixed_dictionaries({"credential": st.sampled_from(["", "token", "a/b", None])}),
)
weird = st.one_of(
    yaml_values,
    numbers,
    durations,
    env_refs,
    secret_files,
    st.sampled_from([None, True, False, "", " ", "ws://h/", "wss://", "http://h/"]),
    st.builds(list),  # fresh objects: near_valid() may edit them later
    st.builds(dict),
    st.text(max_size=30),
)

BASE: dict[str, Any] = {
    "listen": "127.0.0.1:9815",
    "log": {"format": "json", "level": "info"},
    "max_concurrent_handshakes": 10,
    "tcp": {"keepalive_idle": "30s", "keepalive_interval": "10s", "keepalive_count": 3,
            "user_timeout": "60s"},
    "defaults": {
        "connect_timeout": "5s",
        "close_timeout": "2s",
        "correlation_field": "req_id",
        "reconnect": {"initial_delay": "1s", "max_delay": "60s", "multiplier": 2,
                      "reset_after": "30s"},
        "dead_after_timeouts": 2,
        "max_msg_size": 1048576,
        "headers": {"X-Api-Key": "${SET_VAR}"},
    },
    "targets": [
        {
            "name": "a",
            "url": "wss://example.test/ws?app_id=1",
            "probes": [
                {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"},
                 "interval": "30s", "timeout": "5s"},
                {"name": "frame", "kind": "ws-ping", "interval": "10s", "timeout": "1s"},
            ],
        },
        {"name": "b", "url": "ws://127.0.0.1:8080/", "correlation_field": None},
    ],
}  # fmt: skip


def test_base_config_is_valid() -> None:
    """The base the near-valid configs are made from loads as is."""
    cfg = config.loads(yaml.safe_dump(BASE), "<fuzz>", env=ENV)
    assert [t.name for t in cfg.targets] == ["a", "b"]


def containers(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every mapping and list in a document."""
    if isinstance(node, dict | list):
        yield path
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            yield from containers(v, (*path, k))


def at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """The base config with 1-4 edits: a key set to a weird value, an unknown (or known but
    misplaced) key added, a key or list item removed, a list item replaced or appended."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(containers(doc))))
        node = at(doc, path)
        op = draw(st.sampled_from(["set", "add", "delete"]))
        if isinstance(node, dict):
            if op == "add" or not node:
                node[draw(keys | st.integers(-3, 3))] = draw(weird)
            elif op == "set":
                node[draw(st.sampled_from(list(node)))] = draw(weird)
            else:
                del node[draw(st.sampled_from(list(node)))]
        elif op == "add" or not node:
            node.append(draw(weird))
        elif op == "set":
            node[draw(st.integers(0, len(node) - 1))] = draw(weird)
        else:
            del node[draw(st.integers(0, len(node) - 1))]
    return doc


def load_or_problems(text: str) -> list[str]:
    """config.loads must return a usable Config or raise ConfigError with non-empty string
    problems; any other exception fails the test with the input that caused it."""
    try:
        cfg = config.loads(text, "<fuzz>", env=ENV)
    except ConfigError as exc:
        problems = exc.problems
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped config.loads({text!r}): {exc}")
    else:
        assert isinstance(cfg, config.Config)
        assert cfg.targets
        for t in cfg.targets:
            for p in t.probes:
                if p.kind == "message":
                    probes.build_message(p, t.correlation_field, 1)
        return []
    assert problems, f"ConfigError without problems for {text!r}"
    for problem in problems:
        assert isinstance(problem, str), (problem, text)
        assert problem.strip(), (problem, text)
    return problems


@FUZZ
@given(st.text())
def test_config_arbitrary_text(text: str) -> None:
    """Any text: a Config, or a ConfigError of non-empty problems; nothing else escapes."""
    load_or_problems(text)


@FUZZ
@given(st.one_of(yaml_values, st.dictionaries(keys, yaml_values, max_size=6)))
def test_config_arbitrary_yaml(value: Any) -> None:
    """Any YAML document (safe_dump of nested JSON-like values, known keys included): a
    Config, or a ConfigError of non-empty problems; nothing else escapes."""
    load_or_problems(yaml.safe_dump(value, sort_keys=False))


LINE_COLUMN = re.compile(r"line \d+, column \d+: ")


def heads(doc: dict[Any, Any]) -> list[str]:
    """How a problem under each top-level key starts: a string key as itself; an integer key
    as `[k]` (pydantic's location) or `k` (the ${VAR} expansion's path)."""
    out = ["<root>", "targets"]
    for k in doc:
        out += [f"[{k}]", str(k)] if isinstance(k, int) else [k]
    return out


@settings(FUZZ, max_examples=200)
@given(near_valid())
def test_config_near_valid(doc: dict[str, Any]) -> None:
    """A valid config with arbitrary values injected: a Config, or a ConfigError whose every
    problem is `PATH: reason`, where PATH is `line N, column M`, `<root>`, or a top-level key
    of the document (listen, log, tcp, defaults, targets, an injected key) followed by
    nothing, `.` or `[`."""
    text = yaml.safe_dump(doc, sort_keys=False)
    allowed = heads(doc)
    for problem in load_or_problems(text):
        if LINE_COLUMN.match(problem):
            continue
        assert any(problem.startswith((h + ": ", h + ".", h + "[")) for h in allowed), (
            f"problem {problem!r} has no path into {text!r}"
        )


YAML_CONSTRUCTION = [
    pytest.param("{[a]: 1}\n", id="list-as-key"),
    pytest.param("? [a]\n: 1\n", id="complex-key"),
    pytest.param("{{a: 1}: 2}\n", id="mapping-as-key"),
    pytest.param("listen: 2001-13-45\n", id="impossible-date"),
    pytest.param("listen: !!int abc\n", id="bad-int-tag"),
    pytest.param("listen: !!float abc\n", id="bad-float-tag"),
    pytest.param("listen: !!bool maybe\n", id="bad-bool-tag"),
    pytest.param("listen: !!timestamp soon\n", id="bad-timestamp-tag"),
    pytest.param("max_concurrent_handshakes: 1" + "0" * 5000 + "\n", id="int-over-4300-digits"),
    pytest.param("listen: &a [*a]\n", id="recursive-alias"),
    pytest.param("[" * 1000, id="1k-nested-flow"),
]


@pytest.mark.parametrize("text", YAML_CONSTRUCTION)
def test_config_yaml_construction_errors(text: str) -> None:
    """YAML that parses but cannot be constructed (or recurses) is a precise ConfigError."""
    with pytest.raises(ConfigError) as info:
        shallow(config.loads, text, "<fuzz>", env=ENV)
    assert all(p.strip() for p in info.value.problems)


def test_aliases_inside_aliases_are_refused_before_they_are_written_out(tmp_path: Path) -> None:
    """A few hundred bytes of aliases inside aliases ("billion laughs": 9 ** 9 values) are
    refused at once with the reason, in a process of their own so that a regression times
    out instead of taking the suite's memory; an alias used many times is fine."""
    levels = ["a: &a [" + ",".join(["x"] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "\n".join(levels)
        + "\ntargets:\n  - {name: t, url: 'ws://127.0.0.1:1/', headers: {X: *i}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", str(bomb)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert (
        "<root>: with its aliases written out the document holds more than"
        in out.stdout + out.stderr
    )
    probe = {"name": "ping", "send": {"ping": 1}, "interval": "30s"}
    shared = yaml.safe_dump(
        {
            "targets": [
                {"name": f"t{i}", "url": "ws://127.0.0.1:1/", "probes": [probe]} for i in range(500)
            ]
        }
    )  # PyYAML writes the shared probe once, as an alias
    assert "*id001" in shared
    assert len(config.loads(shared, "<fuzz>", env=ENV).targets) == 500


@pytest.mark.parametrize("key", ["connect_timeout", "close_timeout"])
def test_config_duration_int_beyond_float_range(key: str) -> None:
    """A duration given as an integer too large for a float is a problem at its path."""
    doc = copy.deepcopy(BASE)
    doc["defaults"][key] = 10**400
    with pytest.raises(ConfigError) as info:
        config.loads(yaml.safe_dump(doc), "<fuzz>", env=ENV)
    assert info.value.problems[0].startswith(f"defaults.{key}: ")


def test_config_secret_file_with_nul() -> None:
    """`{file: ...}` with a NUL byte in the path is a problem at its path."""
    doc = copy.deepcopy(BASE)
    doc["defaults"]["headers"] = {"X-Token": {"file": "/etc/a\x00b"}}
    with pytest.raises(ConfigError) as info:
        config.loads(yaml.safe_dump(doc), "<fuzz>", env=ENV)
    assert info.value.problems[0].startswith("defaults.headers.X-Token: ")


@pytest.mark.parametrize("value", ["2024-01-01", "!!binary aGVsbG8=", "!!set {a}", ".nan", "-.inf"])
@pytest.mark.parametrize("where", ["probe", "auth"])
def test_config_send_must_be_json(where: str, value: str) -> None:
    """A probe's (or the auth message's) `send` that loads is sent as strict JSON; otherwise
    the config is refused."""
    send = f"{{ping: 1, x: {value}}}"
    option = (
        f"probes: [{{name: p, send: {send}}}]" if where == "probe" else f"auth: {{send: {send}}}"
    )
    text = f"targets: [{{name: a, url: 'ws://h/', {option}}}]\n"
    try:
        cfg = config.loads(text, "<fuzz>", env=ENV)
    except ConfigError:
        return
    target = cfg.targets[0]
    if where == "probe":
        sent = probes.build_message(target.probes[0], "req_id", 1)
    else:
        assert target.auth is not None
        sent = json.dumps(target.auth.send)  # as session.authenticate() sends it

    def reject(constant: str) -> Any:
        raise ValueError(constant)

    json.loads(sent, parse_constant=reject)


def test_config_empty_key_problem_has_path() -> None:
    """An empty top-level key is reported with a path like every other problem."""
    with pytest.raises(ConfigError) as info:
        config.loads(yaml.safe_dump({**BASE, "": 1}), "<fuzz>", env=ENV)
    assert all(": " in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("case", ["nul-in-path", "bad-int-tag", "deep-nesting"])
def test_config_headers_file_problems(tmp_path: Path, case: str) -> None:
    """Whatever is wrong with a headers_file is a problem at targets[i].headers_file."""
    path = str(tmp_path / "headers.yaml")
    if case == "nul-in-path":
        path += "\x00"
    else:
        content = "X-A: !!int x\n" if case == "bad-int-tag" else "[" * 1000
        Path(path).write_text(content)
    doc = {"targets": [{"name": "t", "url": "ws://h/", "headers_file": path}]}
    with pytest.raises(ConfigError) as info:
        shallow(config.loads, yaml.safe_dump(doc), "<fuzz>", env=ENV)
    assert info.value.problems[0].startswith("targets[0].headers_file: ")


def _cert_and_key(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / f"{name}.pem").write_bytes(cert_pem)
    (directory / f"{name}.key").write_bytes(key_pem)
    (directory / f"{name}-both.pem").write_bytes(cert_pem + key_pem)
    return directory / f"{name}.pem", directory / f"{name}.key"


def test_config_tls_merge_problem_is_config_error(tmp_path: Path) -> None:
    """A target's tls.cert_file merged with the defaults' key_file that does not match it is
    a ConfigError at the target's path, not a ValidationError."""
    a_cert, a_key = _cert_and_key(tmp_path, "a")
    _cert_and_key(tmp_path, "b")
    doc = {
        "defaults": {"tls": {"cert_file": str(a_cert), "key_file": str(a_key)}},
        "targets": [
            {"name": "t", "url": "wss://h/", "tls": {"cert_file": str(tmp_path / "b-both.pem")}}
        ],
    }
    with pytest.raises(ConfigError) as info:
        config.loads(yaml.safe_dump(doc), "<fuzz>", env=ENV)
    assert info.value.problems[0].startswith("targets[0]")


@FUZZ
@given(
    send=json_objects.filter(lambda d: not has_nan(d)),
    field=fields,
    req_id=st.integers(1, 10**12),
)
def test_message_template_matches_build_message(
    send: dict[str, Any], field: str | None, req_id: int
) -> None:
    """The precomputed message text is exactly what serialising the message would give."""
    probe = ProbeConfig.model_construct(name="p", kind="message", send=send, expect=None)
    assert probes.message_template(send, field)(req_id) == probes.build_message(
        probe, field, req_id
    )


def test_message_templates_are_shared_by_what_they_build() -> None:
    """Connections that send the same message share one builder (one per target would cost
    every target its closure); a different message, or id field, gets its own."""
    ping = probes.message_template({"ping": 1}, "req_id")
    assert probes.message_template({"ping": 1}, "req_id") is ping
    assert probes.message_template({"ping": 1}, "id") is not ping
    assert probes.message_template({"ping": 2}, "req_id") is not ping
    assert probes.message_template({"ping": 1}, None)(7) == '{"ping":1}'
    assert ping(7) == '{"ping":1,"req_id":7}'


@pytest.mark.parametrize(
    "text",
    ['{"a":1}', '{"a":1}x', '{"a":NaN}', '{"a":' + "9" * 5000 + "}", "{" * 100_000,
     '{"a":"\\ud800"}', '{"a":1e400}', '{"a":1,"a":2}', "[]", '{"a":-0.0}'],
)  # fmt: skip
def test_parse_is_the_same_with_and_without_orjson(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With orjson (the locked install has it) and with the json module alone (the portable
    path) a message parses the same: what orjson refuses, the json module reads."""
    fast = shallow(replies.parse, text)
    monkeypatch.setattr(replies, "fast_loads", None)
    assert canonical(shallow(replies.parse, text)) == canonical(fast)
    assert canonical(fast) == canonical(reference_parse(text))


def test_the_locked_install_parses_with_orjson() -> None:
    """The speedups extra brings orjson, and `parse` uses it (a lock that lost it fails)."""
    lock = (Path(__file__).resolve().parent.parent / "deploy/requirements.lock").read_text()
    assert "\norjson==" in lock
    pytest.importorskip("orjson")
    assert replies.fast_loads is not None


def test_an_integer_beyond_64_bits_is_the_nearest_float_with_orjson(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one documented difference: orjson reads an integer outside the 64-bit range as
    the nearest float; the json module, exactly. Inside the range both are exact."""
    pytest.importorskip("orjson")
    inside, beyond = 2**64 - 1, 2**64 + 1
    assert replies.parse(f'{{"a": {inside}, "b": {-(2**63)}}}') == {"a": inside, "b": -(2**63)}
    assert replies.parse(f'{{"a": {beyond}}}') == {"a": float(beyond)}
    monkeypatch.setattr(replies, "fast_loads", None)
    assert replies.parse(f'{{"a": {beyond}}}') == {"a": beyond}
