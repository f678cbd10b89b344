"""Scraping ``/metrics`` in tests: samples keyed by (name, labels), parsed with
prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.peers.apiserver import RunningServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(srv: RunningServer, token: str | None = None) -> tuple[Samples, str]:
    """Samples and the raw exposition (200 and a Prometheus content type asserted)."""
    r = srv.client(token).get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return parse(r.text), r.text


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)
