"""Base model and small value types."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Frozen(BaseModel):
    """Immutable model that rejects unknown fields (typos in YAML must not pass silently)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SocketAddr(Frozen):
    """A TCP address. YAML may write it as ``"host:port"`` or ``{host: ..., port: ...}``."""

    host: str = Field(min_length=1)
    port: int = Field(ge=0, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _parse_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected 'host:port', got {value!r}")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            return {"host": host, "port": int(port)}
        return value

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
