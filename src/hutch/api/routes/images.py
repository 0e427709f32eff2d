"""/v1/images: the project's images, and the operator's catalogue, in the nodes' stores."""

from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import StreamingResponse

from hutch.api.deps import Ctl, Scoped
from hutch.http.problems import PROBLEMS
from hutch.wire.common import Page
from hutch.wire.images import ImagePull, ImageRemoved, ImageView, PullEvent

router = APIRouter(prefix="/v1/images", tags=["images"], responses=PROBLEMS)


@router.get("")
async def list_images(ctl: Ctl, s: Scoped) -> Page[ImageView]:
    return Page(items=await ctl.images.catalog(s.caller, s.project))


@router.post(
    "/pull",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {"schema": PullEvent.model_json_schema()}}}
    },
)
async def pull_image(ctl: Ctl, s: Scoped, body: ImagePull) -> StreamingResponse:
    events = ctl.images.pull(s.caller, s.project, body.ref, body.public)
    first = await anext(events)  # errors before the stream starts become problem+json

    async def stream() -> AsyncIterator[bytes]:
        yield _line(first)
        async for event in events:
            yield _line(event)

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def import_image(
    ctl: Ctl,
    s: Scoped,
    request: Request,
    name: Annotated[list[str] | None, Query()] = None,
    public: bool = False,
) -> list[ImageView]:
    """A `docker save` or OCI archive, or a root filesystem's tar (plain or gzip/bzip2/xz, with
    none of an image archive's files: packed as a one-layer image running its shell, as
    `docker import` does; device nodes and FIFOs left out; absolute names and `..` refused)."""
    return await ctl.images.import_(s.caller, s.project, request.stream(), name or [], public)


@router.get("/{ref:path}")
async def get_image(ctl: Ctl, s: Scoped, ref: str) -> ImageView:
    return await ctl.images.get(s.caller, s.project, unquote(ref))


@router.delete("/{ref:path}")
async def delete_image(
    ctl: Ctl, s: Scoped, ref: str, public: bool = False, force: bool = False
) -> ImageRemoved:
    """Remove the project's name `ref`; with `public`, the catalogue's (system tokens).
    409 while machines of the project that are not destroyed would lose the image, unless
    `force` (they are named in the answer)."""
    image, users = await ctl.images.delete(s.caller, s.project, unquote(ref), public, force)
    return ImageRemoved(id=image.id, machines=[m.name for m in users])


def _line(event: PullEvent) -> bytes:
    return event.model_dump_json().encode() + b"\n"
