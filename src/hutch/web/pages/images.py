"""Images: the project's and the catalogue's, a pull with its progress as it happens, removal.

An import is an upload of an archive the CLI prepares (it packs directories and OCI layouts
first), so the page says how to do it with `hutch image import` rather than offering a form.
"""

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from hutch.controller import Controller
from hutch.model.errors import HutchError, NoCapacity, Unavailable
from hutch.services.policy import Action
from hutch.web.render import html, page, pages, see_other
from hutch.web.visitor import Acting, Visiting
from hutch.wire.images import ImageView, PullEvent

router = pages()
TICK = 0.25  # seconds between progress lines of a pull (the last of each layer always shows)
PROGRESS = "<!-- progress -->"  # where image_pull.html's events go


def _ctl(request: Request) -> Controller:
    ctl: Controller = request.app.state.controller
    return ctl


@router.get("/ui/images")
async def images(request: Request, v: Visiting) -> HTMLResponse:
    found: list[ImageView] = []
    unavailable = ""
    try:
        found = await _ctl(request).images.catalog(v.principal, v.project)
    except (NoCapacity, Unavailable) as e:  # the page still says how to pull and import
        unavailable = e.message
    return page(request, v, "images.html", images=found, unavailable=unavailable,
                writable=v.may(Action.IMAGE_WRITE))  # fmt: skip


@router.post("/ui/images/pull")
async def pull(
    request: Request,
    v: Acting,
    ref: Annotated[str, Form(min_length=1, max_length=512)],
    public: Annotated[bool, Form()] = False,
) -> Response:
    """The page streams: its top at once, then a line per progress step (the browser shows
    them as they come, without JavaScript), then the image or the error."""
    events = _ctl(request).images.pull(v.principal, v.project, ref.strip(), public)
    first = await anext(events)  # a refusal before the pull starts is a 4xx page
    top, bottom = html("image_pull.html", request=request, v=v, ref=ref).split(PROGRESS)

    async def body() -> AsyncIterator[str]:
        yield top
        async for part in _progress(first, events):
            yield part
        yield bottom

    return StreamingResponse(body(), media_type="text/html; charset=utf-8",
                             headers={"Cache-Control": "no-store"})  # fmt: skip


async def _progress(first: PullEvent, rest: AsyncIterator[PullEvent]) -> AsyncIterator[str]:
    last, shown = 0.0, ("", "")
    event: PullEvent | None = first
    try:
        while event is not None:
            step = (event.layer, event.status)
            if event.image or event.error or step != shown or time.monotonic() - last >= TICK:
                yield html("image_pull_event.html", e=event)
                last, shown = time.monotonic(), step
            event = await anext(rest, None)
    except HutchError as e:  # the node failed mid-pull: the page ends with why
        yield html("alert.html", message=e.message)


@router.post("/ui/images/remove")
async def remove(
    request: Request,
    v: Acting,
    ref: Annotated[str, Form(min_length=1, max_length=512)],
    public: Annotated[bool, Form()] = False,
    force: Annotated[bool, Form()] = False,
) -> Response:
    await _ctl(request).images.delete(v.principal, v.project, ref, public, force)
    return see_other("/ui/images")
