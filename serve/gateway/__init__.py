"""The gateway: an OpenAI-compatible front door routing multi-LoRA traffic across engine replicas
(``lorafleet gateway --config FILE``). It reaches engines only over HTTP, through ``serve.backends``."""
