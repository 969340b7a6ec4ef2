"""GoReplay's file format, written and read.

As GoReplay writes and reads it (github.com/buger/goreplay, ``protocol.go``:
``payloadHeader`` and ``payloadSeparator``; ``input_file.go``: ``fileInputReader.parse``;
``output_file.go``: ``FileOutput.PluginWrite``), a file is a sequence of payloads::

    TYPE ID TIMESTAMP LATENCY\\n      the payload header (fmt "%c %s %d %d\\n")
    <the raw HTTP/1.x message>
    \\n🐵🙈🙉\\n                          the separator

TYPE is ``1`` for a request, ``2`` for the original (recorded) response and ``3`` for
a replayed response; ID (24 hex digits in GoReplay) pairs a response with its request;
TIMESTAMP is the request's start in Unix nanoseconds; LATENCY is nanoseconds (GoReplay
writes -1 for requests it did not time, the round trip for responses). A file whose
name ends in ``.gz`` is gzip-compressed as a whole. The reader, as GoReplay's, reads
lines and ends a payload at a line that is the separator's last line, dropping the
newline before it; a payload whose header has fewer than three fields is skipped.
"""

from __future__ import annotations

import gzip
import io
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from ..models import Headers, RequestRecord, ResponseRecord

SEPARATOR = "\n🐵🙈🙉\n".encode()
_SEP_LINE = SEPARATOR[1:]
REQUEST, RESPONSE, REPLAYED = "1", "2", "3"
# framing is the file's own: a message is written with a Content-Length of its body
_FRAMING = frozenset({"content-length", "transfer-encoding"})
TRUNCATED_HEADER = "X-Shadowproxy-Truncated"   # size of an answer the recording cut
# size of a request body the recording left out (binary: masks cannot be applied to it);
# replay does not send such a request (not_eligible{body_not_recorded})
OMITTED_HEADER = "X-Shadowproxy-Body-Omitted"


def payload_header(kind: str, id_: str, timestamp_ns: int, latency_ns: int) -> bytes:
    return f"{kind} {id_} {timestamp_ns} {latency_ns}\n".encode("ascii")


def _head_lines(headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _FRAMING)
    if body:
        lines += f"Content-Length: {len(body)}\r\n"
    return (lines + "\r\n").encode("latin-1", "replace")


def encode_request(method: str, target: str, headers: Iterable[tuple[str, str]],
                   body: bytes) -> bytes:
    """The raw HTTP/1.1 request: as received, framed by a Content-Length of its body."""
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1", "replace") + \
        _head_lines(headers, body) + body


def encode_response(rec: ResponseRecord) -> bytes:
    headers: list[tuple[str, str]] = list(rec.headers)
    if rec.truncated:
        headers.append((TRUNCATED_HEADER, str(rec.size)))
    return f"HTTP/1.1 {rec.status} {rec.reason or 'Unknown'}\r\n".encode("latin-1", "replace") + \
        _head_lines(headers, rec.body) + rec.body


def write_exchange(out: IO[bytes], id_: str, started: float, method: str, target: str,
                   headers: Iterable[tuple[str, str]], body: bytes,
                   response: ResponseRecord) -> int:
    """A request payload and its original response payload; the bytes written."""
    ts = int(started * 1e9)
    data = b"".join((payload_header(REQUEST, id_, ts, -1),
                     encode_request(method, target, headers, body), SEPARATOR,
                     payload_header(RESPONSE, id_, ts + int(response.latency * 1e9),
                                    int(response.latency * 1e9)),
                     encode_response(response), SEPARATOR))
    out.write(data)
    return len(data)


# ---------------------------------------------------------------- reading


@dataclass(slots=True)
class Payload:
    kind: str
    id: str
    timestamp: int      # ns
    latency: int        # ns
    data: bytes         # the raw HTTP message


