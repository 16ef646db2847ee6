"""The embedded inference engine: continuous batching over a paged KV cache with prefix caching and
batched multi-LoRA. Nothing in this package knows about HTTP."""
