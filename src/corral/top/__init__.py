"""``corral top``: a terminal dashboard of a balancer's fleet.

:mod:`corral.top.model` decides what to show (pure); :mod:`corral.top.app` is the
Textual app that reads the balancer's management listener and shows it.
"""

from corral.top.app import TopApp, main

__all__ = ["TopApp", "main"]
