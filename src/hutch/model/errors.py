"""The one error hierarchy. Every refusal says why; `api/errors.py` maps these to HTTP."""


class HutchError(Exception):
    """Base class: `message` is shown to the user as is, so make it say what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(HutchError):
    """The request is malformed or asks for something impossible (400/422)."""


class NotFound(HutchError):
    """No such object, or not one the caller may see (404)."""


class Conflict(HutchError):
    """The object exists but is in the wrong state for this request (409)."""


class QuotaExceeded(HutchError):
    """The project's quota does not allow this (403/429)."""


class InsufficientStorage(HutchError):
    """A node's disk is full, or would be taken below its free-space floor (507)."""


class NoCapacity(HutchError):
    """No node can take this (503)."""


class Unsupported(HutchError):
    """This driver, node or build cannot do that at all (501)."""


class Unavailable(HutchError):
    """Something hutch depends on failed or is missing on this host (503)."""


class Unauthenticated(HutchError):
    """No valid credentials: missing, unknown, expired or revoked token (401)."""


class TooManyRequests(HutchError):
    """Over a limit on what one caller may hold at once, such as open streams per token (429)."""


class Forbidden(HutchError):
    """Valid credentials whose role does not allow this, in the caller's own project (403).
    Another project's objects are NotFound instead: their existence is not revealed."""
