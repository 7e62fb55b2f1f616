"""deployments/prefect.yaml resolves: entrypoints, parameters, schedules, pull step.

No Prefect server is needed: every check is what ``prefect deploy`` would compute before
talking to the API (the flow object, its parameter schema, the schedule objects).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.utilities.importtools import import_object
from prefect.utilities.schema_tools.validation import validate

import iot_flows.flows

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
CONFIG = yaml.safe_load(PREFECT_YAML.read_text())
DEPLOYMENTS: list[dict[str, Any]] = CONFIG["deployments"]
SCHEDULE_KEYS = {"cron", "interval", "rrule", "timezone", "anchor_date", "day_or", "active", "parameters", "slug"}


def _load(entrypoint: str) -> Flow[Any, Any]:
    path, name = entrypoint.rsplit(":", 1)
    # Entrypoints are relative to the repo root (where `prefect deploy` runs); no AST fallback.
    return load_flow_from_entrypoint(f"{ROOT / path}:{name}", use_placeholder_flow=False)


def _unknown_keys(value: Any, schema: dict[str, Any], defs: dict[str, Any], where: str) -> list[str]:
    """Keys a pydantic model would silently ignore (a typo in a parameter name, say)."""
    if "$ref" in schema:
        return _unknown_keys(value, defs[schema["$ref"].rsplit("/", 1)[-1]], defs, where)
    options = schema.get("anyOf") or schema.get("allOf")
    if options:
        results = [_unknown_keys(value, option, defs, where) for option in options if _fits(value, option, defs)]
        return min(results, key=len) if results else []
    if isinstance(value, dict) and "properties" in schema and not schema.get("additionalProperties"):
        unknown = [f"{where}.{k}" for k in value if k not in schema["properties"]]
        for key, sub in value.items():
            if key in schema["properties"]:
                unknown += _unknown_keys(sub, schema["properties"][key], defs, f"{where}.{key}")
        return unknown
    return []


def _fits(value: Any, schema: dict[str, Any], defs: dict[str, Any]) -> bool:
    """Whether ``value`` is of the JSON type of one ``anyOf`` branch."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    kind = schema.get("type", "object" if "properties" in schema else None)
    types: dict[str | None, Any] = {"object": dict, "array": list, "string": str, "null": type(None),
                                    "boolean": bool, "integer": int, "number": (int, float), None: object}  # fmt: skip
    return isinstance(value, types.get(kind, object))


def _ids(deployments: list[dict[str, Any]]) -> list[str]:
    return [d["name"] for d in deployments]


def test_project_level_settings() -> None:
    assert CONFIG["name"] == "iot-flows"
    assert CONFIG["prefect-version"].startswith("3.")
    (step,) = CONFIG["pull"]
    (step_name, inputs), = step.items()
    assert callable(import_object(step_name))  # a real Prefect step
    assert step_name == "prefect.deployments.steps.set_working_directory" and inputs["directory"]
    names = _ids(DEPLOYMENTS)
    assert len(names) == len(set(names)), "deployment names must be unique"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=_ids(DEPLOYMENTS))
def test_entrypoint_resolves_to_a_flow(deployment: dict[str, Any]) -> None:
    path, name = deployment["entrypoint"].rsplit(":", 1)
    assert path.startswith("flows/") and (ROOT / path).is_file()
    flow = _load(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    assert flow is getattr(iot_flows.flows, name), "entrypoints expose the library flow itself"
    assert deployment["work_pool"]["name"] == "iot-flows"
    assert deployment.get("description")


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=_ids(DEPLOYMENTS))
def test_parameters_validate_against_the_flow(deployment: dict[str, Any]) -> None:
    flow = _load(deployment["entrypoint"])
    params = deployment.get("parameters") or {}
    flow.validate_parameters(params)  # what the flow run does (pydantic)
    schema = parameter_schema(flow).model_dump_for_openapi()
    validate(params, schema, raise_on_error=True)  # what the server does with parameter_openapi_schema
    assert _unknown_keys(params, schema, schema.get("definitions", {}), "parameters") == []
    if "connection" in schema["properties"]:
        assert isinstance(params.get("connection"), str), "name the HubConnection block: connection: <block name>"


@pytest.mark.parametrize("deployment", [d for d in DEPLOYMENTS if d.get("schedules")],
                         ids=_ids([d for d in DEPLOYMENTS if d.get("schedules")]))  # fmt: skip
def test_schedules_parse(deployment: dict[str, Any]) -> None:
    for schedule in deployment["schedules"]:
        assert set(schedule) <= SCHEDULE_KEYS, set(schedule) - SCHEDULE_KEYS
        kwargs = {k: schedule[k] for k in ("timezone",) if k in schedule}
        if "cron" in schedule:
            parsed: Any = CronSchedule(cron=schedule["cron"], day_or=schedule.get("day_or", True), **kwargs)
        elif "interval" in schedule:
            parsed = IntervalSchedule(interval=schedule["interval"], **kwargs)
        else:
            parsed = RRuleSchedule(rrule=schedule["rrule"], **kwargs)
        assert parsed.timezone, "give every schedule a timezone"
        assert isinstance(schedule.get("active", True), bool)


def test_the_schedules_the_issue_asks_for() -> None:
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert by_name["nightly-reboot"]["schedules"][0]["cron"] == "0 2 * * *"
    assert by_name["hourly-fleet-report"]["schedules"][0]["cron"] == "0 * * * *"


def test_every_library_flow_has_an_entrypoint_and_every_entrypoint_a_deployment() -> None:
    exposed: dict[str, str] = {}
    for script in sorted((ROOT / "flows").glob("*.py")):
        tree = ast.parse(script.read_text())
        names = [n.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name) and t.id == "__all__"
                 for n in node.value.elts]  # type: ignore[attr-defined]  # fmt: skip
        assert len(names) == 1, f"{script.name}: one flow per entrypoint script, named in __all__"
        exposed[names[0]] = f"flows/{script.name}"
    assert set(exposed) == set(iot_flows.flows.__all__)
    deployed = {d["entrypoint"] for d in DEPLOYMENTS}
    assert {f"{path}:{name}" for name, path in exposed.items()} <= deployed


def test_every_fleet_deployment_fails_on_too_few_devices() -> None:
    """Shipped deployments set min_devices: 1, so a condition matching nothing fails the run."""
    for deployment in DEPLOYMENTS:
        schema = parameter_schema(_load(deployment["entrypoint"])).model_dump_for_openapi()
        if "min_devices" in schema["properties"]:
            assert deployment["parameters"].get("min_devices") == 1, deployment["name"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=_ids(DEPLOYMENTS))
def test_the_often_changed_fields_are_flat_parameters(deployment: dict[str, Any]) -> None:
    """One `--param` (or one UI form field) changes what a run targets, without retyping `request`."""
    flow = _load(deployment["entrypoint"])
    properties = parameter_schema(flow).model_dump_for_openapi()["properties"]
    request = (deployment.get("parameters") or {}).get("request") or {}
    for field in ("query_condition", "target_condition", "version", "package_uri"):
        if field in request:
            assert field in properties, f"{deployment['name']}: {field} should be a flat parameter"
