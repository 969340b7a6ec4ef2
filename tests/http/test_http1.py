"""The lean shadow client (shadowproxy.http.pool): the parser on byte strings, and the pool
against raw loopback servers that send exactly the bytes a test chooses."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from shadowproxy.errors import ConnectError, ProtocolError, ResetError, TooLargeError
from shadowproxy.http.framing import body_codings, encode_headers, framing
from shadowproxy.http.grammar import MAX_CHUNK, MAX_HEADERS, MAX_LINE
from shadowproxy.http.pool import Pool
from shadowproxy.http.request import BadRequest, RequestParser
from shadowproxy.http.response import Head, ResponseParser
from tests.rawhttp import RawServer, canned, read_request
from tests.support import free_port


def parse(pieces: list[bytes], *, no_body: bool = False, eof: bool = False
          ) -> tuple[ResponseParser, bytes, bool]:
    """Feed ``pieces``; (parser, body bytes seen, done)."""
    body: list[bytes] = []
    p = ResponseParser(body.append, no_body=no_body)
    done = False
    for piece in pieces:
        done = p.feed(piece)
    if eof:
        p.eof()
        done = p.done
    return p, b"".join(body), done


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# ------------------------------------------------------------------ parser


@pytest.mark.parametrize("split", [False, True])
def test_content_length_body_and_raw_headers(split):
    data = (b"HTTP/1.1 201 Created Here\r\nX-B: 1\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 5\r\n\r\nhello")
    p, body, done = parse(bytewise(data) if split else [data])
    assert done and body == b"hello" and p.keep_alive and not p.extra
    assert p.head == (201, "Created Here", (("X-B", "1"), ("set-cookie", "a=1"),
                                            ("Set-Cookie", "b=2"), ("Content-Length", "5")))


@pytest.mark.parametrize("split", [False, True])
def test_chunked_body_with_extensions_and_trailers(split):
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n")
    p, body, done = parse(bytewise(data) if split else [data])
    assert done and body == b"hello" + b"x" * 26 and p.keep_alive


def test_chunked_not_done_before_the_trailer_section_ends():
    p, _, done = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"])
    assert not done
    with pytest.raises(ResetError):
        p.eof()


@pytest.mark.parametrize("bad", [b"zz\r\n", b"0x5\r\n", b"+5\r\n", b"5\r\nhelloXY"])
def test_bad_chunk_framing_is_a_protocol_error(bad):
    with pytest.raises(ProtocolError):
        parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + bad])


def test_close_delimited_body_ends_at_clean_eof_only():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    p, body, done = parse([head, b"abc", b"def"], eof=True)
    assert done and body == b"abcdef" and not p.keep_alive
    p, _, _ = parse([head, b"abc"])
    with pytest.raises(ResetError):
        p.eof(ConnectionResetError())
    assert not p.done


@pytest.mark.parametrize("status,no_body", [(204, False), (304, False), (200, True)])
def test_no_body_rules(status, no_body):
    p, body, done = parse([b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status],
                          no_body=no_body)
    assert done and body == b"" and p.head.status == status and p.keep_alive


def test_interim_responses_are_skipped():
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
            b"Link: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    p, body, done = parse([data])
    assert done and body == b"ok" and p.head.status == 200
    assert p.head.headers == (("Content-Length", "2"),)


def test_http10_and_connection_close_are_not_reused():
    p, _, done = parse([b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"])
    assert done and not p.keep_alive
    p, _, done = parse([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"])
    assert done and not p.keep_alive
    p, _, done = parse([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxEXTRA"])
    assert done and p.extra


@pytest.mark.parametrize("data", [
    b"\x00\x17\x03garbage",                               # detected before any CRLF
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
])
def test_garbage_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        parse([data])


def test_repeated_identical_content_length_is_accepted():
    _, body, done = parse([b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"])
    assert done and body == b"ok"


def test_head_limits():
    many = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS))
    p, _, done = parse([b"HTTP/1.1 204 No Content\r\n" + many + b"\r\n"])
    assert done and len(p.head.headers) == MAX_HEADERS
    with pytest.raises(ProtocolError):
        parse([b"HTTP/1.1 204 No Content\r\n" + many + b"X-One-More: v\r\n\r\n"])
    big = b"X-Csp: " + b"a" * (MAX_LINE - 7)
    p, _, done = parse([b"HTTP/1.1 200 OK\r\n" + big + b"\r\nContent-Length: 0\r\n\r\n"])
    assert done and len(p.head.headers[0][1]) == MAX_LINE - 7
    with pytest.raises(ProtocolError):   # before the head ends: no unbounded buffering
        parse([b"HTTP/1.1 200 OK\r\nX-Csp: " + b"a" * MAX_LINE])


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xa0chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\x85\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,\x0cchunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2,\xa02\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
])
@pytest.mark.parametrize("split", [False, True])
def test_only_sp_and_htab_are_optional_whitespace_and_nul_is_refused(data, split):
    """``str.strip()`` removes NBSP, NEL, FF...: ``\\xa0chunked`` would be chunked.
    RFC 9110 §5.6.3 allows SP and HTAB only; §5.5: a NUL is never passed on."""
    with pytest.raises(ProtocolError):
        parse(bytewise(data) if split else [data])


def test_sp_and_htab_around_codings_and_lengths_are_optional():
    _, body, done = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \tchunked \r\n\r\n"
                           b"2\r\nok\r\n0\r\n\r\n"])
    assert done and body == b"ok"
    _, body, done = parse([b"HTTP/1.1 200 OK\r\nContent-Length: 2,\t2 \r\n\r\nok"])
    assert done and body == b"ok"
    assert body_codings("gzip \t, chunked") == "gzip"
    assert framing([("Connection", "\xa0close")], False)[2] is False
    assert framing([("Connection", "\tclose ")], False)[2] is True


@pytest.mark.parametrize("ctl", [b"\x01", b"\x0b", b"\x0c", b"\x1f", b"\x7f"])
@pytest.mark.parametrize("where", ["value", "reason", "interim"])
@pytest.mark.parametrize("split", [False, True])
def test_control_characters_in_a_response_head_are_refused(ctl, where, split):
    """RFC 9110 §5.5: field values are VCHAR, obs-text, SP and HTAB (the request parser
    refuses the rest too); the reason phrase the same (RFC 9112 §4)."""
    final = b"HTTP/1.1 200 OK\r\nX-A: a" + ctl + b"b\r\nContent-Length: 0\r\n\r\n"
    data = {"value": final,
            "reason": b"HTTP/1.1 200 O" + ctl + b"K\r\nContent-Length: 0\r\n\r\n",
            "interim": b"HTTP/1.1 103 Early Hints\r\nLink: <" + ctl + b">\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}[where]
    with pytest.raises(ProtocolError, match="control character"):
        parse(bytewise(data) if split else [data])


def test_obs_text_and_htab_in_a_response_head_are_kept():
    data = b"HTTP/1.1 200 \xc9t\xe9\r\nX-A: caf\xe9\tau lait\r\nContent-Length: 0\r\n\r\n"
    p, _, done = parse([data])
    assert done and p.head.reason == "\xc9t\xe9"
    assert p.head.headers[0] == ("X-A", "caf\xe9\tau lait")


BODILESS = [(b"HTTP/1.1 204 No Content\r\n", False), (b"HTTP/1.1 304 Not Modified\r\n", False),
            (b"HTTP/1.1 200 OK\r\n", True)]


@pytest.mark.parametrize("status,no_body", BODILESS)
@pytest.mark.parametrize("fields", [
    b"Content-Length: -1\r\n", b"Content-Length: x\r\n", b"Content-Length: 1, 2\r\n",
    b"Content-Length: 1\r\nContent-Length: 2\r\n", b"Transfer-Encoding: \"chunked\"\r\n",
    b"Transfer-Encoding: gzip\r\nContent-Length: 2\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 2 2\r\n",
])
def test_framing_fields_of_a_bodiless_response_are_checked(status, no_body, fields):
    """204, 304 and an answer to HEAD frame no body, but the proxy passes their fields on
    to the client: an invalid Content-Length or Transfer-Encoding is a protocol error
    there too, as h11 and llhttp have it."""
    with pytest.raises(ProtocolError):
        parse([status + fields + b"\r\n"], no_body=no_body)


@pytest.mark.parametrize("status,no_body", BODILESS)
def test_valid_framing_fields_of_a_bodiless_response_pass(status, no_body):
    for fields in (b"Content-Length: 10\r\n", b"Content-Length: 10, 10\r\n",
                   b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
                   b"Transfer-Encoding: chunked\r\nContent-Length: 10\r\n"):
        _, body, done = parse([status + fields + b"\r\n"], no_body=no_body)
        assert done and body == b"", fields


@pytest.mark.parametrize("fields", [b"Content-Length: -1\r\n", b"Transfer-Encoding: ,\r\n",
                                    b"Content-Length: 1\r\nContent-Length: 2\r\n"])
@pytest.mark.parametrize("status", [100, 103])
def test_framing_fields_of_an_interim_response_are_checked(fields, status):
    data = (b"HTTP/1.1 %d X\r\n" % status + fields +
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with pytest.raises(ProtocolError):
        parse([data])


@pytest.mark.parametrize("te", [b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity",
                                b"chunked\r\nTransfer-Encoding: chunked"])
@pytest.mark.parametrize("split", [False, True])
def test_content_length_beside_a_coding_other_than_chunked_is_an_error(te, split):
    """RFC 9112 §6.3 (3): a response with Transfer-Encoding and Content-Length ought to be
    handled as an error; it was read to the close (gzip) or de-chunked. Only a lone
    chunked beside a valid length is read (chunked, never reused), as h11 does."""
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te + b"\r\nContent-Length: 2\r\n\r\nok"
    with pytest.raises(ProtocolError, match="Content-Length with a Transfer-Encoding"):
        parse(bytewise(data) if split else [data])
    p, body, done = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n"
                           b"Content-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n"])
    assert done and body == b"ok" and not p.keep_alive
    with pytest.raises(ProtocolError):     # not a Content-Length at all
        parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2 2"
               b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"])
    # a valid list of one length (RFC 9110 §8.6) beside a lone chunked: read chunked
    p, body, done = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Length: 2, 2\r\n\r\n2\r\nok\r\n0\r\n\r\n"])
    assert done and body == b"ok" and not p.keep_alive


@pytest.mark.parametrize("target", [b"/\xa0", b"/caf\xe9", b"/\x80", b"/\xff?a=b",
                                    b"http://a/\xe9"])
@pytest.mark.parametrize("split", [False, True])
def test_a_request_target_above_0x7f_is_a_400(target, split):
    """RFC 9112 §3.2: the request-target is a URI, ASCII; h11 and llhttp refuse it."""
    data = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    p = RequestParser(lambda b: None)
    with pytest.raises(BadRequest, match="bad request line") as exc:
        for piece in (bytewise(data) if split else [data]):
            p.feed(piece)
    assert exc.value.status == 400
    p = RequestParser(lambda b: None)
    assert p.feed(b"GET /caf%C3%A9?q=%E9~ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert p.head.target == "/caf%C3%A9?q=%E9~"


def test_bare_lf_head_is_refused_before_it_ends():
    """An answer with LF line ends never has its CRLF CRLF: refused as soon as a bare LF
    is seen, not after the read timeout."""
    p = ResponseParser(lambda b: None)
    p.feed(b"HTTP/1.1 200 OK\r")
    with pytest.raises(ProtocolError):
        p.feed(b"\nContent-Length: 2\n")
    with pytest.raises(ProtocolError):
        parse([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"])
    _, body, done = parse(bytewise(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert done and body == b"ok"


@pytest.mark.parametrize("split", [False, True])
def test_chunk_size_is_bounded(split):
    """16 hex digits at most, and below 2^60 (a Content-Length's 18 digits): 2^64 - 1
    would take the end marker for data."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = (lambda d: bytewise(d)) if split else (lambda d: [d])
    p, _, done = parse(pieces(head + b"%X\r\nabc" % MAX_CHUNK))
    assert not done and p._remaining == MAX_CHUNK - 3
    _, _, done = parse(pieces(head + b"000000000000000A\r\n0123456789\r\n0\r\n\r\n"))
    assert done
    for size in (b"%X" % (MAX_CHUNK + 1), b"FFFFFFFFFFFFFFFF", b"1" + b"0" * 16):
        with pytest.raises(ProtocolError):
            parse(pieces(head + size + b"\r\nabc\r\n0\r\n\r\n"))


def test_upgrade_is_ignored_in_http10():
    """RFC 9110 §7.8: a server ignores Upgrade in an HTTP/1.0 request."""
    assert framing([("Upgrade", "websocket")], False)[4] == "websocket"
    assert framing([("Upgrade", "websocket")], True)[4] is None


def test_reset_before_any_byte_is_marked():
    p = ResponseParser(lambda b: None)
    with pytest.raises(ResetError) as err:
        p.eof()
    assert err.value.before_response
    p.feed(b"HTTP/1.1 200")
    with pytest.raises(ResetError) as err:
        p.eof()
    assert not err.value.before_response


def test_encode_headers():
    assert encode_headers("GET", [("X-A", "1"), ("content-length", "9")], 0) == b"X-A: 1\r\n\r\n"
    assert encode_headers("POST", [("X-A", "1")], 0) == b"X-A: 1\r\nContent-Length: 0\r\n\r\n"
    assert encode_headers("PUT", [], 3) == b"Content-Length: 3\r\n\r\n"
    with pytest.raises(ValueError):
        encode_headers("GET", [("X-A", "1\r\nX-Injected: 1")], 0)


def test_pool_host_header_and_prefix():
    assert Pool("http://127.0.0.1:80", 1).host_header == "127.0.0.1"
    assert Pool("https://[::1]:8443/base/", 1).host_header == "[::1]:8443"
    assert Pool("https://[::1]:8443/base/", 1).prefix == "/base"


# ------------------------------------------------------------------ pool, on the wire


async def _get(pool: Pool, target: str = "/x?", method: str = "GET"
               ) -> tuple[Head, bytes]:
    body: list[bytes] = []
    head = await pool.request(method, target, encode_headers(method, [("X-T", "1")], 0),
                              b"", body.append)
    return head, b"".join(body)


async def test_request_bytes_and_keep_alive_reuse():
    srv = await RawServer(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                 keep_open=True)).start()
    pool = Pool(srv.url + "/pre", 4)
    try:
        for _ in range(3):
            head, body = await _get(pool)
            assert head.status == 200 and body == b"ok"
        assert srv.connections == 1 and pool.idle == 1
        assert srv.log[0] == (b"GET /pre/x? HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-T: 1\r\n\r\n"
                              % srv.port)
    finally:
        await pool.close()
        await srv.stop()


