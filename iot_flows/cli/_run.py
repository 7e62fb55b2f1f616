"""``iot-flows run FLOW [--param name=value ...]``: one ad-hoc run of a library flow.

The flows are discovered from :mod:`iot_flows.flows` (every Prefect flow it exports), and
their parameters from the flows' signatures: a parameter typed with a pydantic model (the
``request`` of most flows) contributes that model's fields, any other parameter itself
(``connection`` excepted: the CLI passes the hub it resolved). ``--param`` values are JSON
when they parse as JSON (``--param config='{"a": 1}'``, ``--param max_failure_ratio=0.1``),
text otherwise, and plain text for text fields (``--param version=2.1.0``). The whole
request is validated against the flow's parameter model before anything runs.

Printed: the Prefect flow-run name (stderr, when the run starts), its UI URL when
``PREFECT_UI_URL``/``PREFECT_API_URL`` is configured, the flow's logs (stderr), and the
structured result (stdout, ``--output``). Exit code 0 only when the run completed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import types
import typing
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from pydantic import BaseModel, SecretStr

from iot_flows._ephemeral import ephemeral_defaults, sigint_blocked_for_children
from iot_flows.cli._ops import (
    CaFileOption,
    HubOption,
    HubUrlOption,
    OutputOption,
    ProfileOption,
    UsageProblem,
    emit,
    fail,
    guard,
    resolve,
    run_hub_command,
)

__all__ = ["FlowSpec", "discover_flows", "run"]

SKIPPED = {"connection"}


@dataclass
class FlowSpec:
    """A library flow as the CLI sees it: its names and the fields ``--param`` may set."""

    name: str  #: command-line name, e.g. ``reboot-devices``
    flow: Any
    #: field name -> (flow parameter it belongs to, or None when it is that parameter; annotation)
    fields: dict[str, tuple[str | None, Any]] = field(default_factory=dict)
    models: dict[str, type[BaseModel]] = field(default_factory=dict)  #: flow parameter -> model
    takes_connection: bool = False


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _spec(name: str, flow: Any) -> FlowSpec:
    spec = FlowSpec(name=name, flow=flow)
    hints = typing.get_type_hints(flow.fn)
    for param in inspect.signature(flow.fn).parameters.values():
        if param.name in SKIPPED:
            spec.takes_connection = True
            continue
        annotation = hints.get(param.name, Any)
        model = _model_of(annotation)
        if model is None:
            # A flat parameter named like a field of a model parameter (``version`` of
            # ``request``) only overrides that field: the value goes into the model, which
            # may require it (``update-firmware --param version=...``).
            spec.fields.setdefault(param.name, (None, annotation))
            continue
        spec.models[param.name] = model
        for field_name, info in model.model_fields.items():
            if spec.fields.get(field_name, (None, None))[0] is None:  # first model wins over flat ones
                spec.fields[field_name] = (param.name, info.annotation)
    return spec


def discover_flows() -> dict[str, FlowSpec]:
    """Every flow :mod:`iot_flows.flows` exports, by command-line name (``reboot-devices``)."""
    from prefect import Flow

    import iot_flows.flows as library

    found = {}
    for attr in getattr(library, "__all__", dir(library)):
        obj = getattr(library, attr, None)
        if isinstance(obj, Flow):
            found[attr.replace("_", "-")] = _spec(attr.replace("_", "-"), obj)
    return dict(sorted(found.items()))


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return all(a is str for a in args) and bool(args)
    return False


def _value(text: str, annotation: Any) -> Any:
    if _is_text(annotation):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parameters(spec: FlowSpec, params: list[str]) -> dict[str, Any]:
    """The flow's parameters from ``name=value`` pairs, validated; raises :class:`UsageProblem`."""
    grouped: dict[str, Any] = {}
    for item in params:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UsageProblem(f"--param {item!r}: expected name=value")
        if name not in spec.fields:
            known = ", ".join(sorted(spec.fields)) or "none"
            raise UsageProblem(f"flow {spec.name} has no parameter {name!r} (its parameters: {known})")
        owner, annotation = spec.fields[name]
        value = _value(text, annotation)
        if owner is None:
            grouped[name] = value
        else:
            grouped.setdefault(owner, {})[name] = value
    for owner in spec.models:
        if owner not in grouped and _required(spec, owner):
            grouped[owner] = {}
    # Prefect logs a refused parameter as an ERROR (with the raw pydantic list) before raising;
    # the command says it once, in one line, so that record is dropped here.
    flows_log = logging.getLogger("prefect.flows")
    quiet = _DropParameterValidationLog()
    flows_log.addFilter(quiet)
    try:
        for owner, model in spec.models.items():
            if owner in grouped:
                grouped[owner] = model.model_validate(grouped[owner])
        return spec.flow.validate_parameters(grouped)  # type: ignore[no-any-return]
    except Exception as exc:  # pydantic ValidationError or Prefect's ParameterTypeError
        raise UsageProblem(f"flow {spec.name}: invalid parameters: {_describe(exc)}") from None
    finally:
        flows_log.removeFilter(quiet)


