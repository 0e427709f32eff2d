"""Shared pieces of the wire format."""

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
MAX_PAGE = 200  # items per page at most, whatever the client asks


class Request(BaseModel):
    # Unknown fields are refused (no mass assignment), and so are values of another type:
    # `false` is no vCPU count, "3" no machine count. Enum fields say `strict=False`: the
    # body is validated as parsed JSON, where an enum can only be its value.
    model_config = ConfigDict(extra="forbid", strict=True)


class View(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Page(View, Generic[T]):
    items: list[T]
    next: str | None = None  # pass as `cursor` for the next page; None on the last


class Problem(View):
    """RFC 9457 problem details: every error the API returns."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
