"""A command's settings options, derived from its role's settings model: none written by hand.

`@with_settings(NodeSettings)` gives a command one option per field (`threads` ->
`--threads`, a bool `mdns` -> `--mdns/--no-mdns`, a bool `no_model` -> `--no-model` alone),
with the field's description as help, plus `--config FILE` and `--print-config`. An option
left off the command line is absent, so it overrides neither the environment nor the config
file (`dinet._config_layers`).
Values are checked by the model, whichever layer they came from, so every bad value gets
the same one-line error naming the field and its source.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import typer
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dinet._config_layers import CONFIG_ENV, Resolved, env_name, flag_name, resolve
from dinet.cli._common import fail, print_json
from dinet.config import CommonSettings
from dinet.errors import ConfigError

S = TypeVar("S", bound=CommonSettings)

PANEL = "Settings: flag > DINET_* environment > --config file > default"

# Spellings the command line had before its options were derived from the models.
OTHER_SPELLINGS: dict[str, tuple[str, ...]] = {
    "bootstrap": ("-b",),
    "discover_timeout_s": ("--timeout",),
}

_METAVARS: dict[object, str] = {int: "INTEGER", float: "FLOAT", Path: "PATH", SecretStr: "KEY", str: "TEXT"}

_LAYER_OPTIONS = ("config", "print_config")


def with_settings(role: type[S]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command `role`'s options; it is called with `settings=` (and `config=` if it asks).

    The command's own parameters stay its per-call options (a prompt, `--json`, ...).
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True)
        wants_config = "config" in own.parameters
        kept = [p for p in own.parameters.values() if p.name not in ("settings", "config")]
        derived = [_option(name, field) for name, field in role.model_fields.items()]
        spellings = {name: "/".join((flag_name(name), *OTHER_SPELLINGS[name])) for name in OTHER_SPELLINGS}
        clash = {p.name for p in kept} & ({p.name for p in derived} | set(_LAYER_OPTIONS))
        if clash:
            raise TypeError(f"{command.__name__} declares settings of {role.__name__}: {sorted(clash)}")

        def run(**given: Any) -> None:
            config: Path | None = given.pop("config")
            show: bool = given.pop("print_config")
            flags = {name: given.pop(name) for name in role.model_fields}
            try:
                resolved = resolve(
                    role,
                    flags={k: v for k, v in flags.items() if v is not None},
                    config=config,
                    flag_names=spellings,
                )
            except ConfigError as exc:
                fail(str(exc))
                return
            if show:
                print_config(resolved, json_out=bool(given.get("json_out")))
                return
            extra = {"config": config} if wants_config else {}
            command(settings=resolved.settings, **extra, **given)

        run.__signature__ = own.replace(parameters=[*kept, *derived, *_layer_options()])  # type: ignore[attr-defined]
        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        return run

    return decorate


def print_config(resolved: Resolved[Any], *, json_out: bool) -> None:
    """Every setting's effective value and where it came from."""
    report = resolved.report()
    if json_out:
        print_json(report)
        return
    table = Table(title=f"{type(resolved.settings).__name__}: flag > env > file > default")
    for column in ("setting", "value", "from"):
        table.add_column(column)
    for name, row in report.items():
        value = row["value"]
        shown = value if isinstance(value, str) else json.dumps(value)
        origin = row["from"] if row["source"] is None else f"{row['from']} {row['source']}"
        table.add_row(name, escape(shown), escape(origin))  # "[node]" is no markup
    Console().print(table)


def _option(name: str, field: FieldInfo) -> inspect.Parameter:
    kind = _bare(field.annotation)
    decls = (flag_name(name), *OTHER_SPELLINGS.get(name, ()))
    help_text = f"{field.description} ({_default_text(name, field)}{env_name(name)})"
    if kind is bool and name.startswith("no_"):  # `--no-model`, never `--no-no-model`
        annotation: Any = Annotated[
            bool | None,
            typer.Option(flag_name(name), help=help_text, rich_help_panel=PANEL),
        ]
    elif kind is bool:
        flag = flag_name(name)
        annotation = Annotated[
            bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, rich_help_panel=PANEL)
        ]
    elif get_origin(kind) is list:
        annotation = Annotated[
            list[str] | None,
            typer.Option(*decls, help=help_text + "; repeat for more", metavar="TEXT", rich_help_panel=PANEL),
        ]
    else:  # given as text: the model converts and checks it, as it does the environment's
        annotation = Annotated[
            str | None,
            typer.Option(*decls, help=help_text, metavar=_METAVARS.get(kind, "TEXT"), rich_help_panel=PANEL),
        ]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _layer_options() -> list[inspect.Parameter]:
    config = Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar=CONFIG_ENV,
            metavar="FILE",
            rich_help_panel=PANEL,
            help="Read settings from this TOML file (docs/settings.md)",
        ),
    ]
    show = Annotated[
        bool,
        typer.Option(
            "--print-config",
            rich_help_panel=PANEL,
            help="Print each setting's value and where it came from (with --json: as JSON), then exit",
        ),
    ]
    return [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=config),
        inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=show),
    ]


def _bare(annotation: Any) -> Any:
    """`int | None` -> int."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not NoneType]
        if len(args) == 1:
            return args[0]
    return annotation


def _default_text(name: str, field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if default is None or default == [] or (default is False and name.startswith("no_")):
        return ""
    if isinstance(default, bool):
        shown = flag_name(name) if default else f"--no-{flag_name(name)[2:]}"
    else:
        shown = ", ".join(default) if isinstance(default, list) else str(default)
    return f"default {shown}; "
