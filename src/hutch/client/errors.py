"""What the SDK raises: the controller's problem+json as hutch's own error classes.

Each class subclasses both `ApiError` (which carries the HTTP `status`, the problem's `title` and
its `detail`) and the matching class of `hutch.model.errors`, so code can catch either kind:

    try:
        client.machines.get("web")
    except hutch.client.NotFound as e:   # or hutch.model.errors.NotFound
        print(e.status, e.detail)        # 404 no machine 'web' in project default
"""

from typing import TYPE_CHECKING

from hutch.model import errors

if TYPE_CHECKING:
    from hutch.wire.machines import MachineView


class ApiError(errors.HutchError):
    """A request the controller refused, or could not be sent. `status` is the HTTP status
    (0 when no answer came), `detail` says what went wrong and what to do (also the message)."""

    def __init__(self, detail: str, status: int = 0, title: str = "", param: str = "") -> None:
        super().__init__(detail or title or f"the controller answered {status}", param=param)
        self.status = status
        self.title = title
        self.detail = detail


class Invalid(ApiError, errors.Invalid):
    """400, 413 or 422: the request is malformed, too large or asks for something impossible."""


class Unauthenticated(ApiError, errors.Unauthenticated):
    """401: no token, or an unknown, expired or revoked one."""


class Forbidden(ApiError, errors.Forbidden):
    """403: the token's role does not allow this."""


class QuotaExceeded(ApiError, errors.QuotaExceeded):
    """403 "Quota exceeded": the project's quota does not allow this."""


class NotFound(ApiError, errors.NotFound):
    """404: no such object in the project (another project's objects included)."""


class Conflict(ApiError, errors.Conflict):
    """409: the object is in the wrong state for this request."""


class TooManyRequests(ApiError, errors.TooManyRequests):
    """429: over a limit on what one caller holds at once (streams open with one token)."""


class Unsupported(ApiError, errors.Unsupported):
    """501: the controller or a node cannot do that at all."""


class InsufficientStorage(ApiError, errors.InsufficientStorage):
    """507: a node's disk is full, or would fall below its free-space floor."""


class NoCapacity(ApiError, errors.NoCapacity):
    """503 "No capacity": no node can take the machine (the detail gives reasons per node)."""


class Unavailable(ApiError, errors.Unavailable):
    """503, other 5xx, or no answer at all (status 0): the controller or a node is down."""


class NoConnection(Unavailable):
    """No answer at all (status 0): nothing listens at the controller's URL, or the connection
    could not be made."""


class PullFailed(ApiError):
    """An image pull that started but failed on a node (status 502): the detail says why."""


class WaitTimeout(errors.HutchError, TimeoutError):
    """The client-side timeout of a wait passed before the machine reached the state."""


class Unreachable(errors.HutchError):
    """The machine finished without reaching the state waited for, and stays finished until
    someone starts it again."""


class StartFailed(errors.HutchError):
    """`machines.run`: the machine was created but could not start (its image could not be
    pulled or unpacked, its command or working directory is not there...). The message says why;
    `machine` is the failed machine, left for `inspect` and `logs` until it is deleted."""

    def __init__(self, message: str, machine: "MachineView") -> None:
        super().__init__(message)
        self.machine = machine


# The SDK's class for each of `hutch.model.errors`'s (the one map: `model/errors.py`).
_CLASS: dict[type[errors.HutchError], type[ApiError]] = {
    base: cls for cls in ApiError.__subclasses__() for base in cls.__bases__ if base is not ApiError
}


def error_for(status: int, title: str, detail: str, param: str = "") -> ApiError:
    """The exception for a problem the controller answered (`http/problems.py` is its inverse)."""
    model = errors.error_class(status, title)
    fallback = Unavailable if status >= 500 else ApiError
    cls = _CLASS[model] if model is not None else fallback
    return cls(detail, status, title, param)
