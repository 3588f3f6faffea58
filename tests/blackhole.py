"""A peer that vanishes without FIN or RST, built from two private network namespaces.

Run as `unshare --net python tests/blackhole.py KEEPALIVE_IDLE WAIT`: this process owns a
fresh namespace (the client's); it starts the test server in a second one, joins the two
with a veth pair (10.253.0.1 <-> 10.253.0.2, reachable from nowhere else), lets the daemon
connect with no probes configured, then takes the server's end of the link down so that
every packet disappears. It prints one JSON line: how the connection ended and when.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml

from monitor import config
from monitor.app import Daemon
from monitor.log import Logging

HERE = Path(__file__).parent
SERVER_SIDE = """
for i in $(seq 1 250); do ip link show wsb >/dev/null 2>&1 && break; sleep 0.02; done
ip link set lo up
sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip addr add 10.253.0.2/30 dev wsb
ip link set wsb up
exec "$0" "$1" --host 10.253.0.2
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


async def main(keepalive_idle: float, wait: float) -> dict[str, object]:
    server = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", SERVER_SIDE, sys.executable, str(HERE / "wsserver.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        sh("ip", "link", "set", "lo", "up")
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "link", "add", "wsa", "type", "veth", "peer", "name", "wsb")
        sh("ip", "link", "set", "wsb", "netns", str(server.pid))
        sh("ip", "addr", "add", "10.253.0.1/30", "dev", "wsa")
        sh("ip", "link", "set", "wsa", "up")
        assert server.stdout is not None
        port = int(server.stdout.readline())
        doc = {
            "listen": "127.0.0.1:0",
            "tcp": {"keepalive_idle": keepalive_idle, "keepalive_interval": 0.5,
                    "keepalive_count": 2, "user_timeout": keepalive_idle + 1.0},
            "targets": [{"name": "t", "url": f"ws://10.253.0.2:{port}/ws", "probes": [],
                         "close_timeout": "200ms",
                         "reconnect": {"initial_delay": "10s", "max_delay": "10s"}}],
        }  # fmt: skip
        cfg = config.loads(yaml.safe_dump(doc))
        log = io.StringIO()
        daemon = Daemon(cfg, Logging("json", "info", stream=log), rng=random.Random(1))
        await daemon.start()
        get = daemon.registry.get_sample_value
        loop = asyncio.get_running_loop()
        for _ in range(500):
            if get("wsmon_connected", {"target": "t"}) == 1:
                break
            await asyncio.sleep(0.01)
        sh("nsenter", "-t", str(server.pid), "-n", "ip", "link", "set", "wsb", "down")
        vanished = loop.time()
        detected = None
        while loop.time() - vanished < wait:
            if get("wsmon_connected", {"target": "t"}) == 0:
                detected = loop.time() - vanished
                break
            await asyncio.sleep(0.02)
        result = {
            "detected_s": detected,
            "network_1006": get(
                "wsmon_disconnects_total", {"target": "t", "code": "1006", "origin": "network"}
            ),
            "up": get("wsmon_up", {"target": "t"}),
            "events": [json.loads(line) for line in log.getvalue().splitlines()],
        }
        await daemon.stop()
        return result
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])))), flush=True)
