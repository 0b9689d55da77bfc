"""Config files: a schema's settings rendered as TOML, and read back.

The file is flat: one key per setting, named as the setting (``inference_addr``,
``max_buffered_requests``), valued as TOML strings, numbers, booleans or lists of
strings for repeatable settings. ``corral balancer --print-config`` writes one with
every setting, its help, its environment variable and flag; ``--config FILE`` reads it.
A key that is not a setting of the command is an error, so a typo does not pass
silently. Secrets are left out of printed files unless asked for.

TOML, because Python reads it without a dependency (:mod:`tomllib`) and the values
here are all scalars or lists of them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.addr import Addr
from corral.config.schema import ConfigError, Resolved, Schema


def load(file: Path) -> dict[str, Any]:
    """The raw values of a config file (check and parse them with :meth:`Schema.resolve`).

    Raises:
        ConfigError: The file cannot be read or is not TOML (the message says where).
    """
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None


def render(schema: Schema, resolved: Resolved, *, show_secrets: bool = False) -> str:
    """``resolved`` as a TOML file for ``--config``: a commented block per setting.

    Unset settings and secrets (unless ``show_secrets``) are written as comments, so
    the file lists every setting and loads back to the same values.
    """
    lines = [
        f"# corral {schema.command} settings. Use with: corral {schema.command} --config FILE",
        "# Precedence: command line > environment > this file > default.",
    ]
    for s in schema:
        value = resolved.values.get(s.name, s.default)
        source = resolved.sources.get(s.name, "default")
        about = s.help
        if s.default_from:
            about += f" ({s.default_from})"
        lines += ["", f"# {about}", f"# flag {s.flag}, env {s.env}"]
        shown = s.shown_default()
        if shown is not None and not s.secret:
            lines.append(f"# default: {shown}")
        note = "" if source == "default" else f"  # from {source}"
        if value is None or (s.repeatable and not value):
            lines.append(f"# {s.name} =")
        elif s.secret and not show_secrets:
            lines.append(f"# {s.name} = (set; not shown){note}")
        else:
            lines.append(f"{s.name} = {toml_value(value)}{note}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A TOML literal for a setting's value.

    Raises:
        TypeError: The value is not a string, number, bool, address, path or list.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, str | Path | Addr):
        return _string(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


_ESCAPES: Mapping[str, str] = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


__all__ = ["load", "render", "toml_value"]
