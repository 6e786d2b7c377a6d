"""Multipart form bodies (audio, images): the `model` and `n` fields, read with a real parser.

The body is parsed by python-multipart's streaming parser over the bytes already
read; its callbacks give each part's data as offsets into those bytes, so the model
can be spliced in place when MODEL_MAPPER renames it. Whatever two parsers could read
differently is refused with 400: a missing, repeated or odd boundary parameter, two
`model` fields, a part with two names or an RFC 2231 `name*`, a boundary line that this parser took
for data, a body cut short. `n` (images asked for) counts for the reservation: the
largest of the form's `n` fields, so a second one can only raise the estimate.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from .errors import ApiError

# RFC 2046 boundary characters: 1-70 of them, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_PARAM = re.compile(r'[\s;]*;\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;"]*)\s*')
_ESCAPED = re.compile(r"\\(.)")
_COUNT = re.compile(rb"\s*0*([0-9]{1,9})\s*")
_COUNT_MAX = 64  # bytes of a counted field's value
COUNTED = ("n", "best_of")  # fields whose value multiplies the answers (images) asked for


class Form(NamedTuple):
    model: tuple[bytes, int, int] | None  # its value and (start, end) in the body; None if absent
    copies: int  # the largest counted field (`n`); 0 when there is none


def _bad(what: str) -> ApiError:
    return ApiError(400, "invalid_multipart", f"multipart body refused: {what}")


def _params(text: str) -> list[tuple[str, str]]:
    """`; name=value` parameters after a header's first token (names lower-cased, quoted
    strings unquoted); anything else there is refused rather than guessed at."""
    semi = text.find(";")
    if semi < 0:
        return []
    rest, out, pos = text[semi:], [], 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            if rest[pos:].strip(" \t;"):
                raise _bad(f"cannot read the header parameters {text[:80]!r}")
            break
        value = m.group(2)
        value = _ESCAPED.sub(r"\1", value[1:-1]) if value.startswith('"') else value.strip()
        out.append((m.group(1).lower(), value))
        pos = m.end()
    return out


def boundary(content_type: str) -> bytes:
    """The one `boundary` of a multipart Content-Type."""
    found = [v for n, v in _params(content_type) if n == "boundary"]
    if len(found) != 1:
        raise _bad("the Content-Type must carry exactly one boundary parameter")
    if not _BOUNDARY.fullmatch(found[0]):
        raise _bad("the boundary must be 1-70 characters of RFC 2046's set")
    return found[0].encode("ascii")


class _Reader:
    """Collects each part's Content-Disposition name and the spans of its data."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.parts = 0
        self.models: list[list] = []  # spans of each `model` part's data
        self.copies = 0
        self.ended = False
        self._field = self._value = b""
        self._disposition: bytes | None = None
        self._spans: list = []
        self._name: str | None = None
        self._text = b""  # a counted field's value (small: only those are kept)

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self.parts += 1
        self._disposition, self._spans, self._name, self._text = None, [], None, b""

    def _header_field(self, data, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.strip().lower() == b"content-disposition":
            if self._disposition is not None:
                raise _bad("a part has two Content-Disposition headers")
            self._disposition = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        text = (self._disposition or b"").decode("latin-1")
        params = _params(text)
        if any(n == "name*" for n, _ in params):
            raise _bad("RFC 2231 names (name*=) are not accepted")
        names = [v for n, v in params if n == "name"]
        if len(names) > 1:
            raise _bad("a part has two names")
        self._name = names[0] if names else None

    def _data(self, data, start: int, end: int) -> None:
        # Offsets count only when they point into the body itself (not a parser buffer).
        self._spans.append((start, end) if data is self.body else None)
        if self._name in COUNTED:
            self._text += bytes(data[start:end])
            if len(self._text) > _COUNT_MAX:
                raise _bad(f"the {self._name!r} field must be a number")

    def _part_end(self) -> None:
        if self._name == "model":
            self.models.append(self._spans)
        elif self._name in COUNTED:
            # What is not a plain number the upstream refuses; it counts as one image here.
            m = _COUNT.fullmatch(self._text)
            self.copies = max(self.copies, int(m.group(1)) if m else 1)

    def _end(self) -> None:
        self.ended = True


def read(body: bytes, boundary_: bytes) -> Form:
    """The form's `model` (value and place in `body`) and the images it asks for."""
    reader = _Reader(body)
    parser = MultipartParser(boundary_, reader.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise _bad("it is not well-formed multipart/form-data") from None
    if not reader.ended:
        raise _bad("it ends before the closing boundary")
    # Every CRLF--boundary is a delimiter to some parser: one this parser read as data
    # (or found after the end) could split the form differently upstream.
    lines = body.count(b"\r\n--" + boundary_) + body.startswith(b"--" + boundary_)
    if lines != reader.parts + 1:
        raise _bad("a boundary line appears inside a part or after the end")
    if len(reader.models) > 1:
        raise _bad("it has more than one 'model' field")
    if not reader.models or not reader.models[0]:
        return Form(None, reader.copies)
    spans = reader.models[0]
    start, end = spans[0] or (0, -1), spans[-1] or (0, -1)
    contiguous = all(s and t and s[1] == t[0] for s, t in zip(spans, spans[1:], strict=False))
    if None in spans or not contiguous:
        raise _bad("the 'model' field must be a plain text value")
    value = body[start[0] : end[1]]
    if _CONTROL.search(value):
        raise _bad("the 'model' field must be a plain text value")
    return Form((value, start[0], end[1]), reader.copies)
