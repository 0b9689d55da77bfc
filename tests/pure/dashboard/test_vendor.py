"""The dashboard's vendored charting library ships with the package and nothing else
is served from its folder."""

from __future__ import annotations

from corral import dashboard


def test_the_page_loads_the_vendored_library_from_the_listener():
    page = dashboard.page().decode()
    assert '<script src="/dashboard/vendor/uPlot.iife.min.js"></script>' in page
    assert "https://" not in page.split("<script>")[0]  # nothing from the internet


def test_vendored_files_are_served_with_their_types():
    js = dashboard.vendor("uPlot.iife.min.js")
    css = dashboard.vendor("uPlot.min.css")
    assert js is not None and js[1] == "text/javascript" and b"uPlot" in js[0]
    assert css is not None and css[1] == "text/css"


def test_only_js_and_css_of_the_vendor_folder():
    for name in ("uPlot.LICENSE", "README.md", "../index.html", "..", ".js", "nope.js", "a/b.js"):
        assert dashboard.vendor(name) is None, name
