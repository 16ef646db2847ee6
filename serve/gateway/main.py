"""Entry point of ``lorafleet gateway --config FILE``: read the config, then serve the app with uvicorn."""

from __future__ import annotations

import gc
import logging
from pathlib import Path


def run(config_path: Path, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve the gateway described by ``config_path`` (``host``/``port`` override its ``server:`` section).

    On SIGTERM/SIGINT uvicorn stops accepting connections, in-flight streams get ``limits.drain_timeout_s`` to
    finish, then the backends are closed (and any replicas the gateway launched are stopped).
    """
    import uvicorn

    from serve.gateway.app import build_app
    from serve.gateway.config import load_config

    cfg = load_config(config_path)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lorafleet.gateway").info(
        "gateway: %d backend(s), %d adapter(s), policy %s, auth %s", len(cfg.backends), len(cfg.adapters),
        cfg.routing.policy, "on" if cfg.auth_enabled else "off")
    app = build_app(cfg)
    # Long-lived objects (config, app, imported modules) out of the collector's way, and fewer collections:
    # the request path allocates many short-lived objects and each young-generation pass costs CPU time.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    # httptools and uvloop (uvicorn[standard]): the C parser and event loop are most of what keeps the
    # gateway's added latency small. Client addresses are not used, so proxy headers are not parsed.
    uvicorn.run(app, host=host or cfg.server.host, port=port or cfg.server.port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=int(cfg.limits.drain_timeout_s), loop="uvloop",
                http="httptools", proxy_headers=False)
