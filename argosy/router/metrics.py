"""Prometheus metrics in the text exposition format, owned by one router instance.

Hand-written rather than prometheus_client: the hot path adds to a dict keyed by a label tuple
(no locks, the router is one event loop) and rendering happens only on scrape.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc, strict=True)) + "}"


class Metrics:
    def __init__(self) -> None:
        # name -> (help, label names, {label values: value})
        self._counters: dict[str, tuple[str, tuple[str, ...], defaultdict[tuple[str, ...], float]]] = {}
        self._hists: dict[
            str, tuple[str, tuple[str, ...], tuple[float, ...], dict[tuple[str, ...], Histogram]]
        ] = {}
        self._gauges: dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]] = {}
        c = self.counter
        c(
            "argosy_router_requests_total",
            "Requests answered, by backend, tier and status.",
            ("backend", "tier", "status"),
        )
        c("argosy_router_retries_total", "Attempts retried on another backend, by reason.", ("reason",))
        c("argosy_router_retries_denied_total", "Retries refused by the retry budget.", ())
        c("argosy_router_failovers_total", "Mid-stream failovers, by outcome.", ("outcome",))
        c("argosy_router_ejections_total", "Passive ejections of a backend.", ("backend",))
        c(
            "argosy_router_tokens_total",
            "Tokens from upstream usage, by backend and direction.",
            ("backend", "direction"),
        )
        c(
            "argosy_router_key_tokens_total",
            "Tokens from upstream usage, by client key and direction.",
            ("key", "direction"),
        )
        c("argosy_router_rejected_total", "Requests refused by the router itself, by reason.", ("reason",))
        c("argosy_router_chunks_total", "SSE chunks relayed.", ())
        c("argosy_router_wakeups_total", "Wake-up events emitted while requests waited for a backend.", ())
        h = self.histogram
        h(
            "argosy_router_request_seconds",
            "Whole request latency through the router.",
            ("tier",),
            LATENCY_BUCKETS,
        )
        h(
            "argosy_router_ttft_seconds",
            "Time to the first body byte from the backend.",
            ("tier",),
            LATENCY_BUCKETS,
        )
        h("argosy_router_chunk_gap_seconds", "Gap between relayed SSE chunks.", (), GAP_BUCKETS)
        h(
            "argosy_router_queue_wait_seconds",
            "Time requests waited for a usable backend.",
            (),
            LATENCY_BUCKETS,
        )
        g = self.gauge
        g("argosy_router_in_flight", "Requests in flight, by backend.", ("backend",))
        g("argosy_router_backend_up", "1 if a backend is in rotation.", ("backend", "tier"))
        g("argosy_router_queue_depth", "Requests waiting for a usable backend.", ())

    def counter(self, name: str, help_: str, labels: tuple[str, ...]) -> None:
        self._counters[name] = (help_, labels, defaultdict(float))

    def histogram(self, name: str, help_: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self._hists[name] = (help_, labels, buckets, {})

    def gauge(self, name: str, help_: str, labels: tuple[str, ...]) -> None:
        self._gauges[name] = (help_, labels, {})

    def inc(self, name: str, labels: tuple[str, ...] = (), by: float = 1.0) -> None:
        self._counters[name][2][labels] += by

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        _, _, buckets, series = self._hists[name]
        h = series.get(labels)
        if h is None:
            h = series[labels] = Histogram(buckets)
        h.observe(value)

    def set(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self._gauges[name][2][labels] = value

    def clear_gauge(self, name: str) -> None:
        self._gauges[name][2].clear()

    def value(self, name: str, labels: tuple[str, ...] = ()) -> float:
        """A counter's current value (tests and status use it)."""
        return self._counters[name][2].get(labels, 0.0)

    def total(self, name: str) -> float:
        return sum(self._counters[name][2].values())

    def render(self) -> bytes:
        out: list[str] = []
        for name, (help_, names, series) in self._counters.items():
            out.append(f"# HELP {name} {help_}\n# TYPE {name} counter")
            for vals, v in series.items():
                out.append(f"{name}{_labels(names, vals)} {v:g}")
        for name, (help_, names, series) in self._gauges.items():
            out.append(f"# HELP {name} {help_}\n# TYPE {name} gauge")
            for vals, v in series.items():
                out.append(f"{name}{_labels(names, vals)} {v:g}")
        for name, (help_, names, buckets, hs) in self._hists.items():
            out.append(f"# HELP {name} {help_}\n# TYPE {name} histogram")
            for vals, h in hs.items():
                acc = 0
                for le, n in zip((*map(str, buckets), "+Inf"), h.counts, strict=True):
                    acc += n
                    out.append(f"{name}_bucket{_labels((*names, 'le'), (*vals, le))} {acc}")
                out.append(f"{name}_sum{_labels(names, vals)} {h.sum:g}")
                out.append(f"{name}_count{_labels(names, vals)} {h.count}")
        return ("\n".join(out) + "\n").encode()
