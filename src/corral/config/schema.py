"""One declaration per setting: the schema behind flags, environment and config files.

Theory of operation
-------------------
A :class:`Setting` says everything about one setting once: its name (the key in a
config file and the attribute of the parsed command line), how its text is parsed and
checked, its default (and, when the default is borrowed, where from), its help, its
flag (``--name-with-dashes``) and its environment variable (``<PREFIX><NAME>``). A
:class:`Schema` is one command's table of settings. Everything else is generated:

- the argparse flags (:meth:`Schema.add_arguments`), whose help shows the default and
  the environment variable;
- the effective values with where each came from (:meth:`Schema.resolve`), which the
  commands turn into their typed config objects (``BalancerConfig``, ...);
- a config file and its loader (:mod:`corral.config.files`);
- later, Kubernetes manifests: iterate ``schema.settings`` for names, env names,
  defaults and help.

Precedence, highest first: the command line, the environment, the config file, the
default. The command line is parsed by argparse with no defaults, so what is in its
namespace was given there; the other layers are filled in by :meth:`Schema.resolve`.

No I/O and no asyncio here: resolving takes the environment and the file's values as
plain mappings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from corral.addr import Addr, AddressError

T = TypeVar("T")
Parse = Callable[[str], Any]
"""Text to a typed value; raises :class:`argparse.ArgumentTypeError` with the reason."""


class ConfigError(ValueError):
    """A bad value in the environment or a config file (the message names which)."""


# ------------------------------------------------------------------ parsers
def addr(text: str) -> Addr:
    """``HOST:PORT`` to an :class:`~corral.addr.Addr`."""
    try:
        return Addr.parse(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def secret_text(text: str) -> str:
    """A secret (a token, a key): any text but an empty one, or one of spaces only,
    which would turn off the check it guards without a word (a secret that failed to
    mount, an unset variable in a compose file); for none, leave the setting out."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty: an empty secret would turn its check off; leave the setting out for none"
        )
    return text


def number(minimum: float = 0.0, *, inclusive: bool = False) -> Callable[[str], float]:
    """A finite number above ``minimum`` (at least it, with ``inclusive``). inf and nan
    are refused: an endless timeout or rate ran forever or failed later with a
    traceback."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < minimum or (value == minimum and not inclusive):
            if minimum == 0 and inclusive:
                raise argparse.ArgumentTypeError(f"{text!r} cannot be negative")
            word = "at least" if inclusive else "greater than"
            raise argparse.ArgumentTypeError(f"{text!r} must be {word} {minimum:g}")
        return value

    parse.__name__ = "number"
    return parse


def positive(kind: Callable[[str], Any]) -> Parse:
    """A number of ``kind`` (int or float) greater than 0; a float is finite."""
    if kind is float:
        parse_float = number(0.0)
        parse_float.__name__ = "float"
        return parse_float

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    parse.__name__ = kind.__name__
    return parse


non_negative_float = number(0.0, inclusive=True)
"""A finite number, 0 or more (seconds, mostly)."""


def non_negative_int(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be negative")
    return value


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range 1-65535")
    return value


def share(text: str) -> float:
    """A share: a number from 0 to 1 (a value outside is refused, not clamped)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 1")
    return value


def ip_list(text: str) -> tuple[str, ...]:
    """``127.0.0.1,10.0.0.0/8`` or ``*``: IP addresses and networks; empty for none."""
    import ipaddress

    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            if "/" in entry:
                ipaddress.ip_network(entry, strict=False)
            else:
                ipaddress.ip_address(entry)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{entry!r} is not an IP address, a network (10.0.0.0/8) or *"
            ) from None
    return entries


def path(text: str) -> Path:
    return Path(text)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def switch(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_TRUE + _FALSE[:-1])}")