async def test_close_delimited_and_connection_close_answers_are_not_reused():
    srv = await RawServer(canned(b"HTTP/1.1 200 OK\r\n\r\nuntil eof")).start()
    pool = Pool(srv.url, 4)
    try:
        for _ in range(2):
            _, body = await _get(pool)
            assert body == b"until eof"
        assert srv.connections == 2 and pool.idle == 0
    finally:
        await pool.close()
        await srv.stop()


async def test_chunked_answer_over_the_wire_is_reused():
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 1\r\n\r\n")
    srv = await RawServer(canned(answer, keep_open=True)).start()
    pool = Pool(srv.url, 4)
    try:
        for _ in range(2):
            head, body = await _get(pool)
            assert body == b"abcde" and ("Transfer-Encoding", "chunked") in head.headers
        assert srv.connections == 1
    finally:
        await pool.close()
        await srv.stop()


async def test_stale_keep_alive_is_retried_once_for_idempotent_methods():
    async def one_answer_per_connection(reader, writer, log):
        # keep-alive is announced, but the second request on a connection meets a
        # close (the server's idle timeout won the race): not one byte of an answer
        head, _ = await read_request(reader)
        log.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        head, _ = await read_request(reader)
        log.append(head)
        writer.transport.abort()
    srv = await RawServer(one_answer_per_connection).start()
    pool = Pool(srv.url, 4)
    try:
        await _get(pool)
        head, body = await _get(pool)     # reused, closed, sent again on a new one
        assert head.status == 200 and body == b"ok"
        assert srv.connections == 2 and len(srv.log) == 3
        with pytest.raises(ResetError):   # never replayed: not idempotent
            await _get(pool, method="POST")
        assert srv.connections == 2 and len(srv.log) == 4
    finally:
        await pool.close()
        await srv.stop()


