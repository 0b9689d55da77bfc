"""Configuration: one declaration per setting, rendered into flags, env and files.

:mod:`corral.config.schema` defines :class:`Setting` and :class:`Schema`;
:mod:`corral.config.tables` declares every command's settings;
:mod:`corral.config.files` renders them as a TOML config file and reads one back.
"""

from corral.config.schema import ConfigError, Resolved, Schema, Setting, default
from corral.config.tables import AGENT, BALANCER, COMMON, SCHEMAS, SIM, TOP, UP

__all__ = [
    "AGENT",
    "BALANCER",
    "COMMON",
    "SCHEMAS",
    "SIM",
    "TOP",
    "UP",
    "ConfigError",
    "Resolved",
    "Schema",
    "Setting",
    "default",
]
