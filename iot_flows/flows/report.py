"""Fleet report: twin queries with GROUP BY, published as table artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.tasks import query_twins

__all__ = ["FleetReport", "FleetReportRequest", "fleet_report"]

DEFAULT_GROUPS = ["properties.reported.firmware.currentFwVersion", "connectionState", "status"]


class FleetReportRequest(BaseModel):
    group_by: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUPS), description="Twin paths to count by.")
    query_condition: str = Field(default="*", description="Restrict to devices matching this WHERE body.")


class FleetReport(BaseModel):
    total_devices: int
    groups: dict[str, dict[str, int]] = Field(description="path -> value -> device count ('(none)' = not reported)")


@flow(name="Fleet report", log_prints=True)
async def fleet_report(request: FleetReportRequest | None = None, connection: ConnectionRef = None) -> FleetReport:
    """Count devices by firmware version, connection state, ... (one GROUP BY query per path)."""
    request = request or FleetReportRequest()
    conn = await resolve_connection(connection)
    where = "" if request.query_condition.strip() == "*" else f" WHERE {request.query_condition}"
    total_rows = await query_twins(conn, f"SELECT COUNT() AS n FROM devices{where}")
    total = int(total_rows[0]["n"]) if total_rows else 0
    groups: dict[str, dict[str, int]] = {}
    lines = [f"# Fleet report\n\n**{total}** devices" + (f" matching `{request.query_condition}`" if where else "")]
    for path in request.group_by:
        rows = await query_twins(conn, f"SELECT {path} AS value, COUNT() AS n FROM devices{where} GROUP BY {path}")
        counts: dict[str, Any] = {}
        for row in rows:
            key = "(none)" if row.get("value") is None else str(row["value"])
            counts[key] = counts.get(key, 0) + int(row["n"])
        groups[path] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        await create_table_artifact(
            [{"value": k, "devices": v, "share": f"{v / total:.1%}" if total else "-"} for k, v in groups[path].items()]
            or [{"value": "-", "devices": 0, "share": "-"}],
            description=f"Devices by {path}",
        )
        lines.append(f"\n## {path}\n" + "\n".join(f"- `{k}`: {v}" for k, v in groups[path].items()))
    await create_markdown_artifact("\n".join(lines), description="Fleet report")
    return FleetReport(total_devices=total, groups=groups)
