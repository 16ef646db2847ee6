"""PromQL against a live scrape: parse each query the deployment ships (Grafana panels, prometheus-adapter
rules) and check every metric it selects, every label it filters or groups by, against what /metrics showed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import promql_parser as pq
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.helpers import DEPLOY

#: Labels Prometheus adds when scraping (target labels), and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint", "le"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "info": ("_info",), "summary": ("", "_sum", "_count", "_created"), "unknown": ("",)}
#: Grafana's variables, replaced by values PromQL accepts before parsing.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$base_model": ".*"}


@dataclass
class Exported:
    """What a scrape showed: sample names and, per sample name, the label names seen."""

    labels: dict[str, set[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            # A labelled metric with no children yet still declares itself (# HELP/# TYPE): its samples'
            # names follow from its type.
            for suffix in SUFFIXES.get(family.type, ("",)):
                self.labels.setdefault(family.name + suffix, set())
            for s in family.samples:
                self.labels.setdefault(s.name, set()).update(s.labels)


@dataclass
class Query:
    where: str
    selectors: list[tuple[str, set[str]]]  #: (metric, label names it filters on)
    groupings: list[tuple[set[str], set[str]]]  #: (labels grouped by, metrics inside the aggregation)


def _walk(node, sels: list, groups: list) -> set[str]:
    """Collect selectors and groupings under ``node``; return the metric names below it."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        sels.append((node.name, {m.name for m in node.matchers.matchers} - {"__name__"}))
        return {node.name}
    if kind == "MatrixSelector":
        return _walk(node.vector_selector, sels, groups)
    if kind == "AggregateExpr":
        inner = _walk(node.expr, sels, groups)
        if node.modifier is not None:
            groups.append((set(node.modifier.labels), inner))
        return inner
    if kind == "BinaryExpr":
        return _walk(node.lhs, sels, groups) | _walk(node.rhs, sels, groups)
    if kind == "Call":
        out = set()
        for a in node.args:
            out |= _walk(a, sels, groups)
        return out
    if kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
        return _walk(node.expr, sels, groups)
    return set()  # literals


def parse_query(expr: str, where: str) -> Query:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    try:
        tree = pq.parse(expr)
    except Exception as e:  # the parser's own error type is not exported
        pytest.fail(f"{where}: not valid PromQL: {expr!r}: {e}")
    sels, groups = [], []
    _walk(tree, sels, groups)
    return Query(where, sels, groups)


def dashboard_queries() -> list[Query]:
    dash = json.loads((DEPLOY / "grafana/dashboards/lorafleet.json").read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append(parse_query(t["expr"], f"panel '{panel['title']}' {t['refId']}"))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(metric, label)
            metric, label = var["query"]["query"].removeprefix("label_values(").rstrip(")").split(", ")
            out.append(Query(f"variable {var['name']}", [(metric, {label})], []))
    return out


def adapter_rules() -> dict[str, dict]:
    """prometheus-adapter's rules (deploy/prometheus/adapter-values.yaml) by the custom metric they produce."""
    rules = yaml.safe_load((DEPLOY / "prometheus/adapter-values.yaml").read_text())["rules"]["custom"]
    return {r["name"]["as"]: r for r in rules}


def check(q: Query, found: Exported) -> list[str]:
    problems = []
    for metric, labels in q.selectors:
        if metric not in found.labels:
            problems.append(f"{q.where}: {metric} is not exported")
        elif found.labels[metric] and not labels <= found.labels[metric] | TARGET_LABELS:
            problems.append(f"{q.where}: {metric} has no label(s) {labels - found.labels[metric]}")
    for by, metrics in q.groupings:
        seen = [found.labels[m] for m in metrics if found.labels.get(m)]
        if not seen:  # declared but no sample yet (e.g. retries: nothing failed): its name was checked above
            continue
        have = set().union(*seen) | TARGET_LABELS
        if not by <= have:
            problems.append(f"{q.where}: grouped by {by - have}, which {sorted(metrics)} do not carry")
    return problems
