"""`wsmon demo`: the embedded default, a simulated Deriv-style API monitored by the daemon."""

from __future__ import annotations

from . import config as config_mod
from . import speedups
from .app import Daemon
from .config import DEFAULT_LISTEN
from .demo_api import DemoAPI
from .log import Logging
from .systemd import serve
from .web import WebConfigError

# The daemon's own config for the demo, in the same YAML a user would write.
DEMO_CONFIG = """
listen: "{listen}"
defaults:
  connect_timeout: 5s
  reconnect: {{initial_delay: 500ms, max_delay: 10s, multiplier: 2.0, reset_after: 10s}}
targets:
  - name: demo-api
    url: "{url}"
    probes:
      - {{name: ping, send: {{ping: 1}}, expect: {{msg_type: ping}}, interval: 2s, timeout: 1s}}
      - {{name: time, send: {{time: 1}}, expect: {{msg_type: time}}, interval: 5s, timeout: 1s}}
      - {{name: frame, kind: ws-ping, interval: 2s, timeout: 1s}}
      # The API's ticks stall now and then while pings are still answered: caught after
      # 3 s of silence, resubscribed on the same connection.
      - name: ticks
        kind: stream
        send: {{ticks: R_50, subscribe: 1}}
        expect: {{msg_type: tick}}
        max_gap: 3s
        on_stale: resubscribe
        lag_field: tick.epoch
    rate_limits: {{source: website_status}}
  - name: demo-api-eu
    url: "{url}&region=eu"
    probes:
      - {{name: ping, send: {{ping: 1}}, expect: {{msg_type: ping}}, interval: 1s, timeout: 500ms}}
      - {{name: ticks, kind: stream, send: {{ticks: R_100, subscribe: 1}}, max_gap: 3s}}
  - name: demo-api-asia
    url: "{url}&region=asia"
    probes:
      - {{name: ping, send: {{ping: 1}}, expect: {{msg_type: ping}}, interval: 3s, timeout: 1s}}
      - {{name: time, send: {{time: 1}}, expect: {{msg_type: time}}, interval: 10s, timeout: 2s}}
"""

ANNOUNCE = (
    "wsmon demo: status page at {{page_url}}\n"
    "wsmon demo: monitoring a simulated Deriv-style API at {api_url}\n"
    "wsmon demo: metrics at {{metrics_url}}  (Ctrl-C to stop)"
)


def demo_config(api_url: str, listen: str = DEFAULT_LISTEN) -> config_mod.Config:
    """The demo's config, validated like any file a user writes."""
    return config_mod.loads(DEMO_CONFIG.format(url=api_url, listen=listen), source="<demo>")


async def _demo(
    listen: str | None,
    log_format: str | None,
    log_level: str | None,
    web_config: str | None,
    receive_path: str,
) -> int:
    logging = Logging(log_format or "auto", log_level or "info")
    api = DemoAPI(mean_lifetime=60.0, log=logging.logger.bind(component="demo-api"))
    await api.start()
    try:
        cfg = demo_config(api.url, listen or DEFAULT_LISTEN)
        daemon = Daemon(cfg, logging, web_config_file=web_config, receive_path=receive_path)
        return await serve(daemon, ANNOUNCE.format(api_url=api.url))
    finally:
        await api.stop()


def run_demo(
    listen: str | None,
    log_format: str | None,
    log_level: str | None,
    web_config: str | None = None,
    event_loop: str = "auto",
    receive_path: str = "auto",
) -> int:
    """Run the simulated API and the daemon in one process until Ctrl-C or SIGTERM."""
    try:
        demo = _demo(listen, log_format, log_level, web_config, receive_path)
        return speedups.run(demo, event_loop)
    except WebConfigError as exc:
        print(f"wsmon demo: bad web config {exc.source}: " + "; ".join(exc.problems))
        return 1
    except OSError as exc:  # e.g. port 9815 already taken
        print(f"wsmon demo: cannot start: {exc} (try --listen 127.0.0.1:0)")
        return 1
    except KeyboardInterrupt:
        return 130
