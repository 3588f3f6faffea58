"""Which targets this daemon monitors when several share a config: rendezvous (highest random
weight) hashing of target names over the shards of a fleet.

Every target is owned by the `replicas` shards that weigh highest for it. A shard's weight for
a target depends only on the two, so growing a fleet from N to N+1 shards moves a target only
when the new shard outweighs one of its owners: about replicas/(N+1) of the targets move, each
onto the new shard, and no other target changes hands. No coordinator, no shared state: every
shard computes the same answer from the config alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .config import Config, ShardingConfig

# A StatefulSet pod's name: its set's name, a dash, its ordinal.
_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """This daemon's place in the fleet: shard `index` of `count`, each target on `replicas`."""

    index: int = 0
    count: int = 1
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard count must be at least 1, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not in 0..{self.count - 1}")
        if not 1 <= self.replicas <= self.count:
            raise ValueError(
                f"replicas must be from 1 to the shard count ({self.count}), not {self.replicas}"
            )

    @property
    def alone(self) -> bool:
        return self.count == 1

    def owns(self, target: str) -> bool:
        return self.alone or owned_by(target, self.index, self.count, self.replicas)

    def owned(self, config: Config) -> Config:
        """`config` with this shard's targets only (it still counts every target listed)."""
        if self.alone or config.selected == self:  # loaded for this shard: its own already
            return config
        return dataclasses.replace(
            config,
            targets=tuple(t for t in config.targets if self.owns(t.name)),
            listed=config.listed_targets,
        )

    def label(self) -> str:
        return f"{self.index}/{self.count}" + (f" x{self.replicas}" if self.replicas > 1 else "")


@dataclass(frozen=True)
class Fixed:
    """What the command line fixes of the shard (None: the config's `sharding` says, and a
    reload may change it): `--shard I/N` fixes index and count, `--shard-from-hostname` the
    index, `--shard-count` the count, `--shard-replicas` the replicas."""

    index: int | None = None
    count: int | None = None
    replicas: int | None = None

    def resolve(self, config: Config) -> Shard:
        """The shard these flags and `config.sharding` make; ValueError if impossible."""
        return self.within(config.sharding)

    def within(self, s: ShardingConfig) -> Shard:
        """The shard these flags and a config's `sharding` block make; ValueError if
        impossible."""
        return Shard(
            s.index if self.index is None else self.index,
            s.count if self.count is None else self.count,
            s.replicas if self.replicas is None else self.replicas,
        )

    def selects(self, s: ShardingConfig) -> Shard | None:
        """The shard these flags make under a config's `sharding` block, for the loader to
        validate and keep its targets only; None: every target (one shard alone, or a shard
        that cannot be: the daemon says why once the config is loaded)."""
        try:
            shard = self.within(s)
        except ValueError:
            return None
        return None if shard.alone else shard


def weight(target: str, shard: int) -> int:
    """The shard's weight for the target: 64 bits of a hash of both, stable everywhere
    (not Python's `hash`, which differs between processes)."""
    digest = hashlib.blake2b(f"{shard}\0{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class _Hasher(Protocol):
    def copy(self) -> _Hasher: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


@functools.lru_cache(maxsize=8)
def _hashers(count: int) -> tuple[_Hasher, ...]:
    """`weight`'s hash for each of `count` shards, fed its prefix: a copy of one, fed the
    target's name, gives the shard's weight for it (a copy costs less than a new hash)."""
    return tuple(hashlib.blake2b(f"{shard}\0".encode(), digest_size=8) for shard in range(count))


def _weighs(hasher: _Hasher, name: bytes) -> bytes:
    """`weight` as 8 big-endian bytes, which compare as the numbers do."""
    h = hasher.copy()
    h.update(name)
    return h.digest()


def owners(target: str, count: int, replicas: int = 1) -> list[int]:
    """The shards that monitor `target`: the `replicas` of `count` that weigh highest (ties,
    which 64 bits make unlikely, go to the higher shard)."""
    name = target.encode()
    weighed = [(_weighs(h, name), shard) for shard, h in enumerate(_hashers(count))]
    if replicas == 1:
        return [max(weighed)[1]]
    weighed.sort(reverse=True)
    return sorted(shard for _, shard in weighed[:replicas])


def owned_by(target: str, shard: int, count: int, replicas: int = 1) -> bool:
    """Whether `shard` is among `owners(target, count, replicas)`: fewer than `replicas`
    shards outweigh it. A shard asks this of every target in its config, and most are not
    its own: it stops at the `replicas`-th shard that outweighs it, after a few hashes
    rather than `count`."""
    name = target.encode()
    hashers = _hashers(count)
    mine = _weighs(hashers[shard], name)
    above = 0
    for other, hasher in enumerate(hashers):
        if other == shard:
            continue
        theirs = _weighs(hasher, name)
        if theirs > mine or (theirs == mine and other > shard):
            above += 1
            if above == replicas:
                return False
    return True


def spread(targets: Iterable[str], count: int, replicas: int = 1) -> list[int]:
    """How many targets each of `count` shards would monitor."""
    per_shard = [0] * count
    for name in targets:
        for shard in owners(name, count, replicas):
            per_shard[shard] += 1
    return per_shard


def parse_shard(text: str) -> tuple[int, int]:
    """'3/8' -> (3, 8)."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise ValueError(f"expected INDEX/COUNT, e.g. 0/4, not {text!r}")
    return int(index), int(count)


def ordinal(hostname: str) -> int:
    """The ordinal of a StatefulSet pod's name (`wsmon-3` -> 3)."""
    found = _ORDINAL.search(hostname)
    if found is None:
        raise ValueError(f"host name {hostname!r} does not end in -ORDINAL (e.g. wsmon-3)")
    return int(found.group(1))


def from_hostname(env: Mapping[str, str] | None = None) -> int:
    """This pod's ordinal, from $HOSTNAME or the system's host name."""
    env = os.environ if env is None else env
    return ordinal(env.get("HOSTNAME") or os.uname().nodename)
