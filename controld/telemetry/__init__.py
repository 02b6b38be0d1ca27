"""Telemetry in controld: the rolling window of the sidecars' reports, and taps.

* :mod:`controld.telemetry.window`: :class:`TelemetryWindow`, the bounded in-memory rolling
  window (pure, clock passed in) and the views the API serves.
* :mod:`controld.telemetry.taps`: :class:`TapHub`, the active taps and their event buffers.
"""

from controld.telemetry.taps import TapHub, UnknownTap
from controld.telemetry.window import TelemetryWindow, WindowLimits

__all__ = ["TapHub", "TelemetryWindow", "UnknownTap", "WindowLimits"]
