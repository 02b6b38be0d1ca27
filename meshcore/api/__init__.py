"""controld's HTTP API wire models, shared by controld, meshd, ``meshctl`` and the dashboard.

Pure pydantic (no trio, hypercorn or textual), like :mod:`meshcore.model`, so the asyncio
dashboard can import it. A change to the API is a change here.
"""