async def test_errors_map_to_kinds():
    pool = Pool(f"http://127.0.0.1:{free_port()}", 2)
    with pytest.raises(ConnectError):
        await _get(pool)

    async def garbage(reader, writer, log):
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def short(reader, writer, log):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    for handler, err in ((garbage, ProtocolError), (short, ResetError)):
        srv = await RawServer(handler).start()
        pool = Pool(srv.url, 2)
        try:
            with pytest.raises(err):
                await asyncio.wait_for(_get(pool), 2)
            assert pool.idle == 0
        finally:
            await pool.close()
            await srv.stop()


async def test_cancelled_request_drops_its_connection():
    async def hang(reader, writer, log):
        await read_request(reader)
        await asyncio.sleep(5)
    srv = await RawServer(hang).start()
    pool = Pool(srv.url, 2)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await _get(pool)
        assert pool.idle == 0
    finally:
        await pool.close()
        await srv.stop()


async def test_start_times_out_or_is_cancelled_without_a_task():
    """Pool.start (the mirror's): ``done`` gets TimeoutError once ``timeout`` has passed
    and the connection is dropped; a cancelled call never calls ``done``; an answer
    comes to ``done`` with the body fed on the way."""
    async def hang(reader, writer, log):
        await read_request(reader)
        log.append(b"request")
        try:
            await reader.read()          # b"" once the client has dropped it
        except ConnectionError:
            pass
        log.append(b"dropped")
    srv = await RawServer(hang).start()
    pool = Pool(srv.url, 2)
    loop = asyncio.get_running_loop()
    try:
        got: list[object] = []
        t0 = loop.time()
        call = pool.start("GET", "/h", encode_headers("GET", [], 0), b"", got.append, 0.2,
                          lambda result, _arrived: got.append(result))
        while not got:
            await asyncio.sleep(0.01)
        assert isinstance(got[0], TimeoutError) and 0.15 < loop.time() - t0 < 2
        assert call.finished and pool.idle == 0
        for _ in range(100):
            if srv.log[-1:] == [b"dropped"]:
                break
            await asyncio.sleep(0.01)
        assert srv.log == [b"request", b"dropped"]

        got.clear()
        call = pool.start("GET", "/h", encode_headers("GET", [], 0), b"", got.append, 0.2,
                          lambda result, _arrived: got.append(result))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.4)
        assert got == [] and call.finished and pool.idle == 0
    finally:
        await pool.close()
        await srv.stop()

    ok = await RawServer(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                keep_open=True)).start()
    pool = Pool(ok.url, 2)
    try:
        body: list[bytes] = []
        done: asyncio.Future[object] = loop.create_future()
        pool.start("GET", "/", encode_headers("GET", [], 0), b"", body.append, 5,
                   lambda result, _arrived: done.set_result(result))
        head = await done
        assert isinstance(head, Head) and head.status == 200 and body == [b"ok"]
        assert pool.idle == 1          # kept for the next request
    finally:
        await pool.close()
        await ok.stop()


