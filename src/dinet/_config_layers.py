"""A role's effective settings, and where each value came from.

One rule for every role and every field: a flag given on the command line wins over the
environment (`DINET_<FIELD>`), which wins over the config file, which wins over the
model's default. Flags not given are simply absent here, so they override nothing.

The config file is TOML. Top-level keys are the settings every role shares (`home`,
`bootstrap`, `mdns`); each role reads its own tables (`[node]`; `[client]`; a gateway
reads `[client]` then `[gateway]`). Every key in every table must name a field of that
table's role: a misspelt key is an error, never silently ignored.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from dinet.config import ROLES, CommonSettings
from dinet.errors import ConfigError

S = TypeVar("S", bound=CommonSettings)
Layer = Literal["flag", "env", "file", "default"]

ENV_PREFIX = "DINET_"
CONFIG_ENV = "DINET_CONFIG"  # a config file for every command, unless --config names another


@dataclass(frozen=True)
class Origin:
    layer: Layer
    name: str | None = None  # the flag, the variable or the file (and table) it came from

    def __str__(self) -> str:
        return self.layer if self.name is None else f"{self.layer} {self.name}"


@dataclass(frozen=True)
class Resolved(Generic[S]):
    settings: S
    origins: dict[str, Origin]  # field name -> where its value came from

    def report(self) -> dict[str, dict[str, Any]]:
        """Each field's value (secrets masked) and origin, for `--print-config --json`."""
        values = self.settings.model_dump(mode="json")
        return {
            name: {"value": values[name], "from": origin.layer, "source": origin.name}
            for name, origin in self.origins.items()
        }


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def resolve(
    role: type[S],
    *,
    flags: Mapping[str, object] | None = None,
    config: Path | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Resolved[S]:
    """`role`'s settings from `flags` (only those given) > environment > `config` > defaults.

    `flag_names` says how each flag was spelt, for messages (default: `--field-name`).
    Raises ConfigError with one line naming the field and where its bad value came from.
    """
    layers: list[tuple[dict[str, object], dict[str, Origin]]] = []  # lowest first
    if config is not None:
        layers.append(read_config_file(role, config))
    env = read_env(role)
    layers.append((env, {name: Origin("env", env_name(name)) for name in env}))
    given = dict(flags or {})
    unknown = set(given) - set(role.model_fields)
    if unknown:
        raise ConfigError(f"{role.__name__} has no setting {', '.join(sorted(unknown))}")
    names = flag_names or {}
    layers.append((given, {name: Origin("flag", names.get(name, flag_name(name))) for name in given}))

    merged: dict[str, object] = {}
    origins = {name: Origin("default") for name in role.model_fields}
    for values, where in layers:
        merged.update(values)
        origins.update(where)
    try:
        settings = role.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(role, exc, merged, origins)) from None
    return Resolved(settings, origins)


def read_env(role: type[CommonSettings]) -> dict[str, object]:
    """The role's fields set in the environment. A list of multiaddrs is a JSON list or
    plain text separated by commas or whitespace (`dinet.config.split_multiaddrs`)."""
    source = EnvSettingsSource(role)
    found: dict[str, object] = {}
    for name, field in role.model_fields.items():
        raw, _, is_complex = source.get_field_value(field, name)
        if raw is None:
            continue
        try:
            found[name] = source.prepare_field_value(name, field, raw, is_complex)
        except ValueError:
            raise ConfigError(
                f"invalid setting {name} (from env {env_name(name)}): {raw!r} is not a JSON list"
            ) from None
    return found


def read_config_file(role: type[CommonSettings], path: Path) -> tuple[dict[str, object], dict[str, Origin]]:
    """The role's values in the TOML file at `path`, each with the table it came from."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _check_keys(path, document)
    values: dict[str, object] = {}
    origins: dict[str, Origin] = {}
    tables: list[tuple[str | None, Mapping[str, object]]] = [(None, document)]
    tables += [(section, document.get(section, {})) for section in role.sections]
    for section, table in tables:
        for key, value in table.items():
            if key in role.model_fields:
                values[key] = value
                origins[key] = Origin("file", f"{path} [{section}]" if section else str(path))
    return values, origins


def _check_keys(path: Path, document: Mapping[str, object]) -> None:
    """Every key of every table names a setting of that table's role."""
    shared = set(CommonSettings.model_fields)
    for key, value in document.items():
        if key in ROLES:
            if not isinstance(value, dict):
                raise ConfigError(f"config file {path}: [{key}] must be a table of settings")
            known = set(ROLES[key].model_fields)
            for inner in value:
                if inner not in known:
                    hint = _hint(inner, known)
                    raise ConfigError(f"config file {path}: unknown key {inner!r} in [{key}]{hint}")
        elif key not in shared:
            owners = [f"[{name}]" for name, role in ROLES.items() if key in role.model_fields]
            if owners:
                raise ConfigError(f"config file {path}: {key!r} belongs in a table: {' or '.join(owners)}")
            tables = ", ".join(f"[{name}]" for name in ROLES)
            raise ConfigError(
                f"config file {path}: unknown top-level key {key!r}{_hint(key, shared | set(ROLES))} "
                f"(only {', '.join(sorted(shared))} and the tables {tables})"
            )


def _hint(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(
    role: type[CommonSettings],
    exc: ValidationError,
    values: Mapping[str, object],
    origins: Mapping[str, Origin],
) -> str:
    """One line: each wrong field, its value, where it came from, and what is wrong."""
    problems = []
    for error in exc.errors():
        reason = str(error["msg"]).removeprefix("Value error, ")
        field = str(error["loc"][0]) if error["loc"] else None
        if field is None:  # a rule across fields (e.g. no API key off loopback)
            problems.append(reason)
            continue
        secret = "SecretStr" in str(role.model_fields[field].annotation)
        shown = "'…'" if secret else repr(values.get(field))  # never echo a secret
        problems.append(f"invalid setting {field} = {shown} (from {origins.get(field, 'default')}): {reason}")
    return "; ".join(problems)
