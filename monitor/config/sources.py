"""Where configuration values come from: YAML text, `${VAR}`, secret and headers files.

Each function here reports what it cannot read as `path: reason` lines, for `loading` to
raise together with the validation problems. It also collects the strings that logs redact.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from .model import TargetConfig

# Config and header files are small; a larger file is a mistake, not something to read whole.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
# Values a YAML document may hold with its aliases written out: more than a file of
# MAX_CONFIG_BYTES could hold without aliases (a value takes at least two bytes).
MAX_WRITTEN_OUT = MAX_CONFIG_BYTES // 2
# Query parameters and header names whose values are credentials and must never be logged.
SECRET_WORDS = ("token", "password", "passwd", "secret", "key", "authorization", "auth", "cookie")

_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SECRET_BYTES = 64 * 1024


# --- YAML ----------------------------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of silently keeping the last."""


# libyaml's scanner and parser, when PyYAML was built with it (its usual wheels are): several
# times faster than the pure-Python ones, which dominate the load of a large file. Objects are
# built by the same safe constructor. A document it rejects is read again by the pure-Python
# loader, whose messages say more (and which decides).
FastUniqueKeyLoader: type[yaml.CSafeLoader] | None = None
if hasattr(yaml, "CSafeLoader"):

    class FastUniqueKeyLoader(yaml.CSafeLoader):  # type: ignore[no-redef]
        """`UniqueKeyLoader` on libyaml."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` keys may be overridden
            continue
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = loader.construct_mapping(node)
    return mapping


for _loader in (UniqueKeyLoader, FastUniqueKeyLoader):
    if _loader is not None:
        _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# A JSON number that YAML 1.1 (PyYAML's resolver) also reads as a float: a dot, and an
# exponent only with a sign. `1e5` or `1.5e10` is a string there.
_YAML_FLOAT = re.compile(r"-?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?")
_JSON_START = re.compile(r"\s*[{\[]")  # (a match, not a stripped copy of a large file)
# Where YAML and JSON read the same text otherwise: a surrogate escape (JSON joins a pair,
# YAML does not), and characters YAML folds or refuses (DEL; outside ASCII: NEL, U+2028,
# C1 controls, U+FFFE); a file with any of them goes to the YAML loaders.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_YAML_KEY_MAX = 1024  # a longer key is an error to YAML


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("duplicate key")  # the YAML loader reads it again and says which
    if any(len(key) > _YAML_KEY_MAX for key in found):
        raise ValueError("long key")
    return found


def _float(text: str) -> float:
    if _YAML_FLOAT.fullmatch(text) is None:
        raise ValueError(text)  # not a float to YAML: the YAML loader reads it again
    return float(text)


def _constant(text: str) -> Any:
    raise ValueError(text)  # NaN and Infinity are strings to YAML


def parse_json(text: str) -> Any:
    """The document in `text` if it is JSON that YAML reads as the same values, else
    ValueError. A generated config of many targets is often JSON (YAML 1.1 reads JSON);
    the json module reads it many times faster than any YAML parser."""
    return json.loads(text, object_pairs_hook=_unique, parse_float=_float, parse_constant=_constant)


def parse_yaml(text: str, problems: list[str]) -> Any:
    """The document in `text`; if it cannot be read, None and its (first) problem appended."""
    if (
        _JSON_START.match(text)
        and text.isascii()
        and "\x7f" not in text
        and _SURROGATE_ESCAPE.search(text) is None
    ):
        try:
            return parse_json(text)
        except (ValueError, RecursionError):
            pass  # not JSON, or JSON that YAML reads otherwise: the YAML loaders decide
    if FastUniqueKeyLoader is not None:
        try:
            data = yaml.load(text, Loader=FastUniqueKeyLoader)  # a CSafeLoader subclass
        except (yaml.YAMLError, RecursionError, ValueError, TypeError, KeyError, AttributeError):
            pass  # the pure-Python loader below reads it again and says why
        else:
            return _aliases_bounded(data, problems)
    try:
        return _aliases_bounded(yaml.load(text, Loader=UniqueKeyLoader), problems)  # SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = exc.problem or exc.context or "invalid YAML"
        problems.append(f"{where}: YAML syntax error: {what}")
    except yaml.YAMLError as exc:
        problems.append(f"YAML syntax error: {exc}")
    except RecursionError:
        problems.append("YAML nested too deeply")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # A tagged value the loader cannot build (`!!int abc`, an impossible date, ...).
        problems.append(f"invalid YAML value: {exc}")
    return None


def _aliases_bounded(data: Any, problems: list[str]) -> Any:
    """The document, unless its aliases written out make it larger than MAX_WRITTEN_OUT
    values: then None and that problem. YAML shares an alias's value, but everything that
    reads the document afterwards (`${VAR}` expansion, validation) goes through each use of
    it, so aliases nested in aliases ("billion laughs") would hold the daemon for good."""
    size = _written_out(data, {}, set())
    if size > MAX_WRITTEN_OUT:
        problems.append(
            f"<root>: with its aliases written out the document holds more than "
            f"{MAX_WRITTEN_OUT:,} values (aliases inside aliases multiply): write it out "
            "or nest fewer aliases"
        )
        return None
    return data


def _written_out(node: Any, sizes: dict[int, int], busy: set[int]) -> int:
    """How many values `node` holds once every alias in it is written out, each shared
    mapping or list counted once (`sizes`, by id), so the count costs what the document
    does. An alias that contains itself counts once here (`expand_env` refuses it)."""
    if not isinstance(node, dict | list):
        return 1
    key = id(node)
    found = sizes.get(key)
    if found is not None:
        return found
    if key in busy:
        return 1
    busy.add(key)
    if isinstance(node, dict):
        total = 1 + sum(
            _written_out(k, sizes, busy) + _written_out(v, sizes, busy) for k, v in node.items()
        )
    else:
        total = 1 + sum(_written_out(v, sizes, busy) for v in node)
    busy.discard(key)
    sizes[key] = total
    return total


def read_headers_file(path: str, where: str) -> dict[str, str] | str:
    """The headers in a YAML file, or the problem with it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f.read(MAX_CONFIG_BYTES))
    except OSError as exc:
        return f"{where}: cannot read {path!r}: {exc.strerror or exc}"
    except (
        yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError,
        RecursionError,
    ):  # fmt: skip
        return f"{where}: {path!r} is not a readable YAML file of headers"
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return f"{where}: {path!r} must be a mapping of header names to string values"
    return data


