"""Fleet report: twin queries with GROUP BY, published as table artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from pydantic import BaseModel, Field

from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._ui import apply_overrides, artifact_key, check_matched, completed, n_devices, param, run_name
from iot_flows.tasks import query_twins

__all__ = ["FleetReport", "FleetReportRequest", "fleet_report"]

DEFAULT_GROUPS = ["properties.reported.firmware.currentFwVersion", "connectionState", "status"]


class FleetReportRequest(BaseModel):
    """Parameters of the fleet report: twin paths to group by and a WHERE body restricting the devices."""
    group_by: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUPS), description="Twin paths to count by.")
    query_condition: str = Field(default="*", description="Restrict to devices matching this WHERE body.")


class FleetReport(BaseModel):
    """Device counts per value of each grouped twin path (from ``GROUP BY`` queries, Azure "IoT Hub query language")."""
    total_devices: int
    groups: dict[str, dict[str, int]] = Field(description="path -> value -> device count ('(none)' = not reported)")


@flow(name="Fleet report", log_prints=True,
      flow_run_name=run_name(lambda p: f"fleet report · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def fleet_report(
    request: FleetReportRequest | None = None,
    connection: ConnectionRef = None,
    query_condition: str | None = None,
    min_devices: int = 0,
) -> FleetReport:
    """Count devices by firmware version, connection state, ... (one GROUP BY query per path).

    Artifacts: ``fleet-report`` (markdown, every group) and ``fleet-by-<path>`` (one table
    per path), keyed so the Artifacts page keeps the history of every run.

    Raises:
        TooFewDevicesError: fewer than ``min_devices`` devices matched.
    """
    request = apply_overrides(request or FleetReportRequest(), query_condition=query_condition)
    conn = await resolve_connection(connection)
    where = "" if request.query_condition.strip() == "*" else f" WHERE {request.query_condition}"
    total_rows = await query_twins(conn, f"SELECT COUNT() AS n FROM devices{where}")
    total = int(total_rows[0]["n"]) if total_rows else 0
    zero = check_matched(total, request.query_condition, min_devices, "fleet report")
    groups: dict[str, dict[str, int]] = {}
    lines = [f"# Fleet report\n\n**{total}** devices" + (f" matching `{request.query_condition}`" if where else "")]
    for path in request.group_by:
        rows = await query_twins(conn, f"SELECT {path} AS value, COUNT() AS n FROM devices{where} GROUP BY {path}")
        counts: dict[str, Any] = {}
        for row in rows:
            key = "(none)" if row.get("value") is None else str(row["value"])
            counts[key] = counts.get(key, 0) + int(row["n"])
        groups[path] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        await acreate_table_artifact(
            [{"value": k, "devices": v, "share": f"{v / total:.1%}" if total else "-"} for k, v in groups[path].items()]
            or [{"value": "-", "devices": 0, "share": "-"}],
            key=artifact_key("fleet-by", path.removeprefix("properties.reported.")),
            description=f"{n_devices(total)} by {path}" + (f" ({request.query_condition})" if where else ""),
        )
        lines.append(f"\n## {path}\n" + "\n".join(f"- `{k}`: {v}" for k, v in groups[path].items()))
    await acreate_markdown_artifact(
        "\n".join(lines), key="fleet-report", description=zero or f"Fleet report: {n_devices(total)} by {len(groups)} paths"
    )
    return completed(FleetReport(total_devices=total, groups=groups),  # type: ignore[return-value]
                     zero or f"{n_devices(total)} by {', '.join(request.group_by)}")  # fmt: skip
