"""wsmon: keeps WebSocket connections open, probes them, and exports what happened as metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsmon")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