class _DropAnnounceHookLog(logging.Filter):
    """Prefect logs every hook it runs (twice, at INFO); ``_announce`` is this command's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'_announce'" not in record.getMessage()


class _DropParameterValidationLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Parameter validation failed")


def _required(spec: FlowSpec, owner: str) -> bool:
    param = inspect.signature(spec.flow.fn).parameters[owner]
    return param.default is inspect.Parameter.empty


def _start_prefect_api() -> None:
    """Reach the Prefect API once before the flow runs; in ephemeral mode this starts the
    temporary server with SIGINT blocked, so a Ctrl-C during the run does not kill it while
    the engine still has to record the interrupted run (a hang of a minute or more before)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return

    async def hello() -> None:
        async with get_client() as client:
            await client.hello()

    with sigint_blocked_for_children():
        asyncio.run(hello())


def _describe(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors())
    # Prefect's ParameterTypeError: "Flow run received invalid parameters:\n - name: why\n - ..."
    text = str(exc).removeprefix("Flow run received invalid parameters:")
    return "; ".join(" ".join(line.split()) for line in text.split("\n - ") if line.strip())


def _announce(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_running`` hook: the run's name (and UI URL) as soon as it starts."""
    typer.echo(f"flow run '{flow_run.name}' ({flow.name}) started", err=True)
    url = _ui_url(flow_run.id)
    if url:
        typer.echo(f"  {url}", err=True)


def _ui_url(flow_run_id: Any) -> str | None:
    import os

    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if not (os.environ.get("PREFECT_UI_URL") or PREFECT_API_URL.value()):  # no server configured: none to show
        return None
    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def _plain(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return json.loads(json.dumps(result, default=str))


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    """``asyncio.run`` takes a coroutine; an async flow's call returns an awaitable."""
    return await awaitable


async def _connection(hub: str | None, hub_url: str | None, profile: str | None, ca_file: str | None) -> Any:
    from iot_flows.blocks import HubConnection

    connection_string, base_url, verify = await resolve(hub, hub_url, profile, ca_file)
    return HubConnection(
        connection_string=SecretStr(connection_string), base_url=base_url, ca_file=verify if isinstance(verify, str) else None
    )


@guard
def run(
    flow_name: Annotated[str, typer.Argument(metavar="FLOW", help="A library flow, e.g. fleet-report; `iot-flows run --list` lists them.")] = "",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value (JSON or text); repeat for more.")] = None,
    list_flows: Annotated[bool, typer.Option("--list", help="List the flows and their parameters.")] = False,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Run a library flow once, now, against the hub; print its result."""
    ephemeral_defaults()  # before Prefect is imported (discover_flows imports the flows)
    flows = discover_flows()
    if list_flows or not flow_name:
        emit([{"flow": s.name, "title": s.flow.name, "parameters": ", ".join(s.fields)} for s in flows.values()],
             output, columns=["flow", "title", "parameters"])  # fmt: skip
        return
    spec = flows.get(flow_name.replace("_", "-"))
    if spec is None:
        raise UsageProblem(f"unknown flow {flow_name!r} (flows: {', '.join(flows)})")
    parameters = build_parameters(spec, param or [])
    if spec.takes_connection:
        # An unreachable hub or a rejected key (401) is one line here, before any flow run.
        run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.query_page("SELECT deviceId FROM devices", page_size=1))
        parameters["connection"] = asyncio.run(_connection(hub, hub_url, profile, ca_file))
    flow = spec.flow.with_options(on_running=[*spec.flow.on_running_hooks, _announce])
    logging.getLogger("prefect.engine").addFilter(_DropAnnounceHookLog())
    logging.getLogger("prefect.flow_runs").addFilter(_DropAnnounceHookLog())
    try:
        _start_prefect_api()
        state = flow(**parameters, return_state=True)
        if inspect.isawaitable(state):
            state = asyncio.run(_awaited(state))
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # no Prefect API (ephemeral server did not start, PREFECT_API_URL down)
        raise fail(f"cannot run flow {spec.name} with Prefect: {type(exc).__name__}: {exc}"
                   " (set PREFECT_API_URL to a running `prefect server start`)") from None
    if not state.is_completed():
        reason = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else state.message
        raise fail(f"flow {spec.name} {state.type.value.lower()}: {reason}")
    emit(_plain(result), output)
