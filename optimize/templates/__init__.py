"""Prefix-cache-aware prompt templates: lint, compile and report (``lorafleet optimize templates ...``).

The template format and its rendering live in :mod:`lorafleet.templates`, shared with the gateway.
"""
