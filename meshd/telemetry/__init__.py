"""What the sidecar tells controld and the trace collector about its traffic.

* :mod:`meshd.telemetry.delta`: a telemetry report from the counters' deltas (pure).
* :mod:`meshd.telemetry.reporter`: the service posting a report about once a second.
* :mod:`meshd.telemetry.tap`: the tap sampler (filter, rate bound, bounded buffer).
* :mod:`meshd.telemetry.otlp`: spans and their OTLP/HTTP JSON encoding (pure).
* :mod:`meshd.telemetry.exporter`: the span recorder and the batching OTLP exporter.

Nothing here runs on the request path except :meth:`observe` of an active tap or of the span
recorder for a sampled trace; the request path checks one attribute otherwise.
"""
