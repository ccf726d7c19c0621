"""Issue 32's edge findings on a real process: what a client sends bounds what it costs.

Chunk storms and ``Transfer-Encoding`` other than ``chunked`` are refused by the
connection layer (``app/connections.py``); bytes after an early answer are bounded; an
encoded ``/`` in a path, a version not in canonical form, an ``OPTIONS`` on a
``:predict`` route and a long echoed field get clear answers; bodies held at once are
bounded by ``CATDOG_BODY_BYTES_BUDGET`` through the one gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.core.errors import MOST_ECHO
from servicekit import Server, uvicorn_server
from tests.app.helpers import HTTP_TIMEOUT, good_image, upload

ANSWER = 20.0


@pytest.fixture(scope="module")
def edge(tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("edge") / "server.log"
    with uvicorn_server(tiny_model_base, log, body_bytes_budget=300_000) as server:
        yield server


async def exchange(server: Server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one answer (status, headers, body) and whether it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


async def test_transfer_encoding_other_than_chunked_is_refused(edge: Server) -> None:
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    status, headers, body = await exchange(edge, request)
    assert status == 400 and headers["connection"] == "close"
    assert "Transfer-Encoding" in json.loads(body)["detail"]


async def test_a_body_of_tiny_chunks_is_cut_off_early(edge: Server) -> None:
    head = b"POST /nothing-here HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, headers, body = await exchange(edge, head + b"1\r\na\r\n" * 5000)
    assert status in (400, 404)  # 404 may come first; then the storm closes it
    if status == 400:
        assert "chunks" in json.loads(body)["detail"]
    async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
        response = await client.post("/predict", files=upload(good_image()))
    assert response.status_code == 200, response.text


async def test_an_encoded_slash_in_the_path_is_refused(edge: Server) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
        response = await client.get("/v1/models/catdog%2Fversions%2F1")
    assert response.status_code == 400
    assert "%2F" in response.json()["error"]


async def test_versions_are_canonical(edge: Server) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
        assert (await client.get("/v1/models/catdog/versions/1")).status_code == 200
        response = await client.get("/v1/models/catdog/versions/01")
    assert response.status_code == 404
    assert "leading zeros" in response.json()["error"]


async def test_options_on_predict_names_post(edge: Server) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
        for path in ("/v1/models/catdog:predict", "/v1/models/catdog/versions/1:classify"):
            response = await client.options(path)
            assert response.status_code == 405, path
            assert "POST" in response.headers["allow"], path


async def test_echoed_input_is_cut(edge: Server) -> None:
    name = "s" * 100_000
    body = {"signature_name": name, "instances": [{"b64": "AAAA"}]}
    async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
        response = await client.post("/v1/models/catdog:predict", json=body)
    assert response.status_code == 400
    answer = response.json()
    assert len(answer["error"]) <= MOST_ECHO and len(answer["detail"]) <= MOST_ECHO
    assert len(response.content) < 4 * MOST_ECHO


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"instances": []}', "instances is empty"),
        (b'{"instances": [[[[' + b"9" * 401 + b"]]]]}", "too large for a pixel"),
        (b'{"instances": [{"b64": "not base64!"}]}', "padded with ="),
    ],
    ids=["empty", "401 digits", "base64"],
)
async def test_odd_tensors_get_a_400_in_our_words(edge: Server, body: bytes, words: str) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
        response = await client.post("/v1/models/catdog:predict", content=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


@contextlib.asynccontextmanager
async def holding_most_of_the_budget(server: Server) -> AsyncIterator[None]:
    """A ``/predict`` that declares 250 kB of the 300 kB budget and sends only its start:
    held by the gate while the block runs, its body still to come."""
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 250000\r\n\r\n--b\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        yield
    finally:
        writer.close()


async def test_bodies_held_at_once_are_bounded(edge: Server) -> None:
    """A large body is held while another arrives slowly: past the budget, 503."""
    async with (
        holding_most_of_the_budget(edge),
        httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client,
    ):
        response = await client.post("/predict", files=upload(b"x" * 100_000))
        assert response.status_code == 503, response.text
        assert "bytes" in response.json()["detail"]
        assert response.headers["retry-after"]
    async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
        for _ in range(50):
            response = await client.post("/predict", files=upload(good_image()))
            if response.status_code == 200:
                break
            await asyncio.sleep(0.2)
    assert response.status_code == 200, response.text


async def chunked_upload(server: Server, pieces: int, wait: asyncio.Event | None = None) -> int:
    """A ``/predict`` upload sent as 16 KB chunks, without Content-Length (after ``wait``,
    if given, its first chunk only); its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for piece in range(pieces):
            data = (part if piece == 0 else b"") + b"x" * 0x4000
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            if wait is not None and piece == 0:
                await wait.wait()
        writer.write(b"9\r\n\r\n--b--\r\n\r\n0\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER)
        return int(head.split()[1])
    except (ConnectionError, asyncio.IncompleteReadError):
        return 0  # closed after an early answer, before its status line was read
    finally:
        writer.close()


async def test_a_chunked_body_holds_only_what_has_arrived(edge: Server) -> None:
    """A chunked upload trickling in holds its bytes so far, not its route's limit
    (10 MiB, past the 300 kB budget): a normal upload beside it is admitted."""
    done = asyncio.Event()
    trickling = asyncio.ensure_future(chunked_upload(edge, 2, wait=done))
    await asyncio.sleep(0.5)
    try:
        async with httpx.AsyncClient(base_url=edge.url, timeout=HTTP_TIMEOUT) as client:
            response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 200, response.text
    finally:
        done.set()
    assert await trickling == 415  # 32 kB of "x": not an image


async def test_a_chunked_body_past_the_budget_gets_503(edge: Server) -> None:
    """With 250 kB of the 300 kB budget held, a chunked upload is refused once its bytes
    so far pass the budget; the service then serves again."""
    async with holding_most_of_the_budget(edge):
        assert await chunked_upload(edge, 8) == 503  # 128 kB


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/models/catdog:predict", b""),
        ("/v2/models/catdog/infer", b""),
        ("/v2/models/catdog/infer", b"Inference-Header-Content-Length: 100000000\r\n"),
    ],
    ids=["tfserving", "oip", "oip binary"],
)
async def test_json_declared_past_its_limit_is_refused_unread(
    edge: Server, path: str, extra: bytes
) -> None:
    """A JSON body (or OIP JSON header) whose declared length passes
    CATDOG_MAX_JSON_BYTES gets its 413 before a byte of it is sent."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    request = head.encode() + extra + b"Content-Length: 200000000\r\n\r\n"
    status, _, body = await exchange(edge, request)
    assert status == 413
    answer = json.loads(body)
    assert "(CATDOG_MAX_JSON_BYTES)" in answer.get("error", answer.get("detail", ""))


def chunked_photo(trailer: bytes = b"", extension: bytes = b"") -> bytes:
    """A chunked ``/predict`` of a real photo, its multipart head sent as a chunk with
    ``extension`` and ``trailer`` after its last chunk."""
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
    data = good_image() + b"\r\n--b--\r\n"
    return (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        + b"%x%s\r\n%s\r\n" % (len(part), extension, part)
        + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(data), data, trailer)
    )


@pytest.mark.parametrize("where", ["trailer", "chunk extension"])
async def test_chunk_lines_and_trailers_are_bounded(edge: Server, where: str) -> None:
    """What a chunked body carries besides its data is bounded like headers: 400 and
    closed once 32 KiB (the header bound) and a little more have come, not after 1 MB."""
    request = chunked_photo(b"X-Trailer: ", b"") if where == "trailer" else chunked_photo()
    if where == "chunk extension":  # an endless extension on the size line of a chunk
        request = request[: request.index(b"\r\n\r\n") + 4] + b"40;e="
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    sent = 0
    try:
        writer.write(request[:-2] if where == "trailer" else request)  # the trailer goes on
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        while not answer.done() and sent < 1_000_000:
            writer.write(b"x" * 8192)
            sent += 8192
            await writer.drain()
            await asyncio.sleep(0.01)
        head = await asyncio.wait_for(answer, ANSWER)
        body = await reader.read()
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 400") and b"connection: close" in head.lower()
    assert "trailers" in json.loads(body)["detail"]
    assert sent < 200_000, sent


async def test_a_chunked_body_with_a_small_trailer_is_served(edge: Server) -> None:
    status, _, body = await exchange(edge, chunked_photo(b"X-Checksum: abc\r\n", b";e=1"))
    assert status == 200, body
