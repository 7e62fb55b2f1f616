"""The bench's readable table and the cost slopes (least squares against fleet size)."""

from __future__ import annotations

from typing import Any

#: (label, side, path into the per-size result): costs whose growth with the fleet is reported.
SLOPED = [
    ("hub connect seconds", "hub", ("connect_seconds",)),
    ("hub KB/device", "hub", ("hub_kb_per_device",)),
    ("hub peak RSS MB", "hub", ("peak_rss_mb", "hub")),
    ("job seconds", "hub", ("method_job", "seconds")),
    ("hub CPU us/device in job", "hub", ("method_job", "hub_cpu_us_per_device")),
    ("fleet CPU us/round trip (hub)", "hub", ("method_job", "fleet_cpu_us_per_round_trip")),
    ("mosquitto connect seconds", "mosquitto", ("connect_seconds",)),
    ("mosquitto KB/device", "mosquitto", ("broker_kb_per_device",)),
    ("mosquitto round-trip seconds", "mosquitto", ("round_trips", "seconds")),
]


def _get(d: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def slopes(result: dict[str, Any]) -> dict[str, float | None]:
    """Each cost's change per 1,000 more devices (None with fewer than two sizes)."""
    out: dict[str, float | None] = {}
    for label, side, path in SLOPED:
        points = [(int(n), _get(row, path)) for n, row in result.get(side, {}).items()]
        points = [(n, v) for n, v in points if isinstance(v, int | float)]
        s = _slope([n / 1000 for n, _ in points], [float(v) for _, v in points])
        out[label] = None if s is None else round(s, 4)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(result: dict[str, Any]) -> str:
    """Markdown tables: one row per figure and size, ours next to its baseline of the same run.

    The first store's one node against Mosquitto, then each further store's, then two nodes
    per store against one node on that store (and Mosquitto).
    """
    rows: list[str] = []
    stores = result.get("stores", [result.get("store", "sqlite")])
    several = len(stores) > 1 or bool(result.get("two_nodes"))
    if result.get("hub"):
        if several:
            rows.append(f"### one node, {stores[0]} (baseline: Mosquitto)\n")
        _one_node_rows(rows, result["hub"], result.get("mosquitto", {}), stores[0])
    for store, part in result.get("by_store", {}).items():
        rows.append(f"\n### one node, {store} (baseline: Mosquitto)\n")
        _one_node_rows(rows, part.get("hub", {}), part.get("mosquitto", {}), store)
    for store, by_size in result.get("two_nodes", {}).items():
        rows.append(f"\n### two nodes, {store}, one NATS (baselines: one node on {store}; Mosquitto)\n")
        part = result if store == stores[0] else result.get("by_store", {}).get(store, {})
        _two_node_rows(rows, by_size, part.get("hub", {}), part.get("mosquitto", {}))
    _rest_rows(rows, result)
    return "\n".join(rows)


def _header(rows: list[str], ours: str) -> None:
    rows += [f"| figure | devices | {ours} | baseline (same run) | ratio |", "|---|---|---|---|---|"]


def _row(rows: list[str], fig: str, n: Any, ours: Any, base: Any, ratio: Any = None) -> None:
    rows.append(f"| {fig} | {_fmt(n)} | {_fmt(ours)} | {_fmt(base)} | {_fmt(ratio)} |")


def _p(d: dict[str, Any] | None) -> str | None:
    return f"{d['p50']} / {d['p99']}" if d else None


def _two_node_rows(rows: list[str], by_size: dict[str, Any], one_node: dict[str, Any], mosquitto: dict[str, Any]) -> None:
    _header(rows, "two nodes")
    for n, t in by_size.items():
        o, vs, job = one_node.get(n, {}), t.get("against_baselines", {}), t["method_job"]
        rt = mosquitto.get(n, {}).get("round_trips", {})
        kb, rss = t["hub_kb_per_device"], t["peak_rss_mb"]
        _row(rows, "scheduleDeviceMethod job created on node a, dev/s (baseline: one node)", int(n),
             job["devices_per_second"], _get(o, ("method_job", "devices_per_second")), vs.get("job_two_over_one_node"))
        _row(rows, "same job, dev/s (baseline: Mosquitto round trips/s)", int(n), job["devices_per_second"], rt.get("per_second"),
             vs.get("job_two_nodes_over_mosquitto"))
        _row(rows, "hub CPU per device in the job, us (both nodes; one node)", int(n), job.get("hub_cpu_us_per_device"),
             _get(o, ("method_job", "hub_cpu_us_per_device")))
        _row(rows, "durable reported PATCH, devices on both nodes, /s (baseline: one node)", int(n),
             t["reported_patch_per_second"], o.get("reported_patch_per_second"), vs.get("reported_patch_two_over_one_node"))
        _row(rows, "hub CPU per reported PATCH, us (both nodes; one node)", int(n), t.get("reported_patch_hub_cpu_us"),
             o.get("reported_patch_hub_cpu_us"))
        _row(rows, "connects/s, both fleets at once (baseline: one node)", int(n), t["connects_per_second"],
             o.get("connects_per_second"), vs.get("connects_two_over_one_node"))
        _row(rows, "memory per connected device, KB, node a / node b (baseline: one node)", int(n),
             " / ".join(str(v) for v in kb.values()), o.get("hub_kb_per_device"), vs.get("kb_per_device_two_over_one_node"))
        _row(rows, "REST direct method via node a, device on node a, p50 / p99 ms (baseline: one node)", int(n),
             _p(t["rest_method_same_node_ms"]), _p(o.get("rest_method_ms")), vs.get("method_p50_same_node_two_over_one_node"))
        _row(rows, "REST direct method via node a, device on node b (NATS), p50 / p99 ms (baseline: same node)", int(n),
             _p(t["rest_method_cross_node_ms"]), _p(t["rest_method_same_node_ms"]), vs.get("method_p50_cross_over_same_node"))
        _row(rows, "peak RSS MB (node a / node b / fleet a / fleet b / nats; one node: hub / fleet)", int(n),
             " / ".join(str(v) for v in rss.values()),
             f"{o['peak_rss_mb']['hub']} / {o['peak_rss_mb']['fleet']}" if "peak_rss_mb" in o else None)


def _one_node_rows(rows: list[str], hubs: dict[str, Any], mosquitto: dict[str, Any], store: str) -> None:
    _header(rows, "iot-flows hub")

    def row(fig: str, n: Any, ours: Any, base: Any, ratio: Any = None) -> None:
        _row(rows, fig, n, ours, base, ratio)

    for n, h in hubs.items():
        m = mosquitto.get(n, {})
        job, rt = h["method_job"], m.get("round_trips", {})
        ratio = h.get("method_job_over_mosquitto", {}).get("median")
        row("scheduleDeviceMethod job, dev/s (baseline: Mosquitto round trips/s)", int(n),
            job["devices_per_second"], rt.get("per_second"), ratio)
        row("REST direct method p50 / p99 ms (baseline: Mosquitto round trip)", int(n),
            f"{h['rest_method_ms']['p50']} / {h['rest_method_ms']['p99']}",
            f"{m['round_trip_ms']['p50']} / {m['round_trip_ms']['p99']}" if "round_trip_ms" in m else None)
        row("REST direct method, new connection per call, p50 ms", int(n), h["rest_method_new_connection_ms"]["p50"], None)
        if "rest_method_httpx_ms" in h:
            row("REST direct method through httpx (client cost included), p50 / p99 ms", int(n),
                f"{h['rest_method_httpx_ms']['p50']} / {h['rest_method_httpx_ms']['p99']}", None)
        row("memory per connected device, plain MQTT, KB", int(n), h["hub_kb_per_device"], m.get("broker_kb_per_device"))
        row("connects/s (connected+subscribed+twin/echo)", int(n), h["connects_per_second"], m.get("connects_per_second"))
        row("fleet CPU per round trip, us", int(n), job["fleet_cpu_us_per_round_trip"], rt.get("fleet_cpu_us_per_round_trip"))
        row("server CPU per round trip, us (hub in a job; mosquitto)", int(n), job.get("hub_cpu_us_per_device"),
            rt.get("mosquitto_cpu_us_per_round_trip"))
        row(f"durable reported PATCH, /s ({store})", int(n), h["reported_patch_per_second"], None)
        if "reported_patch_hub_cpu_us" in h:
            row("hub CPU per reported PATCH, us", int(n), h["reported_patch_hub_cpu_us"], None)
        if "confirm_twins" in h:
            c = h["confirm_twins"]
            row(f"flows: confirm {c['devices']} twins, s (baseline: GET per twin, as on Azure)", int(n),
                c["query_seconds"], c["get_seconds"], round(c["query_seconds"] / c["get_seconds"], 2))
        row("peak RSS MB (hub / fleet; mosquitto / fleet)", int(n),
            f"{h['peak_rss_mb']['hub']} / {h['peak_rss_mb']['fleet']}",
            f"{m['peak_rss_mb']['mosquitto']} / {m['peak_rss_mb']['fleet']}" if "peak_rss_mb" in m else None)


def _rest_rows(rows: list[str], result: dict[str, Any]) -> None:
    """TLS, queries and slopes."""

    def row(fig: str, n: Any, ours: Any, base: Any, ratio: Any = None) -> None:
        _row(rows, fig, n, ours, base, ratio)

    if result.get("tls") or result.get("queries"):
        rows.append("")
        _header(rows, "iot-flows hub")
    tls = result.get("tls")
    if tls:
        row("memory per connected device, TLS, KB", tls["devices"], tls["hub_kb_per_device"], tls.get("mosquitto_kb_per_device"))
        row("connects/s over TLS", tls["devices"], tls["hub_connects_per_second"], tls.get("mosquitto_connects_per_second"))
    q = result.get("queries")
    if q and "error" not in q:
        for backend in ("sqlite", "postgresql"):
            b = q.get(backend, {})
            for name in ("filter_first_page", "group_by", "unindexed_filter"):
                if name in b:
                    row(f"{backend}: {name} via POST /devices/query, ms (baseline: raw SQL)", q.get("devices"),
                        b[name], b.get(f"raw_{name}"), q.get("rest_over_raw", {}).get(backend, {}).get(name))
    elif q:
        rows.append(f"\nqueries: {q['error']}")
    sl = {k: v for k, v in result.get("slopes_per_1000_devices", {}).items() if v is not None}
    if sl:
        rows += ["", "| cost | slope per 1,000 more devices |", "|---|---|"]
        rows += [f"| {k} | {_fmt(v)} |" for k, v in sl.items()]
