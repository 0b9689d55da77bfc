"""The web dashboard: one static page (no build step, no assets from the internet)
served by the management listener; it reads the same API operators use. Its charting
library is vendored under ``static/vendor/`` (see the README there for versions and
licenses) and served from the same listener."""

from importlib import resources

_TYPES = {".js": "text/javascript", ".css": "text/css"}


def page() -> bytes:
    return resources.files(__package__).joinpath("static/index.html").read_bytes()


def vendor(name: str) -> tuple[bytes, str] | None:
    """A vendored file and its content type, by file name; None if there is no such
    file (only ``.js`` and ``.css`` files of ``static/vendor/`` are served)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _TYPES or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = resources.files(__package__).joinpath("static/vendor", name)
    if not path.is_file():
        return None
    return path.read_bytes(), _TYPES[suffix]