def open_recording(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return typing.cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def read_payloads(stream: IO[bytes], problems: list[str] | None = None) -> Iterator[Payload]:
    """The payloads of a GoReplay file, in file order. What cannot be read is skipped
    (as GoReplay skips it) and, when ``problems`` is given, said there with its byte
    offset: a payload whose header is malformed, and bytes after the last separator
    (a file cut short, or still being written)."""
    buf = io.BytesIO()
    pos = start = 0         # bytes read so far; where the payload in ``buf`` began
    for line in stream:
        pos += len(line)
        if line != _SEP_LINE:
            buf.write(line)
            continue
        raw = buf.getvalue()
        buf = io.BytesIO()
        at, start = start, pos
        nl = raw.find(b"\n")
        meta = raw[:nl].split(b" ") if nl >= 0 else []
        try:
            if len(meta) < 3:
                raise ValueError
            ts = int(meta[2])
            latency = int(meta[3]) if len(meta) > 3 else -1
        except ValueError:
            if problems is not None:
                problems.append(f"byte {at}: not a payload header: "
                                f"{raw[:max(nl, 0) or 60][:60]!r}; the payload is skipped")
            continue
        yield Payload(meta[0].decode("ascii", "replace"), meta[1].decode("ascii", "replace"),
                      ts, latency, raw[nl + 1:-1])
    if problems is not None and buf.getvalue().strip():
        problems.append(f"byte {start}: the file ends inside a payload ({pos - start} bytes "
                        "without the separator: cut short, or still being written); "
                        "that payload is skipped")


def _split(data: bytes) -> tuple[str, Headers, bytes]:
    """First line, headers and body of a raw message (CRLF or bare LF line ends)."""
    end, sep = data.find(b"\r\n\r\n"), 4
    lf = data.find(b"\n\n")
    if end < 0 or 0 <= lf < end:
        end, sep = lf, 2
    if end < 0:
        end, sep = len(data), 0
    lines = data[:end].decode("latin-1").replace("\r\n", "\n").split("\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.append((name.strip(), value.strip()))
    return lines[0], tuple(headers), data[end + sep:]


def _header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _body(headers: Headers, rest: bytes) -> bytes:
    te = _header(headers, "transfer-encoding")
    if te is not None and "chunked" in te.lower():
        return _dechunk(rest)
    length = _header(headers, "content-length")
    if length is not None and length.isdigit():
        return rest[:int(length)]
    return rest


def _dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        try:
            size = int(data[pos:nl].split(b";")[0].strip(), 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(data[nl + 1:nl + 1 + size])
        pos = nl + 1 + size
        pos = data.find(b"\n", pos) + 1 or len(data)
    return b"".join(out)


def parse_request(data: bytes) -> tuple[RequestRecord, str]:
    """The request record and its target (path and query as recorded)."""
    line, headers, rest = _split(data)
    parts = line.split(" ")
    if len(parts) < 2 or not parts[0]:
        raise ValueError(f"not an HTTP request line: {line[:80]!r}")
    method, target = parts[0], parts[1]
    path, _, query = target.partition("?")
    body = _body(headers, rest)
    headers = tuple((k, v) for k, v in headers if k.lower() not in _FRAMING)
    return RequestRecord(method, path, query, headers, body), target


def parse_response(data: bytes, latency_ns: int = -1) -> ResponseRecord:
    line, headers, rest = _split(data)
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {line[:80]!r}")
    body = _body(headers, rest)
    cut = _header(headers, TRUNCATED_HEADER.lower())
    headers = tuple((k, v) for k, v in headers
                    if k.lower() not in _FRAMING and k.lower() != TRUNCATED_HEADER.lower())
    size = int(cut) if cut is not None and cut.isdigit() else len(body)
    return ResponseRecord(status=int(parts[1]), reason=parts[2] if len(parts) > 2 else "",
                          headers=headers, body=body, size=size, truncated=size > len(body),
                          latency=max(latency_ns, 0) / 1e9)