# --- ${VAR}, {file: PATH} and {credential: NAME} -------------------------------------------


def expand_env(
    node: Any, path: str, env: Mapping[str, str], problems: list[str], used: set[str]
) -> Any:
    """`node` with `${VAR}` replaced in every string (keys too) and `{file: PATH}` or
    `{credential: NAME}` replaced by the file's content; the values put in are added to
    `used` (they are secrets). A YAML alias that contains itself raises RecursionError."""
    if isinstance(node, dict) and len(node) == 1 and next(iter(node)) in ("file", "credential"):
        inner = expand_env(next(iter(node.values())), path, env, problems, used)
        return _read_secret_file({next(iter(node)): inner}, path, env, problems, used)
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if not _VAR_RE.fullmatch(var):
                problems.append(f"{path or '<root>'}: invalid variable reference ${{{var}}}")
                return m.group(0)
            if var not in env:
                problems.append(f"{path or '<root>'}: environment variable {var!r} is not set")
                return m.group(0)
            if env[var]:
                used.add(env[var])
            return env[var]

        return _ENV_RE.sub(sub, node)
    if isinstance(node, dict):
        return {
            expand_env(k, path, env, problems, used): expand_env(
                v, join_path(path, str(k)), env, problems, used
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [expand_env(v, f"{path}[{i}]", env, problems, used) for i, v in enumerate(node)]
    return node


def _read_secret_file(
    node: dict[str, Any], path: str, env: Mapping[str, str], problems: list[str], used: set[str]
) -> str | None:
    """`{file: PATH}` or `{credential: NAME}` (a systemd credential): the file's content."""
    ((kind, name),) = node.items()
    if not isinstance(name, str) or not name:
        problems.append(f"{path}: `{kind}` needs a non-empty string")
        return None
    if kind == "credential":
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            problems.append(
                f"{path}: credential {name!r} needs $CREDENTIALS_DIRECTORY "
                "(set by systemd's LoadCredential=)"
            )
            return None
        if "/" in name:
            problems.append(f"{path}: credential name {name!r} must not contain '/'")
            return None
        name = os.path.join(directory, name)
    try:
        with open(name, encoding="utf-8") as f:
            value = f.read(_MAX_SECRET_BYTES + 1)
    except ValueError:  # e.g. a NUL byte in the path
        problems.append(f"{path}: {kind} {name!r} is not a valid path")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read {kind} {name!r}: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        problems.append(f"{path}: {kind} {name!r} is not UTF-8 text")
        return None
    if len(value) > _MAX_SECRET_BYTES:
        problems.append(f"{path}: {kind} {name!r} is larger than 64 KiB")
        return None
    value = value.rstrip("\r\n")
    used.add(value)
    return value


def join_path(path: str, key: str) -> str:
    """`path.key`, as problems name the place of a value (an empty key as `path[""]`)."""
    if key == "":
        return f'{path}[""]'
    return f"{path}.{key}" if path else key


# --- secrets ---------------------------------------------------------------------------------


def looks_secret(name: str) -> bool:
    """True for header or parameter names that usually carry credentials."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def target_secrets(targets: list[TargetConfig]) -> set[str]:
    """The credentials the targets carry: header values, the auth message's strings, URL
    passwords and query parameters whose names look secret, the proxy's credentials."""
    found: set[str] = set()
    for t in targets:
        found.update(v for v in t.headers.values() if v)
        if t.auth is not None:  # the authorize message is a credential as a whole
            found.update(_strings(t.auth.send))
        parts = urlsplit(t.url)
        if parts.password:
            found.add(parts.password)
        found.update(v for k, v in parse_qsl(parts.query) if v and looks_secret(k))
        if t.proxy is not None:  # the proxy's user and password
            proxy = urlsplit(t.proxy)
            found.update(v for v in (proxy.username, proxy.password) if v)
    return found


def _strings(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return set().union(*(_strings(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_strings(v) for v in node)) if node else set()
    return set()