# ------------------------------------------------------------------ a setting
@dataclass(frozen=True)
class Setting:
    """One setting of one command, declared once.

    Args:
        name: snake_case; the config file's key and the parsed attribute. The flag
            is ``--`` and the name with dashes.
        help: One line for ``--help`` and the config file's comment.
        parse: Text to value (command line, environment, file strings); raises
            :class:`argparse.ArgumentTypeError` with the reason.
        default: The typed default (``None``: unset, or derived at run time; then
            ``default_text`` says what happens).
        default_text: Shown instead of the default, for one derived at run time.
        default_from: Where a borrowed default comes from (e.g. llama.cpp).
        choices: The allowed values, if a fixed set (of strings).
        repeatable: The flag may be given several times; the value is a tuple; the
            environment takes a comma-separated list, a file a list.
        switch: A flag without a value (``store_true``); the environment takes
            ``1/true/yes/on`` or ``0/false/no/off``.
        negatable: A switch that also has a ``--no-`` flag (as llama-server's
            ``--cors-credentials, --no-cors-credentials``).
        secret: Never shown in ``--help`` or printed configurations; an empty one is
            refused (:func:`secret_text`, unless ``parse`` says otherwise).
        env: The environment variable; empty: the schema's prefix and the name.
        only_with: ``(setting, values)``: this setting means something only when that
            other setting of the same command has one of these values (``--prefix-max-wait``
            only with ``--routing prefix``); given otherwise (and not at its default),
            :meth:`Schema.resolve` refuses it rather than ignore it silently.
    """

    name: str
    help: str
    parse: Parse = str
    default: Any = None
    default_text: str | None = None
    default_from: str | None = None
    choices: tuple[str, ...] = ()
    repeatable: bool = False
    switch: bool = False
    negatable: bool = False
    secret: bool = False
    env: str = ""
    only_with: tuple[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        if self.secret and self.parse is str:
            object.__setattr__(self, "parse", secret_text)
        if self.repeatable and self.default is None:
            object.__setattr__(self, "default", ())
        if self.switch and self.default is None:
            object.__setattr__(self, "default", False)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_text(self, text: str) -> Any:
        """One value from text (a whole list for a repeatable setting: comma-separated).

        Raises:
            argparse.ArgumentTypeError: The text is not a valid value.
        """
        if self.switch:
            return switch(text)
        if self.repeatable:
            parts = [part.strip() for part in text.split(",")]
            if self.secret:  # an empty one is refused (secret_text), not dropped
                return tuple(self._one(part) for part in parts)
            return tuple(self._one(part) for part in parts if part)
        return self._one(text)

    def _one(self, text: str) -> Any:
        if self.choices and text not in self.choices:
            options = ", ".join(repr(c) for c in self.choices)
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {options})")
        return self.parse(text)

    def parse_file_value(self, value: Any) -> Any:
        """One value as a config file holds it (TOML string, number, bool or list).

        Raises:
            argparse.ArgumentTypeError: Not a valid value of this setting.
        """
        if self.switch:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return switch(value)
            raise argparse.ArgumentTypeError(f"{_as_toml(value)} is not true or false")
        if self.repeatable:
            items = value if isinstance(value, list) else [value]
            return tuple(self._one(self._scalar_text(item)) for item in items)
        if isinstance(value, list) and isinstance(self.default, tuple):
            # a list-valued setting given as one comma-separated text on the command
            # line (--forwarded-allow-ips a,b) is a TOML list in a file
            return self._one(",".join(self._scalar_text(item) for item in value))
        return self._one(self._scalar_text(value))

    @staticmethod
    def _scalar_text(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise argparse.ArgumentTypeError(f"{_as_toml(value)} is not a single value")
        return str(value)

    def shown_default(self, value: Any = None) -> str | None:
        """The default as ``--help`` shows it (``None``: nothing to show)."""
        if self.secret:
            return None
        value = self.default if value is None else value
        if value is None or value is False or value == () or value == []:  # not 0 (== False)
            return self.default_text
        return format_value(value)


def _as_toml(value: Any) -> str:
    """A value read from a TOML file near how the file spells it (``true``, ``["a"]``),
    for errors about it: Python's ``True`` and ``['a']`` are not what the user wrote.
    Booleans, numbers, strings and arrays are spelt as TOML does; a table as JSON's
    ``{"a": 1}``, close to TOML's ``{a = 1}``."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:  # a date or time: TOML writes it as Python prints it
        return str(value)


def format_value(value: Any) -> str:
    """A value as a person writes it on the command line (``30`` not ``30.0``)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(format_value(item) for item in value)
    return str(value)


# ------------------------------------------------------------------ a schema
@dataclass(frozen=True)
class Resolved:
    """The effective values of a schema's settings and where each came from."""

    values: dict[str, Any]
    """Setting name to typed value, for every setting of the schema."""
    sources: dict[str, str] = field(default_factory=dict)
    """Setting name to ``"command line"``, ``"env NAME"``, ``"file PATH"`` or
    ``"default"``."""


@dataclass(frozen=True)
class Schema:
    """One command's settings, in the order ``--help`` shows them.

    Args:
        command: The subcommand (``balancer``, ``agent``, ...).
        env_prefix: Prepended to a setting's upper-cased name for its environment
            variable unless the setting names its own.
        settings: The table.
        owns_prefix: No other command or tool reads variables under ``env_prefix``
            (``CORRAL_SIM_``, not the shared ``CORRAL_``), so one this schema does not
            know is a mistake (a typo, a flag without a variable), refused by
            :meth:`resolve` rather than ignored.
    """

    command: str
    env_prefix: str
    settings: tuple[Setting, ...]
    owns_prefix: bool = False

    def __post_init__(self) -> None:
        filled = tuple(
            s if s.env else replace(s, env=self.env_prefix + s.name.upper()) for s in self.settings
        )
        object.__setattr__(self, "settings", filled)
        names = [s.name for s in filled]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.command}: a setting is declared twice: {names}")
        for s in filled:
            if s.only_with is not None:
                other, allowed = s.only_with
                if other not in names or not set(allowed) <= set(self[other].choices):
                    raise ValueError(f"{self.command}: {s.name}'s only_with {s.only_with}")

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings)

    def __getitem__(self, name: str) -> Setting:
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise KeyError(f"{self.command} has no setting {name!r}")

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.settings)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.settings]

    def default(self, name: str) -> Any:
        """The declared default of a setting (for the typed config objects)."""
        return self[name].default

    # ------------------------------------------------------------ generate
    def add_arguments(
        self, parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
    ) -> None:
        """Add one flag per setting. The flags have no defaults (see :meth:`resolve`);
        the help shows the default, from ``environ`` when set there, and the env name."""
        for s in self.settings:
            add_argument(parser, s, environ)

    def resolve(
        self,
        given: Mapping[str, Any],
        environ: Mapping[str, str],
        file_values: Mapping[str, Any] | None = None,
        file_name: str = "the config file",
    ) -> Resolved:
        """Every setting's value: from ``given`` (the command line, already parsed),
        else ``environ``, else ``file_values`` (as a config file holds them), else
        its default.

        Raises:
            ConfigError: A value in the environment or the file is invalid, the file
                names a setting this command does not have, or (``owns_prefix``) the
                environment does.
        """
        file_values = file_values or {}
        if self.owns_prefix:
            known = {s.env for s in self.settings}
            stray = sorted(k for k in environ if k.startswith(self.env_prefix) and k not in known)
            if stray:
                ours = sorted(e for e in known if e.startswith(self.env_prefix))
                raise ConfigError(
                    f"{', '.join(stray)}: corral {self.command} has no such setting (it "
                    f"reads {', '.join(ours)}; see --help)"
                )
        unknown = sorted(set(file_values) - set(self.names))
        if unknown:
            raise ConfigError(
                f"{file_name}: {self.command} has no setting {', '.join(map(repr, unknown))} "
                f"(it has: {', '.join(self.names)})"
            )
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for s in self.settings:
            if s.name in given:
                value = given[s.name]
                values[s.name] = tuple(value) if s.repeatable else value
                sources[s.name] = "command line"
            elif environ.get(s.env) is not None:
                try:
                    values[s.name] = s.parse_text(environ[s.env])
                except argparse.ArgumentTypeError as exc:
                    raise ConfigError(f"{s.env}: {exc}") from None
                sources[s.name] = f"env {s.env}"
            elif s.name in file_values:
                try:
                    values[s.name] = s.parse_file_value(file_values[s.name])
                except argparse.ArgumentTypeError as exc:
                    raise ConfigError(f"{file_name}: {s.name}: {exc}") from None
                sources[s.name] = f"file {file_name}"
            else:
                values[s.name] = s.default
                sources[s.name] = "default"
        self._check_only_with(values, sources)
        return Resolved(values, sources)

    def _check_only_with(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        """Refuse a setting given where it has no effect. A value equal to its default is
        let by: a config file written by ``--print-config`` names every setting."""
        for s in self.settings:
            if s.only_with is None or values[s.name] == s.default:
                continue
            other, allowed = s.only_with
            if values[other] in allowed:
                continue
            flag = self[other].flag
            wanted = " or ".join(f"{flag} {v}" for v in allowed)
            raise ConfigError(
                f"{s.flag} ({sources[s.name]}) applies only with {wanted}; {flag} is "
                f"{format_value(values[other])!r} ({sources[other]}): set {wanted}, or "
                f"leave {s.flag} out"
            )

    def defaults(self) -> Resolved:
        """Every setting at its default."""
        return self.resolve({}, {})


def default(schema: Schema, name: str) -> Any:
    """The declared default of a setting, for a typed config object's field.

    Settings' defaults are immutable (numbers, strings, frozen addresses, tuples), so
    ruff is told this call is safe in a dataclass default (see ``pyproject.toml``).

    Raises:
        KeyError: ``schema`` has no such setting.
    """
    return schema[name].default


def add_argument(
    parser: argparse.ArgumentParser | Any, s: Setting, environ: Mapping[str, str] | None = None
) -> None:
    """Add the flag of one setting to ``parser`` (or an argument group) with no default
    (see :meth:`Schema.resolve`); its help shows the default, the value in ``environ``
    when set there, and the environment variable."""
    environ = {} if environ is None else environ
    kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": s.name}
    if s.switch:
        kw["action"] = argparse.BooleanOptionalAction if s.negatable else "store_true"
    else:
        kw["type"] = s.parse
        if s.choices:
            kw["choices"] = s.choices
        if s.repeatable:
            kw["action"] = "append"
    shown = s.shown_default()
    if s.default_from and not s.secret:
        shown = f"{shown}; {s.default_from}" if shown else s.default_from
    if not s.secret and environ.get(s.env):
        shown = environ[s.env]
    suffix = f" (default: {shown})" if shown else ""
    parser.add_argument(s.flag, help=f"{s.help}{suffix} [env {s.env}]", **kw)


def build(cls: type[T], values: Mapping[str, Any], **extra: Any) -> T:
    """A typed config object (a dataclass) from resolved values: every field named as
    a setting takes that setting's value; ``extra`` sets the rest (renamed or derived
    fields) and wins over ``values``.

    Raises:
        TypeError: ``extra`` names a field ``cls`` does not have.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {name: value for name, value in values.items() if name in names}
    return cls(**{**given, **extra})


__all__ = [
    "ConfigError",
    "Parse",
    "Resolved",
    "Schema",
    "Setting",
    "add_argument",
    "addr",
    "build",
    "default",
    "format_value",
    "ip_list",
    "non_negative_int",
    "path",
    "port",
    "positive",
    "share",
    "switch",
]
