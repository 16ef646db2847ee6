"""The embedded engine's OpenAI-compatible HTTP server (``lorafleet serve``)."""
