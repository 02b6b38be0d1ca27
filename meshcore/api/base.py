"""The two kinds of wire model: answers (lenient) and requests (strict).

An answer ignores fields it doesn't know, so a newer controld can add some without breaking an
older ``meshctl`` or dashboard; a request refuses them (a typo must not pass silently). Both are
immutable.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

__all__ = ["JSON_OBJECT", "Answer", "JsonObject", "Request", "request_body"]

#: A JSON object whose inside this module doesn't type (a resource document, an explanation).
JsonObject = dict[str, Any]
#: Validates that an answer is a JSON object.
JSON_OBJECT: TypeAdapter[JsonObject] = TypeAdapter(JsonObject)


class Answer(BaseModel):
    """An immutable answer model; unknown fields are ignored (newer servers may add some)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Request(BaseModel):
    """An immutable request model; unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def request_body(model: type[Request], **fields: Any) -> JsonObject:
    """The JSON body of a ``model`` request with the ``fields`` given (``None``: not given).

    Only given fields are sent, so a controld that lacks a newer optional field still takes
    the others. The values are not checked here: controld checks them and answers 422 with a
    problem per field, the one error path for bad input.
    """
    given = {name: value for name, value in fields.items() if value is not None}
    unknown = given.keys() - model.model_fields.keys()
    if unknown:  # a programming error, not bad input
        raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    return model.model_construct(**given).model_dump(mode="json", exclude_unset=True)
