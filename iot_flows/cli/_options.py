"""Command-line options generated from the settings models (:mod:`iot_flows._settings`).

:func:`settings_options` turns a function that takes settings models into a typer
command whose options are the models' fields: ``--field-name`` (or the names in the
field's :class:`~iot_flows._settings.Cli` metadata), the field's description as help, its
default shown, ``ge``/``le`` as the allowed range, and the environment variable named.
Only flags typed on the command line are passed to the model (click's parameter
source), so an unset flag leaves the field to the environment and then to the model's
default (flag > environment > default).

``python -m iot_flows.cli._options --write README.md`` rewrites the README's
configuration table (``tests/cli/test_settings.py`` fails when it is out of date).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, TypeVar

import annotated_types
import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from iot_flows._settings import Cli

__all__ = [
    "Option",
    "build_settings",
    "iter_options",
    "markdown_table",
    "readme_table",
    "settings_options",
    "with_readme_table",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Option:
    """One generated option: where its value goes and how typer declares it."""

    group: str  #: the keyword argument (model) it belongs to
    path: tuple[str, ...]  #: field names from that model down (nested models: two)
    param: str  #: the Python parameter name typer sees
    names: tuple[str, ...]  #: e.g. ("--http-port",) or ("--tls/--no-tls",)
    annotation: Any  #: the value type typer parses (Optional: None = not given)
    help: str
    env: str  #: the environment variable that sets the same field
    default: Any  #: the model's default (for help and docs); PydanticUndefined if computed
    panel: str | None
    minimum: float | None
    maximum: float | None


def _cli(info: FieldInfo) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _range(info: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Le):
            high = m.le
    return low, high  # type: ignore[return-value]


def iter_options(
    group: str, model: type[BaseModel], *, prefix: str = "", path: tuple[str, ...] = ()
) -> Iterator[Option]:
    """The options of ``model``'s fields (nested models flattened), in declaration order."""
    env_prefix = str(model.model_config.get("env_prefix", ""))
    for name, info in model.model_fields.items():
        cli = _cli(info)
        if cli.hidden:
            continue
        value_type = _unwrap_optional(info.annotation)
        if _is_model(value_type):
            yield from iter_options(group, value_type, prefix=prefix + cli.prefix, path=(*path, name))
            continue
        names = cli.names or (_flag(prefix + name),)
        if value_type is bool:
            names = tuple(f"{n}/--no-{n[2:]}" if n.startswith("--") else n for n in names)
        low, high = _range(info)
        yield Option(
            group=group,
            path=(*path, name),
            param="_".join((group, *path, name)),
            names=names,
            annotation=value_type,
            help=info.description or "",
            env=(env_prefix + name).upper(),
            default=info.get_default(call_default_factory=False) if info.default_factory is None else PydanticUndefined,
            panel=cli.panel,
            minimum=low,
            maximum=high,
        )


def _typer_parameter(option: Option) -> inspect.Parameter:
    # The model's default is shown in --help; whether a flag was typed is read from click's
    # parameter source (see ``settings_options``), so an untyped flag never hides the environment.
    default = None if option.default is PydanticUndefined else option.default
    help_text = (option.help + f" (env {option.env})").replace("[", "(").replace("]", ")")
    declared = typer.Option(
        *option.names,
        help=help_text,
        show_default=default not in (None, ""),
        rich_help_panel=option.panel,
        min=option.minimum,
        max=option.maximum,
    )
    value_type = option.annotation if default is not None else option.annotation | None
    return inspect.Parameter(
        option.param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[value_type, declared]
    )


def build_settings(model: type[BaseModel], given: dict[tuple[str, ...], Any]) -> Any:
    """``model`` built from the options a user gave (keyed by field path); the rest
    comes from the environment or the defaults. Raises ``pydantic.ValidationError``."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in given.items():
        if len(path) == 1:
            top[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1:]] = value
    for name, values in nested.items():
        sub = _unwrap_optional(model.model_fields[name].annotation)
        top[name] = build_settings(sub, values)
    return model(**top)


def settings_options(**models: type[BaseModel]) -> Callable[[F], F]:
    """Decorate a command taking one settings instance per keyword; typer then sees one
    option per field (see the module docstring). A ``ValidationError`` becomes a usage
    error (exit code 2) naming the option."""

    def decorate(func: F) -> F:
        options = [o for group, model in models.items() for o in iter_options(group, model)]
        by_param = {o.param: o for o in options}
        flags = {o.path: o.names[0].split("/")[0] for o in options}

        @functools.wraps(func)
        def command(_typer_context: typer.Context, **kwargs: Any) -> Any:
            source = _typer_context.get_parameter_source
            typed = {p for p in kwargs if getattr(source(p), "name", None) == "COMMANDLINE"}
            built: dict[str, Any] = {}
            for group, model in models.items():
                given = {by_param[p].path: v for p, v in kwargs.items() if p in typed and by_param[p].group == group}
                try:
                    built[group] = build_settings(model, given)
                except ValidationError as exc:
                    raise typer.BadParameter(_describe(exc, model, flags)) from None
            return func(**built)

        context = inspect.Parameter("_typer_context", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        params = [context, *(_typer_parameter(o) for o in options)]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must see the generated signature, not the original
        return command  # type: ignore[return-value]

    return decorate


def _describe(exc: ValidationError, model: type[BaseModel], flags: dict[tuple[str, ...], str]) -> str:
    parts = []
    for error in exc.errors():
        loc = tuple(str(x) for x in error["loc"])
        where = flags.get(loc) or flags.get(loc[-1:]) or ".".join(loc)
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def markdown_table(models: list[type[BaseModel]]) -> str:
    """The configuration table of the README: one row per setting."""
    rows = ["| environment variable | flag | default | meaning |", "|---|---|---|---|"]
    for model in models:
        for o in iter_options(model.__name__, model):
            value = o.default.value if isinstance(o.default, Enum) else o.default  # `off`, not `QuotaTier.OFF`
            default = "" if value is PydanticUndefined or value is None else f"`{value}`"
            rows.append(f"| `{o.env}` | `{o.names[0]}` | {default} | {o.help} |")
        for name, info in model.model_fields.items():
            if _cli(info).hidden:
                env = (str(model.model_config.get("env_prefix", "")) + name).upper()
                rows.append(f"| `{env}` | | | {info.description or ''} |")
    return "\n".join(rows)


def readme_table() -> str:
    """The table for every component, in README order."""
    from iot_flows import _settings

    return markdown_table([
        _settings.HubSettings, _settings.ClientSettings, _settings.FleetSettings,
        _settings.SimulatorSettings, _settings.DemoSettings,
    ])  # fmt: skip


_START, _END = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"


def with_readme_table(readme: str) -> str:
    """``readme`` with the text between the settings-table markers replaced by :func:`readme_table`."""
    head, sep, rest = readme.partition(_START)
    _old, sep2, tail = rest.partition(_END)
    if not (sep and sep2):
        raise ValueError("README lacks the settings-table markers")
    return f"{head}{_START}{readme_table()}\n{_END}{tail}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:  # python -m iot_flows.cli._options --write README.md
        from pathlib import Path

        target = Path(sys.argv[2])
        target.write_text(with_readme_table(target.read_text()))
    else:
        print(readme_table())
