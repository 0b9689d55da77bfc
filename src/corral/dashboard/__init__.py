"""The web dashboard: one static page (no build step, no assets from the internet)
served by the management listener; it reads the same API operators use."""

from importlib import resources


def page() -> bytes:
    return resources.files(__package__).joinpath("static/index.html").read_bytes()