@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("size,count", [(1, 20_000), (8, 5_000)])
async def test_a_shadow_answer_of_many_small_chunks_is_whole(size, count, timed):
    """A shadow parses at most SHADOW_CHUNKS chunks a turn of the loop; the rest of a
    read waits for the next turn, and the answer still arrives whole, on a connection
    that can be reused."""
    piece = b"z" * size
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              + (b"%x\r\n%b\r\n" % (size, piece)) * count + b"0\r\n\r\n")
    srv = await RawServer(canned(answer, keep_open=True)).start()
    pool = Pool(srv.url, 4, max_answer=16 * 1024 * 1024, timed=timed)
    try:
        for _ in range(2):
            head, body = await _get(pool)
            assert head.status == 200 and body == piece * count
        assert srv.connections == 1          # the paused connection went back to the pool
    finally:
        await pool.close()
        await srv.stop()


@pytest.mark.parametrize("timed", [False, True])
async def test_a_shadow_answer_beyond_max_answer_is_too_large(timed):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000
    srv = await RawServer(canned(answer, keep_open=True)).start()
    pool = Pool(srv.url, 4, max_answer=100_000, timed=timed)
    try:
        with pytest.raises(TooLargeError):
            await _get(pool)
    finally:
        await pool.close()
        await srv.stop()


