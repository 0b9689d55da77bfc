"""API keys and the tenants they name: ``--api-key-file``.

Two formats, told apart by the file's name (``.toml``) or its first line that is
not blank or a comment (``[`` opens TOML):

- one accepted key per line (``#`` comments), as before: every key belongs to the
  ``default`` tenant;
- a TOML keys file, one ``[[tenant]]`` table per key (docs/tenants.md)::

      [[tenant]]
      name = "chat"                 # in metrics and logs; never the key
      key = "sk-chat-..."           # or key_sha256 = "<hex of sha256(key)>"
      class = "interactive"         # batch | interactive | high (default interactive)
      max_class = "high"            # highest X-Corral-Priority it may ask (default: class)
      max_concurrent = 8            # in flight at once; more wait (default: no limit)
      weight = 2                    # share in --queue fair (default 1)
      max_buffered = 100            # waiting at once; more get 429 (default: weight share)

Several tables may share a name (one tenant, several keys) if they agree on its
settings; one key may not name two tenants. Keys are compared in constant time; a
stored hash is compared with the hash of the key given.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.core.queueing import DEFAULT_TENANT, Tenant, parse_priority


class KeysError(ValueError):
    """A keys file that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One accepted key (or its sha256, lower-case hex) and its tenant."""

    tenant: Tenant
    key: str | None = field(default=None, repr=False)
    sha256: str | None = field(default=None, repr=False)


_FIELDS = {
    "name",
    "key",
    "key_sha256",
    "class",
    "max_class",
    "max_concurrent",
    "weight",
    "max_buffered",
}


def parse_keys(text: str, *, toml: bool | None = None) -> list[KeyEntry]:
    """The entries of a keys file's text. ``toml`` None: guess from the first line.

    Raises:
        KeysError: invalid TOML, an unknown field, a bad value, a table with no key, a
            file with no key at all.
    """
    if toml is None:
        first = next((ln.strip() for ln in text.splitlines() if _meaningful(ln)), "")
        toml = first.startswith("[")
    if not toml:
        lines = [ln.strip() for ln in text.splitlines() if _meaningful(ln)]
        entries = [KeyEntry(Tenant(), key=line) for line in lines]
        if not entries:
            raise KeysError(_NO_KEY)
        return entries
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeysError(f"not valid TOML: {exc}") from None
    unknown = set(data) - {"tenant"}
    if unknown:
        raise KeysError(f"unknown top-level keys {sorted(unknown)}; use [[tenant]] tables")
    tables = data.get("tenant", [])
    if not isinstance(tables, list):
        raise KeysError("'tenant' must be an array of tables: [[tenant]]")
    entries = [_entry(i, table) for i, table in enumerate(tables, 1)]
    if not entries:
        raise KeysError(_NO_KEY)
    _check_names(entries)
    Keys(entries)  # one key, one tenant
    return entries


_NO_KEY = (
    "names no key (a keys file whose secret failed to mount reads as empty, and alone "
    "it would leave the inference listener open to anyone); leave --api-key-file out "
    "for none"
)


def read_keys(path: Path) -> list[KeyEntry]:
    """Read a keys file. Raises :class:`KeysError` (also when it cannot be read)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeysError(f"cannot read {path}: {exc}") from None
    try:
        return parse_keys(text, toml=True if path.suffix == ".toml" else None)
    except KeysError as exc:
        raise KeysError(f"{path}: {exc}") from None


def _meaningful(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _entry(number: int, table: Any) -> KeyEntry:
    where = f"[[tenant]] #{number}"
    if not isinstance(table, dict):
        raise KeysError(f"{where} is not a table")
    unknown = set(table) - _FIELDS
    if unknown:
        raise KeysError(f"{where}: unknown fields {sorted(unknown)}")
    key, digest = table.get("key"), table.get("key_sha256")
    if (key is None) == (digest is None):
        raise KeysError(f"{where}: give exactly one of key and key_sha256")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise KeysError(f"{where}: key must be a non-empty string")
    if digest is not None:
        if not isinstance(digest, str) or len(digest) != 64:
            raise KeysError(f"{where}: key_sha256 must be 64 hex digits")
        try:
            bytes.fromhex(digest)
        except ValueError:
            raise KeysError(f"{where}: key_sha256 must be 64 hex digits") from None
    try:
        cls = parse_priority(table.get("class", "interactive"))
        cap = table.get("max_class")
        tenant = Tenant(
            name=str(table.get("name") or ""),
            priority=cls,
            max_priority=parse_priority(cap) if cap is not None else None,
            max_concurrent=_int_or_none(table.get("max_concurrent")),
            weight=float(table.get("weight", 1.0)),
            max_buffered=_int_or_none(table.get("max_buffered")),
        )
    except (ValueError, TypeError) as exc:
        raise KeysError(f"{where}: {exc}") from None
    return KeyEntry(
        tenant,
        key=key.strip() if key is not None else None,
        sha256=digest.lower() if digest is not None else None,
    )


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise TypeError(f"{value!r} is not a whole number")
    return value


def _check_names(entries: list[KeyEntry]) -> None:
    seen: dict[str, Tenant] = {}
    for entry in entries:
        prior = seen.setdefault(entry.tenant.name, entry.tenant)
        if prior != entry.tenant:
            raise KeysError(f"tenant {entry.tenant.name!r} is given different settings")


class Keys:
    """Which key names which tenant. Empty: no key is required (everyone is
    ``default``).

    Raises:
        KeysError: one key (given as itself or by its sha256) names two tenants: which
            one a request runs as would depend on the order of the tables.
    """

    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        self._plain: list[tuple[bytes, Tenant]] = []
        self._hashed: list[tuple[bytes, Tenant]] = []
        owners: dict[bytes, str] = {}  # sha256 of each key -> its tenant's name
        for entry in entries:
            if entry.key is not None:
                key = entry.key.encode()
                self._plain.append((key, entry.tenant))
                digest = hashlib.sha256(key).digest()
            elif entry.sha256 is not None:
                digest = bytes.fromhex(entry.sha256)
                self._hashed.append((digest, entry.tenant))
            else:
                continue
            owner = owners.setdefault(digest, entry.tenant.name)
            if owner != entry.tenant.name:
                raise KeysError(
                    f"one key names two tenants, {owner!r} and {entry.tenant.name!r}: give "
                    "each tenant keys of its own"
                )
        self.tenants: dict[str, Tenant] = {}
        for _, tenant in (*self._plain, *self._hashed):
            self.tenants.setdefault(tenant.name, tenant)
        self.named = frozenset(self.tenants)
        """The tenants some key names (``default`` only when a key is its: a plain
        ``--api-key`` line); :attr:`tenants` also has ``default`` for keyless use."""
        self.tenants.setdefault(DEFAULT_TENANT, Tenant())

    def __bool__(self) -> bool:
        return bool(self._plain or self._hashed)

    def match(self, given: bytes) -> Tenant | None:
        """The tenant of this key, or None if it is not accepted. Every stored key is
        compared (constant time each), so timing says nothing of which matched."""
        found = None
        for key, tenant in self._plain:
            if hmac.compare_digest(given, key) and found is None:
                found = tenant
        if self._hashed:
            digest = hashlib.sha256(given).digest()
            for stored, tenant in self._hashed:
                if hmac.compare_digest(digest, stored) and found is None:
                    found = tenant
        return found

    def __repr__(self) -> str:
        return f"<Keys {len(self._plain) + len(self._hashed)} keys, tenants {sorted(self.tenants)}>"
