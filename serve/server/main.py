"""Entry point of ``lorafleet serve``: load the engine, then run uvicorn."""

from __future__ import annotations

import logging

from lorafleet.config import EngineConfig, ServerConfig


def run(engine_cfg: EngineConfig, server_cfg: ServerConfig) -> None:
    import uvicorn

    from serve.engine.worker import ProcessEngine
    from serve.server.app import build_app

    logging.basicConfig(level=server_cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("lorafleet.serve")
    engine = ProcessEngine.launch(engine_cfg)
    lay = engine.layout
    log.info("model %s on %s (%s): %d KV blocks x %d tokens, context %d", engine.checkpoint, lay.device, lay.dtype,
             lay.num_kv_blocks, lay.block_size, lay.max_model_len)
    app = build_app(engine, server_cfg)
    uvicorn.run(app, host=server_cfg.host, port=server_cfg.port, log_level=server_cfg.log_level, access_log=False)
