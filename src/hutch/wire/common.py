"""Shared pieces of the wire format."""

from typing import Annotated, Any, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

T = TypeVar("T")

# The integers the store holds: counts and sizes are INTEGER columns (32 bits on PostgreSQL),
# event ids BIGINT. Anything larger is refused as the request's fault (422, naming the field),
# not left to fail in the database (a 500).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]  # a quota, a capacity in cpus or MiB
Position = Annotated[int, Field(ge=0, le=INT64_MAX)]  # an event id


def untext_in(value: Any, where: str = "") -> str | None:
    """Why a string (or a key) in a parsed JSON value is no text hutch keeps, saying where; or
    None. No name, label, command or value of hutch's may hold NUL (PostgreSQL cannot store it,
    and a process's argv and environment end at it), nor half of a surrogate pair (JSON's
    "\\ud800" escape parses to one: it is no UTF-8, so no database stores it, and no reader
    could decode the row)."""
    if isinstance(value, str):
        return None if (why := _untext(value)) is None else f"{where or 'the value'}: {why}"
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and (why := _untext(key)) is not None:
                return f"a key of {where}: {why}" if where else f"a field name: {why}"
            if (found := untext_in(item, inner)) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := untext_in(item, f"{where}.{i}" if where else str(i))) is not None:
                return found
    return None


def _untext(text: str) -> str | None:
    if "\0" in text:
        return "NUL characters (\\x00) are not allowed"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return "unpaired surrogates (\\ud800-\\udfff) are not text"
    return None


class Request(BaseModel):
    # Unknown fields are refused (no mass assignment), and so are values of another type:
    # `false` is no vCPU count, "3" no machine count. Enum fields say `strict=False`: the
    # body is validated as parsed JSON, where an enum can only be its value. NaN and Infinity
    # (which Python's JSON parser accepts) are no numbers here, and every string is text.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        if (why := untext_in(data)) is not None:
            raise PydanticCustomError("not_text", "{why}", {"why": why})
        return data


class View(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @classmethod
    def mirroring(cls, obj: object, **given: Any) -> Self:
        """The view of `obj`, a model whose attributes this view mirrors: the fields `given`,
        and every other field copied from `obj`'s attribute of the same name. A field `obj`
        lacks raises AttributeError (a converter states it) instead of taking its default."""
        copied = {name: getattr(obj, name) for name in cls.model_fields.keys() - given.keys()}
        return cls(**given, **copied)


class Page(View, Generic[T]):
    items: list[T]
    next: str | None = None  # pass as `cursor` for the next page; None on the last


class Problem(View):
    """RFC 9457 problem details: every error the API returns."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    # The API parameter the refusal asks for ("project"), when it asks for one: the detail
    # says it the API's way (`?project=NAME`), and a client can say it in its own words.
    param: str = ""
