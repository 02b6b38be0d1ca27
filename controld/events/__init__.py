"""controld's journal of control-plane events (served on ``GET /v1/events``).

* :mod:`controld.events.ring`: :class:`EventRing`, the bounded numbered ring (pure), and the
  :class:`EventSink` protocol the parts record through.
* :mod:`controld.events.journal`: :class:`EventJournal`, the ring plus long-poll waiting.
* :mod:`controld.events.endpoints`: :class:`EndpointWatch`, endpoint health changes seen in
  the discovery view.
"""

from controld.events.endpoints import EndpointWatch
from controld.events.journal import EventJournal
from controld.events.ring import EventRing, EventSink, NullSink, record_changes

__all__ = ["EndpointWatch", "EventJournal", "EventRing", "EventSink", "NullSink", "record_changes"]
