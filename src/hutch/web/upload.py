"""A file a browser uploads (multipart/form-data), read as it arrives.

The form's small fields come first (browsers send parts in the page's order, and the file
input is last), so they, the CSRF value among them, are known before a byte of the file is
read; the file's bytes then go on as an async iterator, never held whole here: the service that
takes them spools them and bounds them (size, quota, free disk), as it does the API's uploads.
"""

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from hutch.model.errors import Invalid

MAX_FIELD = 4096  # bytes of one field before the file
MAX_FIELDS = 16


@dataclass(frozen=True, slots=True)
class Upload:
    fields: list[tuple[str, str]]  # the parts before the file, in order
    filename: str
    chunks: AsyncIterator[bytes]  # the file's bytes, as they arrive; Invalid if cut short

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]


class _Parts:
    """python-multipart's callbacks: fields collected, the file's data queued."""

    def __init__(self, file_field: str) -> None:
        self.file_field = file_field
        self.fields: list[tuple[str, str]] = []
        self.filename: str | None = None  # set once the file part's headers are in
        self.data: deque[bytes] = deque()
        self.file_done = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._name = ""
        self._in_file = False
        self._buffer = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }  # fmt: skip

    def _begin(self) -> None:
        self._headers, self._buffer = {}, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self.filename is not None:
            raise Invalid("send one file, after the form's other fields")
        if b"filename" in options and self._name == self.file_field:
            self._in_file = True
            self.filename = options[b"filename"].decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.data.append(bytes(data[start:end]))
            return
        self._buffer += data[start:end]
        if len(self._buffer) > MAX_FIELD:
            raise Invalid(f"form field {self._name!r} is longer than {MAX_FIELD} bytes")

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file, self.file_done = False, True
            return
        if len(self.fields) >= MAX_FIELDS:
            raise Invalid(f"a form of more than {MAX_FIELDS} fields before its file")
        self.fields.append((self._name, self._buffer.decode("utf-8", "replace")))


def _write(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.write(chunk)
    except MultipartParseError as e:
        raise Invalid(f"the form's body is not multipart/form-data: {e}") from None


async def upload(request: Request, file_field: str = "file") -> Upload:
    """The fields before the file `file_field`, and the file's bytes to come. Invalid when the
    body is not a form with that file."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise Invalid("send the form as multipart/form-data, with its file")
    parts = _Parts(file_field)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())  # type: ignore[arg-type]
    stream = request.stream()
    async for chunk in stream:
        _write(parser, chunk)
        if parts.filename is not None:
            break
    if parts.filename is None:
        raise Invalid(f"the form has no file {file_field!r}: choose one")

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            while parts.data:
                yield parts.data.popleft()
            if parts.file_done:
                return
            chunk = await anext(stream, b"")
            if not chunk:
                raise Invalid("the upload ended before its file did")
            _write(parser, chunk)

    return Upload(parts.fields, parts.filename, chunks())
