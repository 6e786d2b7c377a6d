"""Multipart bodies: the model is read with a real parser; what parsers could read
differently is refused with 400, never guessed at and never a 500."""

from __future__ import annotations

import pytest

from tests.fakes import add_user, ready, set_config
from tests.test_edge import raw

pytest_plugins = ["tests.fakes_fixtures"]

PATH = "/v1/audio/transcriptions"


def form(boundary: str, *fields: tuple[str, bytes], tail: bool = True) -> bytes:
    out = b""
    for name, value in fields:
        disposition = f'form-data; name="{name}"'
        if name == "file":
            disposition += '; filename="a.mp3"\r\nContent-Type: audio/mpeg'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if tail else b"")


async def post(api, key, body: bytes, ctype: str):
    return await api.post(PATH, data=body, key=key, headers={"Content-Type": ctype})


@pytest.fixture
async def setup(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api, AllowModels="whisper-1")
    return api, key, upstream


async def test_a_second_model_field_is_refused(setup):
    api, key, upstream = setup
    body = form("b1", ("model", b"whisper-1"), ("file", b"abc"), ("model", b"gpt-4o-transcribe"))
    r = await post(api, key, body, "multipart/form-data; boundary=b1")
    assert (r.status, r.error_code) == (400, "invalid_multipart")
    assert upstream.seen == []


async def test_the_boundary_parameter_is_the_one_named_boundary(setup):
    api, key, upstream = setup
    # Inside the file, a fake form under "evil" names an allowed model; the real form,
    # under "real", names one this key may not use.
    decoy = form("evil", ("model", b"whisper-1"))
    body = form("real", ("file", decoy), ("model", b"gpt-4o-transcribe"))
    r = await post(api, key, body, "multipart/form-data; xboundary=evil; boundary=real")
    assert (r.status, r.error_code) == (403, "model_not_allowed")
    for ctype in (
        "multipart/form-data; boundary=real; boundary=evil",
        'multipart/form-data; boundary="real"; BOUNDARY=real',
        "multipart/form-data; xboundary=real",
        "multipart/form-data",
        "multipart/form-data; boundary=" + "x" * 71,
    ):
        r = await post(api, key, body, ctype)
        assert (r.status, r.error_code) == (400, "invalid_multipart"), ctype
    assert upstream.seen == []


async def test_a_non_latin1_boundary_is_400_not_500(setup):
    api, key, _ = setup
    body = form("b", ("model", b"whisper-1"))
    for boundary in ("☃".encode(), "é".encode("latin-1"), "é".encode()):
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        head += b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n"
        status, answer = await raw(api, head, body)
        assert status == 400, answer


async def test_odd_parts_are_refused(setup):
    api, key, _ = setup
    ctype = "multipart/form-data; boundary=b"
    cases = [
        form("b", ("model", b"whisper-1"), tail=False),  # cut before the closing boundary
        b"--b\r\nContent-Disposition: form-data; name=model; name=file\r\n\r\nx\r\n--b--\r\n",
        b"--b\r\nContent-Disposition: form-data; name*=utf-8''model\r\n\r\nx\r\n--b--\r\n",
        b"--b\r\nContent-Disposition: form-data; name=model\r\n"
        b"Content-Disposition: form-data; name=file\r\n\r\nwhisper-1\r\n--b--\r\n",
        b"not multipart at all",
        # boundary lines that a parser might take for data or for the end
        form("b", ("file", b"a\r\n--b--junk"), ("model", b"whisper-1")),
        form("b", ("file", b"a\r\n--bjunk"), ("model", b"whisper-1")),
        form("b", ("model", b"whisper-1")) + b"\r\n--b\r\nContent-Disposition: form-data;"
        b" name=model\r\n\r\ngpt-4o\r\n--b--\r\n",
        b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n--b\r\n"
        b"Content-Disposition: form-data; name=model\r\n\r\nwhisper-1\r\n--b--\r\n",
    ]
    for body in cases:
        r = await post(api, key, body, ctype)
        assert (r.status, r.error_code) == (400, "invalid_multipart"), body


async def test_the_mapped_model_is_spliced_in_place(setup):
    api, key, upstream = setup
    await set_config(api, MODEL_MAPPER="whisper-1=gpt-4o-mini-transcribe")
    audio = b"x--b --b--\n--b" + bytes(range(256)) * 8  # looks like delimiters, is none
    body = form("b", ("model", b"whisper-1"), ("file", audio), ("language", b"en"))
    r = await post(api, key, body, 'multipart/form-data; boundary="b"')
    assert r.status == 200, r.body
    assert upstream.last.form_model == "gpt-4o-mini-transcribe"
    assert upstream.last.body == body.replace(b"whisper-1", b"gpt-4o-mini-transcribe", 1)


async def test_an_overlong_n_field_is_refused(setup):
    api, key, upstream = setup
    body = form("b1", ("model", b"whisper-1"), ("file", b"abc"), ("n", b"0" * 100 + b"9"))
    r = await post(api, key, body, "multipart/form-data; boundary=b1")
    assert (r.status, r.error_code) == (400, "invalid_multipart")
    assert upstream.seen == []