async def test_a_timed_answer_is_timed_from_the_request_written_to_its_bytes_arrived():
    """On a timed pool the answer's arrival is the kernel's stamp of its last bytes: a
    loop that gets to read them 300 ms late does not add those 300 ms to its latency
    (the server is a thread of its own, answering 50 ms after each request)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                while b"\r\n\r\n" not in conn.recv(4096):
                    pass
                time.sleep(0.05)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                conn.recv(4096)          # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    try:
        for timed in (True, False):
            pool = Pool(f"http://127.0.0.1:{port}", 2, max_answer=1024, timed=timed)
            got: asyncio.Future[tuple[object, float]] = loop.create_future()
            pool.start("GET", "/", encode_headers("GET", [], 0), b"", lambda _b: None, 5,
                       lambda result, latency, got=got: got.set_result((result, latency)))
            await asyncio.sleep(0.01)     # connected and sent
            time.sleep(0.3)               # the loop is held while the answer arrives
            head, latency = await got
            assert isinstance(head, Head) and head.status == 200
            if timed:
                assert 0.04 < latency < 0.2, latency
            else:
                assert latency > 0.25, latency
            await pool.close()
    finally:
        listener.close()
        thread.join(5)


async def test_a_timed_connection_aborted_while_closing_with_unsent_bytes_is_lost():
    """close() with bytes still unsent waits to send them; an abort() (or a failed send)
    then must still end the connection: the protocol told, the socket closed."""
    from shadowproxy.http.timed import open_timed

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()
    lost: list[BaseException | None] = []

    class P(asyncio.Protocol):
        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    try:
        transport, _p = await open_timed(loop, P, "127.0.0.1", port)
        peer, _ = listener.accept()          # never reads: the send buffers fill
        try:
            transport.write(b"x" * (16 * 1024 * 1024))
            assert transport.get_write_buffer_size() > 0
            transport.close()                # waits for the unsent bytes...
            transport.abort()                # ...until aborted
            for _ in range(100):
                if lost:
                    break
                await asyncio.sleep(0.01)
            assert lost == [None]
            assert transport.get_extra_info("socket").fileno() == -1
        finally:
            peer.close()
    finally:
        listener.close()
