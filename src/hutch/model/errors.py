"""The one error hierarchy, and the one map from it to HTTP.

Every refusal says why. Each class carries the HTTP `status` and problem `title` it is answered
with: `http/problems.py` renders them, and whatever reads an answer back (the SDK, the node
agent's link to its controller, the controller's link to its nodes) finds the class with
`error_class`. No other table of statuses exists.
"""

from collections.abc import Mapping


class HutchError(Exception):
    """Base class: `message` is shown to the user as is, so make it say what to do.

    `param`, when set, names the API parameter the refusal asks for; the message then says it
    the API's way (`?project=NAME`), and another interface says it its own way instead (the
    CLI: `--project NAME`)."""

    status: int = 500  # class attributes; the SDK's errors also keep what the server answered
    title: str = "Internal error"

    def __init__(self, message: str, *, param: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def message_in(self, words: Mapping[str, str]) -> str:
        """The message in another interface's words: `words` says how it gives a parameter
        ({"project": "--project NAME"}), said in place of the API's `?project=NAME`."""
        said = words.get(self.param) if self.param else None
        return self.message.replace(f"?{self.param}=NAME", said) if said else self.message


class Invalid(HutchError):
    """The request is malformed or asks for something impossible (400; 413 and 422 too)."""

    status, title = 400, "Invalid request"


class Unauthenticated(HutchError):
    """No valid credentials: missing, unknown, expired or revoked token (401)."""

    status, title = 401, "Unauthenticated"


class Forbidden(HutchError):
    """Valid credentials whose role does not allow this, in the caller's own project (403).
    Another project's objects are NotFound instead: their existence is not revealed."""

    status, title = 403, "Forbidden"


class QuotaExceeded(HutchError):
    """The project's quota does not allow this (403, told from Forbidden by its title)."""

    status, title = 403, "Quota exceeded"


class NotFound(HutchError):
    """No such object, or not one the caller may see (404)."""

    status, title = 404, "Not found"


class Conflict(HutchError):
    """The object exists but is in the wrong state for this request (409)."""

    status, title = 409, "Conflict"


class TooManyRequests(HutchError):
    """Over a limit on what one caller may hold at once, such as open streams per token (429)."""

    status, title = 429, "Too many requests"


class Unsupported(HutchError):
    """This driver, node or build cannot do that at all (501)."""

    status, title = 501, "Not supported"


class Unavailable(HutchError):
    """Something hutch depends on failed or is missing on this host (503)."""

    status, title = 503, "Unavailable"


class NoCapacity(HutchError):
    """No node can take this (503, told from Unavailable by its title)."""

    status, title = 503, "No capacity"


class InsufficientStorage(HutchError):
    """A node's disk is full, or would be taken below its free-space floor (507)."""

    status, title = 507, "Insufficient storage"


# Every class above, each status's plain class first: an answer with that status and another
# title (Starlette's own 404, a proxy's 503) is that one.
CLASSES: tuple[type[HutchError], ...] = (
    Invalid, Unauthenticated, Forbidden, QuotaExceeded, NotFound, Conflict, TooManyRequests,
    Unsupported, Unavailable, NoCapacity, InsufficientStorage,
)  # fmt: skip
# Statuses that are Invalid too: a body too large, a body or parameters off the schema.
_ALSO_INVALID = (413, 422)


def error_class(status: int, title: str = "") -> type[HutchError] | None:
    """The class an answer's status and problem title stand for (QuotaExceeded is the 403
    titled "Quota exceeded"; any other 403 is Forbidden), or None for a status no class has."""
    if status in _ALSO_INVALID:
        return Invalid
    plain = None
    for cls in CLASSES:
        if cls.status == status:
            if cls.title == title:
                return cls
            plain = plain or cls
    return plain
