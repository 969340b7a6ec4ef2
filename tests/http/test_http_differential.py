"""Differential fuzzing of the project's HTTP/1.1 parsers against h11 and llhttp.

Hypothesis writes request streams (heads valid and hostile, bodies in every framing,
pipelined messages) and upstream responses (valid and hostile, 1xx, HEAD, 204/304,
close-delimited); tests/http_oracles.py parses each with the project's parser
(``RequestParser``, ``ResponseParser``), h11 and llhttp (httptools'
copy, strict) and reduces what each made of it to messages: where the head ends, the
body bytes, where the next message starts, whether the connection stays open.

The rules, message by message (each parser starts afresh where ours says the message
starts, so one allowed difference does not hide the messages after it):

* a message we accept must be accepted, with the same boundaries, body and start line,
  by every oracle that accepts it, and by at least one of them (unless each rejects it
  for a different documented reason: see :data:`ALLOWED`);
* every other difference with an oracle (we reject what it accepts, we accept what it
  rejects, the connection stays open for one and not the other) must be one of
  :data:`ALLOWED`: the kind of input, what each oracle does, why ours is right, the
  RFC. Anything else fails, with the input;
* bugs of ours are not in :data:`ALLOWED`: they are in :data:`KNOWN_BUGS`, each with a
  minimal input pinned by an ``xfail(strict=True)`` test below, which fails once the
  bug is fixed (then delete both).

"Rejected" covers a parser's error and a connection that ends inside the message alike
(no message either way; where in the message a parser noticed does not count). Ours
must also say the same whatever pieces the stream arrives in (hypothesis cuts it).

Below the fuzz tests: classic smuggling payloads (CL.TE, TE.CL, TE.TE obfuscations,
Content-Length and chunk-size tricks), checked against the three parsers the same way,
known bugs not tolerated. Hypothesis runs derandomized, without a database: CI sees the
same examples each run (about 10 s for both fuzz tests on one core).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http_oracles import (
    Msg,
    Rej,
    State,
    h11_requests,
    h11_response,
    httptools_requests,
    llhttp_requests,
    llhttp_response,
    llhttp_self_check,
    ours_requests,
    ours_response,
)

SETTINGS = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ====================================================================== the table
#
# Each entry: the kind of input (``match``: a regex searched in the message's bytes, from
# its first byte to the end of the stream), which oracle differs from ours and how
# (``relations``: "rej/msg" we reject what it accepts; "msg/rej" we accept what it
# rejects; "keep_alive" both accept the message, one keeps the connection open;
# "end/rej" / "rej/end" only empty lines are left, one side rejects them; "boundaries:…"
# both accept it, framed differently), the error texts (regexes) where they matter, and
# what each oracle does, why ours is right, with the RFC.
#
# The rule "a message we accept is accepted alike by at least one oracle" holds unless
# each oracle's difference is allowed by a different entry (each rejects it for its own
# documented reason, and each reason alone is one the other oracle does not share), or
# by one entry marked ``no_vouch``: the oracles' verdicts say nothing about our framing
# of the message (they misread it, or reject it for fields we discard unread).

@dataclass(frozen=True)
class Allowed:
    name: str
    kinds: tuple[str, ...]      # "request", "response"
    oracles: tuple[str, ...]    # "h11", "llhttp"
    relations: tuple[str, ...]
    match: str                  # regex (bytes, DOTALL) on the message and what follows
    why: str
    ours: str = ""              # regex on our error text (when we reject)
    theirs: str = ""            # regex on the oracle's error text (when it rejects)
    no_vouch: bool = False

    def applies(self, kind: str, oracle: str, rel: str, seg: bytes, mine: State,
                theirs: State) -> bool:
        if kind not in self.kinds or oracle not in self.oracles or rel not in self.relations:
            return False
        if re.search(self.match.encode("latin-1"), seg, re.DOTALL) is None:
            return False
        if self.ours and not (isinstance(mine, Rej) and re.search(self.ours, mine.reason)):
            return False
        return not self.theirs or (isinstance(theirs, Rej) and
                                   re.search(self.theirs, theirs.reason) is not None)


REQ, RESP, BOTH = ("request",), ("response",), ("request", "response")
H11, LL, ANY = ("h11",), ("llhttp",), ("h11", "llhttp")
_TE = r"(?i:transfer-encoding)[ \t]*:"
_CL = r"(?i:content-length)[ \t]*:"
_HEAD_LINE_START_WS = r"\r\n[ \t]"           # obs-fold, or whitespace before a name
_TRAILER_FRAMING = (r"\n0+(?:[ \t;][^\n]*)?\r\n(?:[^\r\n]+\r\n)*?"
                    r"(?i:content-length|transfer-encoding)[ \t]*:")
_CTL = r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]"

ALLOWED: list[Allowed] = [
    # ---------------------------------------------------------------- request heads
    Allowed("host-count", REQ, LL, ("rej/msg",), r".",
            "An HTTP/1.1 request without Host, or any request with two: we answer 400, as "
            "h11 does; llhttp does not look at Host. RFC 9112 §3.2: a server MUST respond "
            "400 to an HTTP/1.1 request that lacks Host and to any request with more than "
            "one Host field line.",
            ours="exactly one Host"),
    Allowed("http-version", BOTH, ANY, ("rej/msg",),
            r"^(?:\r\n)?[^\r\n]* HTTP/(?!1\.[01]\r\n)|(?:^|\n)HTTP/(?!1\.[01] )",
            "A version other than HTTP/1.0 or HTTP/1.1 (0.9, 1.2, 2.0, 3.0...): we answer 505 "
            "(2.x, 3.x) or 400, and reject such a status line from upstream; h11 takes any "
            "digit.digit, llhttp 0.9 and 2.0 (and 1.x status lines). RFC 9112 §2.3 (the "
            "version is HTTP/1.x; HTTP/0.9 has no headers), RFC 9110 §15.6.6 (505). Note RFC "
            "9110 §2.5 says a recipient SHOULD treat HTTP/1.2 as 1.1.",
            ours="version|bad request line|bad status line"),
    Allowed("extension-method", REQ, LL, ("msg/rej",), r".",
            "A method llhttp does not know (FOO, lower-case get, PRI with HTTP/1.x): "
            "llhttp has a fixed list; we and h11 take any token. RFC 9110 §9.1: method = "
            "token, methods are case-sensitive and extensible.",
            theirs="HPE_INVALID_METHOD|Connection Preface"),
    Allowed("bare-lf", BOTH, H11, ("rej/msg",), r"(?<!\r)\n",
            "LF alone as a line end (head, chunk lines, trailers): we reject, as llhttp "
            "(strict) does; h11 takes it. RFC 9112 §2.2: a recipient MAY recognize a single "
            "LF as a line terminator (a MAY; a proxy that does while the next hop does not "
            "is a smuggling vector)."),
    Allowed("obs-fold", BOTH, H11, ("rej/msg",), _HEAD_LINE_START_WS,
            "A header line starting with SP/HTAB (obs-fold, or whitespace before the first "
            "name): we reject (400, or 502 from upstream), as llhttp does; h11 unfolds it. "
            "RFC 9112 §5.2: a server MUST either reject obs-fold with 400 or replace it "
            "with SP; a proxy receiving it in a response MUST either discard the message "
            "(502) or replace it; RFC 9112 §2.2: whitespace before the first field line "
            "MUST be rejected or the line ignored.",
            ours="header"),
    Allowed("control-in-value", BOTH, H11, ("rej/msg",), _CTL,
            "A control character other than HTAB in a header value (\\x01, VT, FF, DEL...), "
            "or anywhere in a response head: we reject (400, or 502 from upstream), as "
            "llhttp does; h11 allows all but NUL and whitespace. RFC 9110 "
            "§5.5: field-vchar is VCHAR / obs-text; CTLs are invalid in field values.",
            ours="control character"),
    Allowed("control-in-trailer", BOTH, H11, ("rej/msg",),
            r"\n0+[^\n]*\r\n(?:[^\r\n]*\r\n)*?[^\r\n]*:[^\r\n]*[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]",
            "A control character other than HTAB in a trailer field: we reject the body, "
            "as llhttp does; h11 allows all but NUL and whitespace. RFC 9110 §5.5 (field "
            "values), RFC 9112 §7.1.2 (trailer fields are field lines).",
            ours="bad trailer line"),
    Allowed("te-in-http10", REQ, ANY, ("rej/msg",), r"HTTP/1\.0\r\n.*" + _TE,
            "Transfer-Encoding in an HTTP/1.0 request: we answer 400; h11 and llhttp "
            "de-chunk it. RFC 9112 §6.1: a server that receives an HTTP/1.0 message with "
            "Transfer-Encoding MUST treat its framing as faulty.",
            ours="Transfer-Encoding in an HTTP/1.0 request"),
    Allowed("te-and-cl", REQ, H11, ("rej/msg",), _TE,
            "A request with both Transfer-Encoding and Content-Length: we answer 400, as "
            "llhttp does; h11 lets Transfer-Encoding win. RFC 9112 §6.1: a server MAY "
            "reject such a request; §6.3: it ought to be handled as an error (smuggling).",
            ours="both Transfer-Encoding and Content-Length"),
    Allowed("cl-list-request", REQ, H11, ("rej/msg",), _CL + r"[^\r\n]*,",
            "A request Content-Length that is a list (\"5, 5\"): we answer 400, as llhttp "
            "does; h11 takes identical members. RFC 9110 §8.6: a recipient MAY either "
            "reject it or replace it with the single value.",
            ours="bad Content-Length"),
    Allowed("request-codings", REQ, LL, ("rej/msg",), _TE,
            "Transfer codings in a request besides a lone chunked (\"gzip, chunked\", two "
            "Transfer-Encoding lines that add up to more than chunked, or a coding with "
            "bytes outside the token grammar such as NBSP or NEL next to chunked): we "
            "answer 501 (we re-chunk the body upstream and would lose the other codings; "
            "an unknown coding, as nginx answers), as h11 does; llhttp takes any list "
            "ending in chunked. RFC 9112 §6.1: a server that receives a transfer coding it "
            "does not understand SHOULD respond 501; RFC 9110 §10.1.4: codings are tokens.",
            ours="transfer codings other than chunked|unknown transfer coding"),
    Allowed("request-line-whitespace", REQ, LL, ("rej/msg",), r"^(?:\r\n)?[^\r\n]*(?:  |\t)",
            "Two spaces, or a tab, between the parts of a request line: we answer 400, as "
            "h11 does; llhttp skips repeated spaces. RFC 9112 §3: the parts are separated "
            "by a single SP; a recipient MAY split on whitespace but SHOULD NOT "
            "autocorrect (and an upstream may split differently).",
            ours="bad request line"),
    Allowed("one-leading-crlf", REQ, H11, ("msg/rej", "end/rej"), r"^\r\n",
            "Empty line(s) before a request line (a client's CRLF after a body): we skip "
            "one CRLF, as llhttp does (it skips any); h11 rejects any. RFC 9112 §2.2: a "
            "server SHOULD ignore at least one empty line (CRLF) received prior to the "
            "request-line.",
            theirs="no request line received"),
    Allowed("more-leading-crlf", REQ, LL, ("rej/msg", "rej/end"), r"^(?:\n|\r\n\r?\n)",
            "More than one empty line (or a bare LF) before a request line: we skip one "
            "CRLF and then see an empty request (400); llhttp skips any CR and LF. RFC 9112 "
            "§2.2: a server SHOULD ignore at least one empty line: one is what we do.",
            ours="empty request|bare LF"),
    # ---------------------------------------------------------------- request keep-alive
    Allowed("http10-keep-alive", BOTH, H11, ("keep_alive",), r"HTTP/1\.0",
            "HTTP/1.0 with Connection: keep-alive: we (and llhttp) keep the connection; "
            "h11 never keeps an HTTP/1.0 connection (a documented h11 limitation). RFC 9112 "
            "§9.3 and Appendix C.2.2: a persistent HTTP/1.0 connection is signalled with "
            "keep-alive."),
    Allowed("close-and-keep-alive", BOTH, LL, ("keep_alive",),
            r"(?i:connection)[ \t]*:[^\r\n]*(?i:close)",
            "Connection with both close and keep-alive in an HTTP/1.0 message: we close, as "
            "h11 does; llhttp keeps it open (it looks only at keep-alive for 1.0). RFC 9112 "
            "§9.6: the close option means the connection closes after this message."),
    # ---------------------------------------------------------------- Content-Length
    Allowed("duplicate-cl", BOTH, LL, ("msg/rej",), _CL + r".*" + _CL,
            "Two Content-Length lines with the same value: we take the value, as h11 does; "
            "llhttp rejects any duplicate. RFC 9110 §8.6: a recipient MAY replace identical "
            "duplicated values with one (or reject the message).",
            theirs="Duplicate Content-Length"),
    Allowed("cl-list-response", RESP, LL, ("msg/rej",), _CL + r"[^\r\n]*,",
            "A response Content-Length that is a list of one value (\"5, 5\"): we take it, "
            "as h11 does; llhttp rejects it. RFC 9110 §8.6 (the same value repeated).",
            theirs="Invalid character in Content-Length"),
    Allowed("te-and-cl-response", RESP, ANY, ("msg/rej",), _TE,
            "A response with a lone Transfer-Encoding: chunked and a valid Content-Length: "
            "we read it chunked (and never reuse the connection), as h11 does unless the "
            "length has more digits than it takes (then it rejects it: bad Content-Length); "
            "llhttp rejects it (as we do any other coding beside a Content-Length). RFC 9112 "
            "§6.3 (3): Transfer-Encoding overrides Content-Length, which is not used.",
            theirs="can't be present with|bad Content-Length"),
    Allowed("te-and-cl-response-no-reuse", RESP, H11, ("keep_alive",), _TE,
            "The same: we do not reuse the connection after it (its framing is suspect); "
            "h11 does. RFC 9112 §6.3 (3): such a message ought to be handled as an error.",
            ),
    # ---------------------------------------------------------------- Transfer-Encoding
    Allowed("llhttp-te-trailing-htab", BOTH, LL,
            ("msg/rej", "rej/msg", "boundaries:body", "boundaries:body,end",
             "boundaries:body,keep_alive", "boundaries:body,end,keep_alive"),
            _TE + r"[^\r\n]*(?i:chunked)[ \t]*\t[ \t]*\r\n",
            "Transfer-Encoding: chunked followed by HTAB: llhttp does not see chunked (a "
            "trailing SP it strips, a trailing HTAB not) and reads the response to the "
            "close, or rejects the request; we and h11 read it chunked. RFC 9110 §5.5: OWS "
            "(SP / HTAB) around a field value is not part of it.",
            no_vouch=True),
    Allowed("te-field-lines", RESP, H11, ("msg/rej",), _TE + r".*" + _TE,
            "Transfer-Encoding in two field lines of a response: we join them (\"chunked\" "
            "then \"gzip\" is \"chunked, gzip\"), as llhttp does; h11 rejects. RFC 9110 "
            "§5.3: field lines of a list-based field combine into one list.",
            theirs="multiple Transfer-Encoding headers", no_vouch=True),
    Allowed("non-chunked-response", RESP, H11, ("msg/rej",), _TE,
            "A response with transfer codings besides chunked (gzip; identity, chunked): "
            "we read it to the close when chunked is not last, else de-chunk it, as llhttp "
            "does; h11 implements no coding but a lone chunked and rejects the rest (a "
            "limit of h11's: its verdict says nothing of the framing). RFC 9112 §6.3 (4): "
            "without chunked last, a response is delimited by the close.",
            theirs="Only Transfer-Encoding: chunked is supported", no_vouch=True),
    Allowed("te-not-a-token-list", RESP, LL, ("rej/msg",), _TE,
            "A response Transfer-Encoding that is not a list of tokens (\"\\\"chunked\\\"\", "
            "chunked;q=1, empty, NEL or NBSP around chunked): we answer 502, as h11 does; "
            "llhttp takes it as an unknown coding and reads to the close. RFC 9112 §6.1, "
            "RFC 9110 §10.1.4: Transfer-Encoding = #transfer-coding (tokens).",
            ours="bad Transfer-Encoding"),
    # ---------------------------------------------------------------- chunked
    Allowed("chunk-size-limit", BOTH, ANY, ("rej/msg",), r"\n[0-9A-Fa-f]{16,}",
            "A chunk size of more than 16 hex digits, or above 2^60: we reject (like "
            "nginx, whose limit is lower still); h11 takes 20 digits, llhttp any value up "
            "to 2^64 - 1. RFC 9112 §7.1: recipients MUST anticipate large hexadecimal "
            "numerals and prevent overflow; a limit far beyond any body is that.",
            ours="bad chunk size line|chunk size too large"),
    Allowed("chunk-size-bws", BOTH, LL, ("msg/rej",), r"\n[0-9A-Fa-f]+[ \t]",
            "SP/HTAB after a chunk size (\"5 \", \"5 ;x\"): we skip it, as h11 does; strict "
            "llhttp rejects (its lenient_spaces_after_chunk_size flag, which aiohttp sets, "
            "allows it). RFC 9112 §7.1.1: BWS before the ';' of an extension. Harmless: the "
            "body is de-chunked, and re-chunked upstream.",
            theirs="Invalid character in chunk size"),
    Allowed("chunk-ext-bws", BOTH, H11, ("msg/rej",), r"\n[0-9A-Fa-f]+[ \t]+;",
            "SP/HTAB between a chunk size and its extension (\"5 ;a=b\"): we skip it; h11 "
            "rejects it (and strict llhttp, see chunk-size-bws). RFC 9112 §7.1.1: chunk-ext "
            "= *( BWS \";\" ... ); RFC 9110 §5.6.3: a recipient MUST parse and remove BWS.",
            theirs="illegal chunk header"),
    Allowed("chunk-ext-control", BOTH, H11, ("rej/msg",),
            r"\n[0-9A-Fa-f]+[ \t]*;[^\r\n]*(?:[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n))",
            "A control character (or a bare CR) in a chunk extension: we reject, as "
            "llhttp does; h11 takes anything after ';'. RFC 9112 §7.1.1: chunk-ext-name "
            "is a token, chunk-ext-val a token or quoted-string: no CTLs.",
            ours="bad chunk size line"),
    Allowed("chunk-ext-lenient", BOTH, LL, ("msg/rej",), r"\n[0-9A-Fa-f]+[ \t]*;",
            "A chunk extension outside the grammar but without control characters (BWS "
            "around '=', obs-text, an empty name): we ignore it, as h11 does; strict llhttp "
            "rejects it. RFC 9112 §7.1.1: a recipient MUST ignore unrecognized chunk "
            "extensions; we never pass them on.",
            theirs="chunk extension"),
    Allowed("trailer-framing-fields", BOTH, ANY, ("msg/rej",), _TRAILER_FRAMING,
            "Content-Length or Transfer-Encoding among the trailer fields: we discard "
            "trailers unread (they reach nobody); h11 validates them as it does headers "
            "(two Transfer-Encoding, a coding it does not support), llhttp (requests) as "
            "if they were headers of the message. The boundaries do not depend on them. "
            "RFC 9112 §7.1.2: a recipient MAY discard trailer fields; RFC 9110 §6.5.1: "
            "framing fields cannot be processed as trailers.",
            theirs="Transfer-Encoding|Content-Length",
            no_vouch=True),
    # ---------------------------------------------------------------- responses
    Allowed("interim-close", RESP, LL, ("msg/rej",), r"^HTTP/1\.[01] 1\d\d",
            "A 1xx interim answer of HTTP/1.0, or with Connection: close: llhttp ends the "
            "connection after it and rejects the final answer; we and h11 read the final "
            "answer after it. RFC 9110 §15.2: a client MUST be able to parse 1xx answers "
            "before the final one.",
            theirs="Data after `Connection: close`"),
    Allowed("empty-line-before-status-line", RESP, LL, ("rej/msg",), r"\r\n\r\n\r?\n",
            "An empty line between an interim answer and the next status line: we reject "
            "(502), as h11 does; llhttp skips CR and LF between messages. RFC 9112 §2.2 "
            "lets a server skip empty lines before a request-line; nothing lets a client "
            "skip them before a status-line.",
            ours="not an HTTP response"),
    Allowed("status-out-of-range", RESP, ANY, ("rej/msg",), r"(?:^|\n)HTTP/1\.[01] 0",
            "A status code below 100 (\"099\"): we reject it (502); h11 and llhttp take "
            "any three digits. RFC 9110 §15: a status code is 100 to 599; values outside "
            "100..599 are invalid.",
            ours="bad status code"),
    Allowed("unexpected-101", RESP, LL, ("rej/msg",), r"(?:^|\n)HTTP/1\.[01] 101",
            "A 101 to a request that asked for no upgrade: we reject it (502), as h11 "
            "does; llhttp takes it as a final answer without body. RFC 9110 §15.2.2: 101 "
            "switches to a protocol the client named in Upgrade.",
            ours="101"),
    Allowed("unused-length-overflow", RESP, ANY, ("msg/rej",), _CL + r"[ \t]*\d{20,}",
            "A Content-Length beyond 64 bits on a response without a body (HEAD, 204, "
            "304): we do not use it, nor does h11 up to 20 digits (beyond, it rejects it); "
            "llhttp rejects the overflow. RFC 9112 §6.3 (1): such a response ends with its "
            "head, whatever its fields say. (With a body, the three reject it alike: we "
            "wait for bytes that never come.)",
            theirs="Content-Length overflow|bad Content-Length"),
    Allowed("control-in-status-line", RESP, LL, ("rej/msg",),
            r"(?:^|\n)HTTP/[^\r\n]*[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]",
            "A NUL or another control character in the reason phrase: we reject it (h11 "
            "rejects a NUL too); llhttp takes it. RFC 9112 §4: reason-phrase = *( HTAB / SP "
            "/ VCHAR / obs-text ); RFC 9110 §5.5: NUL is dangerous.",
            ours="NUL|control character"),
]


# ====================================================================== known bugs
#
# Differences that are bugs of ours: tolerated by the fuzz tests only so that they pass
# until fixed; each pinned by test_known_bug (xfail, strict): delete the entry when its
# test starts passing.

@dataclass(frozen=True)
class KnownBug:
    name: str
    kind: str
    applies: Callable[[bytes, State, str], bool]      # (message bytes, ours, method)
    data: bytes                                        # a minimal input
    method: str = "GET"
    what: str = ""


KNOWN_BUGS: list[KnownBug] = []


# ====================================================================== comparing

ORACLES = {"request": {"h11": h11_requests, "llhttp": llhttp_requests},
           "response": {"h11": h11_response, "llhttp": llhttp_response}}


def _kind(s: State) -> str:
    return "msg" if isinstance(s, Msg) else "rej" if isinstance(s, Rej) else "end"


def relation(mine: State, theirs: State) -> str | None:
    """None when the two agree; else how they differ."""
    if isinstance(mine, Rej) and isinstance(theirs, Rej):
        return None                   # rejected is rejected, whatever the reason
    if isinstance(mine, Msg) and isinstance(theirs, Msg):
        d = mine.diff(theirs)
        return None if not d else "keep_alive" if d == {"keep_alive"} else \
            "boundaries:" + ",".join(sorted(d))
    if mine == theirs:
        return None
    return f"{_kind(mine)}/{_kind(theirs)}"


@dataclass
class Finding:
    index: int
    oracle: str
    relation: str
    mine: State
    theirs: State
    allowed: str | None = None        # the ALLOWED entry's name, or "bug: <name>"


def _parse(kind: str, who: str, data: bytes, method: str) -> list[State]:
    if who == "ours":
        return ours_requests(data) if kind == "request" else ours_response(data, method)
    fn = ORACLES[kind][who]
    return fn(data) if kind == "request" else fn(data, method)


def _shift(m: Msg, by: int) -> Msg:
    return Msg(m.head_end + by, m.end + by, m.body, m.keep_alive, m.start)


def compare(kind: str, data: bytes, method: str = "GET", tolerate_bugs: bool = True
            ) -> tuple[list[State], list[Finding], list[str]]:
    """Our states, every difference with an oracle (and what allows it), and the
    failures: differences nothing allows, broken rules."""
    mine_all = _parse(kind, "ours", data, method)
    findings: list[Finding] = []
    failures: list[str] = []
    start = 0
    for i, mine in enumerate(mine_all):
        seg = data[start:]
        if isinstance(mine, Msg):
            mine = _shift(mine, -start)
        bug = next((b for b in KNOWN_BUGS if b.kind == kind and b.applies(seg, mine, method)),
                   None) if tolerate_bugs else None
        excuses: dict[str, Allowed] = {}
        agree = []
        for o in ORACLES[kind]:
            theirs = _parse(kind, o, seg, method)[0]      # afresh from where ours starts
            rel = relation(mine, theirs)
            if rel is None or rel == "keep_alive":
                agree.append(o)
            if rel is None:
                continue
            f = Finding(i, o, rel, mine, theirs)
            findings.append(f)
            entry = next((a for a in ALLOWED if a.applies(kind, o, rel, seg, mine, theirs)),
                         None)
            if entry is not None:
                f.allowed = entry.name
                excuses[o] = entry
            elif bug is not None:
                f.allowed = f"bug: {bug.name}"
            else:
                failures.append(f"message {i}: {o} differs ({rel}), not in ALLOWED:\n"
                                f"      ours {mine}\n      {o:4} {theirs}")
        if isinstance(mine, Msg) and not agree and bug is None and \
                len(excuses) == len(ORACLES[kind]) and \
                len({e.name for e in excuses.values()}) == 1 and \
                not next(iter(excuses.values())).no_vouch:
            # both reject it for the same documented reason: that reason is not enough
            failures.append(f"message {i}: we accept what no oracle accepts alike "
                            f"({next(iter(excuses.values())).name}): {mine}")
        if not isinstance(mine, Msg) or not mine.keep_alive:
            break
        start += mine.end
    return mine_all, findings, failures


def check(kind: str, data: bytes, method: str = "GET", pieces: list[int] | None = None,
          tolerate_bugs: bool = True) -> list[Finding]:
    """Fail unless every difference is allowed (or, ``tolerate_bugs``, a known bug);
    also our parser must say the same whatever pieces the stream arrives in."""
    mine, findings, failures = compare(kind, data, method, tolerate_bugs)
    if pieces is not None:
        again = ours_requests(data, pieces) if kind == "request" else \
            ours_response(data, method, pieces)
        strip = [Msg(-1, m.end, m.body, m.keep_alive, m.start) if isinstance(m, Msg)
                 else m for m in mine]
        if again != strip:
            failures.append(f"ours in pieces cut at {pieces} says {again}, byte by byte "
                            f"{mine}")
    if failures:
        raise AssertionError(f"{kind} {data!r}" +
                             (f" (answering {method})" if kind == "response" else "") +
                             ":\n  " + "\n  ".join(failures))
    return findings


# ====================================================================== strategies

CRLF = b"\r\n"
HOSTILE_EOL = [b"\n", b"\r", b"\r\r\n", b"\n\r"]
# around a value: optional whitespace (SP, HTAB) and what is not (NBSP, NEL, VT, FF, CR...)
PADS = [b"", b"", b"", b" ", b"\t", b"  ", b"\xa0", b"\x85", b"\x0b", b"\x0c", b"\x00",
        b"\x01", b"\x7f", b"\r", b"\x1f"]
BODY_BYTES = st.binary(max_size=12) | st.sampled_from([
    b"hello", b"0\r\n\r\n", b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])


def _eol(draw, hostile: bool) -> bytes:
    return draw(st.sampled_from(HOSTILE_EOL)) if hostile else CRLF


@st.composite
def header_name(draw, canonical: str) -> bytes:
    """``canonical`` as sent: case changes, or hostile spellings."""
    variants = [canonical, canonical.lower(), canonical.upper(), canonical]
    hostile = [canonical.replace("-", "_"), canonical + " ", canonical + "\t",
               " " + canonical, canonical.replace("-", " "), canonical + "\x00",
               canonical.replace("-", "-\xa0"), "\xa0" + canonical]
    return draw(st.sampled_from(variants + hostile
                                if draw(st.integers(0, 5)) == 0 else variants)
                ).encode("latin-1")


@st.composite
def field(draw, name: str, value: bytes, hostile: bool = True) -> bytes:
    """One header line: ``name: value`` with OWS, and sometimes hostile padding."""
    if hostile and draw(st.integers(0, 4)) == 0:
        pre, post = draw(st.sampled_from(PADS)), draw(st.sampled_from(PADS))
    else:
        pre = draw(st.sampled_from([b" ", b"", b"  ", b"\t"]))
        post = draw(st.sampled_from([b"", b"", b" ", b"\t"]))
    nm = draw(header_name(name)) if hostile else name.encode()
    line = nm + b":" + pre + value + post
    if hostile and draw(st.integers(0, 12)) == 0:
        line += draw(st.sampled_from([b"\r\n folded", b"\r\n\tfolded", b"\r\n "]))
    return line


OTHER_HEADERS = [b"Accept: */*", b"User-Agent: fuzz/1.0", b"X-A: 1", b"X-Empty:",
                 b"Cookie: a=b; c=d", b"X-Obs: caf\xe9", b"X-Tab: a\tb",
                 b"X-Q: \"quoted, value\""]
HOSTILE_HEADERS = [b"X A: 1", b"X-A : 1", b": no-name", b"no-colon", b"X\x00Y: 1",
                   b"X-A: a\x00b", b"X-A: a\x01b", b"X-A: a\x7fb", b"X-A: a\rb",
                   b"X-A: a\x0bb", b"X-\xe9: 1", b"X-A:\xa0", b"X-A: \x85", b"[x]: 1",
                   b" X-A: 1", b"\tX-A: 1", b"X-A: 1\r\n  continued", b"X-A;: 1"]

CL_VALUES = ["{n}", "{n}", "{n}", "0{n}", "00{n}", "+{n}", "-{n}", "{n}.0", "{n}, {n}",
             "{n},{n}", "{n}, {m}", "0x{n:x}", "{n} {n}", "1{n}000000000000000000000",
             "\xa0{n}", "{n}\x85", "", "{n}e0", "\u00b9"]
TE_VALUES = ["chunked", "chunked", "chunked", "Chunked", "CHUNKED", "chunked, chunked",
             "gzip, chunked", "chunked, gzip", "identity, chunked", "identity", "gzip",
             "chunked,", ",chunked", "chunked ,chunked", " chunked", "\tchunked",
             "chunked\t", "chunked\x85", "\x85chunked", "\xa0chunked", "chunked\xa0",
             "chunked\x0b", "chunked\x00", "chunk", "chunkedx", "x-chunked",
             "chunked;q=1", "\"chunked\"", "chu\x00nked", "chunked\r\n chunked", ""]


@st.composite
def chunked_body(draw, hostile: bool) -> tuple[bytes, bool]:
    """A chunked body; (bytes, valid)."""
    out = b""
    valid = True
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=12))
        size = b"%x" % len(data)
        ext = b""
        eol, term = CRLF, CRLF
        if hostile and draw(st.booleans()):
            choice = draw(st.integers(0, 14))
            if choice == 0:
                size = b"0" * draw(st.integers(1, 20)) + size          # leading zeros
            elif choice == 1:
                size = size.upper() if draw(st.booleans()) else b"0x" + size
            elif choice == 2:
                size = draw(st.sampled_from([b"+", b"-", b" ", b"\t"])) + size
            elif choice == 3:
                size += draw(st.sampled_from([b" ", b"\t", b"  ", b"\x0b", b"\xa0"]))
            elif choice == 4:
                ext = draw(st.sampled_from([
                    b";a", b";a=b", b"; a=b", b" ;a=b", b";a=\"q;\"", b";a=b;c",
                    b";a=\xe9", b";a=\x00", b";\x85", b";a=b\rc", b";a\x0bb",
                    b"; a = b", b";=b", b";a=\"\\\"\"", b";" + b"x" * 40]))
            elif choice == 5:
                eol = draw(st.sampled_from(HOSTILE_EOL))
            elif choice == 6:
                term = draw(st.sampled_from([b"\n", b"", b"\r", b"XX", b"\r\r\n",
                                             b" \r\n"]))
            elif choice == 7:
                size = b"%x" % (len(data) + draw(st.sampled_from([1, -1, 2])))
            elif choice == 8:
                size = draw(st.sampled_from([b"ffffffffffffffff", b"10000000000000000",
                                             b"fffffffffffffffff1", b"7fffffffffffffff",
                                             b"1000000000000000"]))
            elif choice == 9:
                size = b"%X" % len(data)
            else:
                pass
            valid = False
        out += size + ext + eol + data + term
    last = b"0"
    if hostile and draw(st.integers(0, 3)) == 0:
        last = draw(st.sampled_from([b"000", b"0 ", b"0;x=y", b"00000000000000000000",
                                     b"0x0", b"", b"-0"]))
        valid = False
    out += last + (_eol(draw, True) if hostile and draw(st.integers(0, 8)) == 0 else CRLF)
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 2)) == 0 else 0):
        trailer = draw(st.sampled_from(
            [b"X-T: v", b"X-T: v", b"Content-Length: 5", b"Transfer-Encoding: chunked"] +
            ([b"X T: v", b"X-T: a\x00b", b"X-T: \x85", b": v", b"novalue", b" X-T: v",
              b"X-T: a\x01b"] if hostile else [])))
        out += trailer + (_eol(draw, True) if hostile and draw(st.integers(0, 8)) == 0
                          else CRLF)
    out += CRLF if not hostile or draw(st.integers(0, 10)) else \
        draw(st.sampled_from([b"\n", b"", b"\r"]))
    return out, valid


@st.composite
def framing(draw, hostile: bool, response: bool = False) -> tuple[list[bytes], bytes]:
    """Framing headers and the body: none, Content-Length, chunked, both, close."""
    kind = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked",
                                 "both", "two-lengths", "two-te"] if hostile else
                                ["none", "length", "chunked"]))
    body = draw(BODY_BYTES)
    headers: list[bytes] = []
    if kind == "none":
        return headers, body if response else b""
    if kind in ("length", "both", "two-lengths"):
        n = len(body) + (draw(st.sampled_from([0, 0, 0, 1, -1, 5]))
                         if hostile else 0)
        fmt = draw(st.sampled_from(CL_VALUES)) if hostile and draw(st.booleans()) else "{n}"
        value = fmt.format(n=max(n, 0), m=max(n, 0) + 1).encode("latin-1")
        headers.append(draw(field("Content-Length", value, hostile)))
        if kind == "two-lengths":
            other = draw(st.sampled_from([value, str(max(n, 0) + 1).encode(), b"0"]))
            headers.append(draw(field("Content-Length", other, hostile)))
    if kind in ("chunked", "both", "two-te"):
        te = draw(st.sampled_from(TE_VALUES)) if hostile and draw(st.booleans()) \
            else "chunked"
        headers.append(draw(field("Transfer-Encoding", te.encode("latin-1"), hostile)))
        if kind == "two-te":
            headers.append(draw(field("Transfer-Encoding", draw(st.sampled_from(
                [b"chunked", b"gzip", b"identity", b""])), hostile)))
        chunks, _valid = draw(chunked_body(hostile))
        if kind == "both" and draw(st.booleans()):
            body = chunks            # the length is the chunked body's
            headers[0] = draw(field("Content-Length", str(len(body)).encode(), hostile))
        else:
            body = chunks
    if draw(st.booleans()):
        headers.reverse()
    return headers, body


@st.composite
def request(draw, hostile: bool) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS",
                                   "PATCH"]))
    target = draw(st.sampled_from(["/", "/a/b?c=d&e", "/%7E", "http://h.example/x",
                                   "/a;p", "/?q=\"x\""]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    sp1 = sp2 = b" "
    eol = CRLF
    lead = b""
    if hostile and draw(st.integers(0, 2)) == 0:
        choice = draw(st.integers(0, 9))
        if choice == 0:
            method = draw(st.sampled_from(["get", "FOO", "G@T", "GET\x00", "M-SEARCH",
                                           "PROPFIND", "PRI", "\xe9"]))
        elif choice == 1:
            target = draw(st.sampled_from(["/\xa0", "/a b", "/\x00", "/\x7f", "/\x85",
                                           "*", "/a\tb", "/#frag", "/\x1b", "//"]))
        elif choice == 2:
            version = draw(st.sampled_from(["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1",
                                            "HTTP/1.1 ", "HTTP/11", "HTTP/1.10",
                                            "HTTP/1", "HTTP/3.0", "HTTP/9.9", "HTTP/1.x"]))
        elif choice == 3:
            sp1 = draw(st.sampled_from([b"\t", b"  ", b"\xa0"]))
        elif choice == 4:
            sp2 = draw(st.sampled_from([b"\t", b"  ", b"\xa0"]))
        elif choice == 5:
            eol = draw(st.sampled_from(HOSTILE_EOL))
        elif choice == 6:
            lead = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"\n", b" ", b"\r\n\n"]))
    line = method.encode("latin-1") + sp1 + target.encode("latin-1") + sp2 + \
        version.encode("latin-1")
    hosts = draw(st.sampled_from([1, 1, 1, 1, 0, 2] if hostile else [1]))
    headers: list[bytes] = [
        draw(field("Host", draw(st.sampled_from(
            [b"h.example", b"h.example:8080", b"[::1]", b"a b", b""])) if hostile
            else b"h.example", hostile)) for _ in range(hosts)]
    headers += [draw(st.sampled_from(OTHER_HEADERS)) for _ in range(draw(st.integers(0, 2)))]
    if hostile and draw(st.integers(0, 3)) == 0:
        headers.append(draw(st.sampled_from(HOSTILE_HEADERS)))
    if draw(st.integers(0, 3)) == 0:
        headers.append(draw(field("Connection", draw(st.sampled_from(
            [b"close", b"keep-alive", b"Keep-Alive", b"close, keep-alive",
             b"keep-alive, close", b"x, close", b"closed", b"upgrade"])), hostile)))
    if draw(st.integers(0, 6)) == 0:
        headers.append(b"Expect: 100-continue")
    fr, body = draw(framing(hostile))
    headers += fr
    headers = draw(st.permutations(headers))
    head_eol = eol if hostile and draw(st.booleans()) else CRLF
    return lead + line + eol + b"".join(h + head_eol for h in headers) + head_eol + body


@st.composite
def request_stream(draw) -> tuple[bytes, list[int]]:
    """One to three pipelined requests (mostly valid, some hostile), sometimes with
    leftovers, and where a reader's pieces might end."""
    n = draw(st.integers(1, 3))
    data = b"".join(draw(request(hostile=draw(st.integers(0, 2)) > 0)) for _ in range(n))
    if draw(st.integers(0, 5)) == 0:
        data += draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"G", b"x", b"\r\nGET"]))
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4))
    return data, cuts


STATUSES = [200, 200, 200, 201, 204, 206, 301, 304, 404, 500, 199, 299]
HOSTILE_STATUS_LINES = [b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1  200 OK",
                        b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 099 OK",
                        b"HTTP/1.1 600 OK", b"HTTP/1.1 999 OK", b"HTTP/1.1 200 O\x00K",
                        b"HTTP/1.1 200 O\x01K", b"HTTP/1.1 200 \xe9t\xe9",
                        b"HTTP/1.2 200 OK", b"HTTP/2.0 200 OK", b"http/1.1 200 OK",
                        b"HTTP/1.1\t200 OK", b"HTTP/1.1 200\tOK", b"HTTP/1.0 200 OK",
                        b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 2x0 OK",
                        b"HTTP/1.1 +20 OK", b"ICY 200 OK", b" HTTP/1.1 200 OK",
                        b"HTTP/1.1 200 OK\r"]


@st.composite
def response(draw) -> tuple[bytes, str]:
    hostile = draw(st.integers(0, 2)) > 0
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "POST"]))
    interim = b""
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        interim += draw(st.sampled_from([
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 102 Processing\r\n\r\n"] + ([
                b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\n",
                b"HTTP/1.1 100 Continue\n\n", b"HTTP/1.1 103 Early\r\nX A: 1\r\n\r\n",
                b"HTTP/1.0 100 Continue\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n"]
                if hostile else [])))
    status = draw(st.sampled_from(STATUSES))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    line = version + b" %d OK" % status
    if hostile and draw(st.integers(0, 3)) == 0:
        line = draw(st.sampled_from(HOSTILE_STATUS_LINES))
    headers: list[bytes] = [b"Date: Mon, 1 Jan 2024 00:00:00 GMT"] \
        if draw(st.booleans()) else []
    headers += [draw(st.sampled_from(OTHER_HEADERS)) for _ in range(draw(st.integers(0, 2)))]
    if hostile and draw(st.integers(0, 3)) == 0:
        headers.append(draw(st.sampled_from(HOSTILE_HEADERS)))
    if draw(st.integers(0, 3)) == 0:
        headers.append(draw(field("Connection", draw(st.sampled_from(
            [b"close", b"keep-alive", b"x, close", b"closed"])), hostile)))
    fr, body = draw(framing(hostile, response=True))
    headers += fr
    headers = draw(st.permutations(headers))
    eol = _eol(draw, True) if hostile and draw(st.integers(0, 6)) == 0 else CRLF
    data = interim + line + eol + b"".join(h + eol for h in headers) + eol + body
    if draw(st.integers(0, 3)) == 0:
        data += draw(st.sampled_from([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                                      b"x", b"\r\n"]))
    return data, method


# ====================================================================== the fuzz tests


def test_the_llhttp_driver_fits_the_installed_httptools():
    llhttp_self_check()


@SETTINGS
@given(request_stream())
def test_requests_agree_with_h11_and_llhttp(stream):
    data, cuts = stream
    check("request", data, pieces=cuts)


@SETTINGS
@given(response(), st.lists(st.integers(1, 400), max_size=3))
def test_responses_agree_with_h11_and_llhttp(resp, cuts):
    data, method = resp
    check("response", data, method, pieces=[c for c in cuts if c < len(data)])


# ====================================================================== known payloads
#
# Classic smuggling payloads, checked against the three parsers the same way (known bugs
# not tolerated: a payload that hits one is marked xfail with the bug's name).

def _req(head: bytes, body: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\n" + head + b"\r\n" + body


_SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
_CHUNKED_SMUGGLE = b"0\r\n\r\n" + _SMUGGLED
_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"


def _bug(name: str) -> pytest.MarkDecorator:
    bug = next(b for b in KNOWN_BUGS if b.name == name)
    return pytest.mark.xfail(strict=True, reason=f"known bug {name}: {bug.what}")


def accepted_against_both(kind: str, data: bytes, method: str = "GET") -> list[int]:
    """The messages we accept while h11 and llhttp both reject them (each oracle parsing
    afresh from where we say the message starts)."""
    out = []
    start = 0
    for i, mine in enumerate(_parse(kind, "ours", data, method)):
        if not isinstance(mine, Msg):
            break
        if all(isinstance(_parse(kind, o, data[start:], method)[0], Rej)
               for o in ORACLES[kind]):
            out.append(i)
        if not mine.keep_alive:
            break
        start = mine.end
    return out


def check_payload(kind: str, data: bytes, method: str = "GET") -> None:
    """A known payload: the fuzz tests' rules, known bugs not tolerated, and not one
    message accepted that both oracles reject (not even for reasons ALLOWED)."""
    check(kind, data, method, pieces=[len(data) // 2], tolerate_bugs=False)
    assert not accepted_against_both(kind, data, method), \
        f"we accept {kind} {data!r} which h11 and llhttp reject"


REQUEST_PAYLOADS = [
    # CL.TE / TE.CL
    ("cl-te", _req(b"Content-Length: 6\r\n" + _TE_CHUNKED, b"0\r\n\r\nG")),
    ("te-cl", _req(_TE_CHUNKED + b"Content-Length: 3\r\n",
                   b"8\r\nSMUGGLED\r\n0\r\n\r\n")),
    ("cl-te-smuggled-request", _req(b"Content-Length: 4\r\n" + _TE_CHUNKED, _CHUNKED_SMUGGLE)),
    # TE.TE obfuscations (each beside a Content-Length that would frame otherwise)
    *[(f"te-te-{name}", _req(b"Content-Length: 4\r\n" + te + b"\r\n", _CHUNKED_SMUGGLE))
      for name, te in [
          ("second-te-x", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x"),
          ("xchunked", b"Transfer-Encoding: xchunked"),
          ("space-before-colon", b"Transfer-Encoding : chunked"),
          ("tab-value", b"Transfer-Encoding:\tchunked"),
          ("leading-space-line", b" Transfer-Encoding: chunked"),
          ("obs-fold", b"X: a\r\n Transfer-Encoding: chunked"),
          ("bare-lf-before", b"X: a\nTransfer-Encoding: chunked"),
          ("name-newline", b"Transfer-Encoding\n: chunked"),
          ("underscore", b"Transfer_Encoding: chunked"),
          ("quoted", b"Transfer-Encoding: \"chunked\""),
          ("upper", b"Transfer-Encoding: CHUNKED"),
          ("chunked-identity", b"Transfer-Encoding: chunked, identity"),
          ("identity-chunked", b"Transfer-Encoding: identity, chunked"),
          ("vt", b"Transfer-Encoding:\x0bchunked"),
          ("nul", b"Transfer-Encoding: chu\x00nked"),
      ]],
    # TE obfuscations alone (no Content-Length)
    *[(f"te-{name}", _req(te + b"\r\n", _CHUNKED_SMUGGLE), *marks)
      for name, te, *marks in [
          ("nel", b"Transfer-Encoding: chunked\x85"),
          ("nbsp", b"Transfer-Encoding: \xa0chunked"),
          ("trailing-htab", b"Transfer-Encoding: chunked\t"),
          ("chunked-chunked", b"Transfer-Encoding: chunked, chunked"),
          ("gzip-chunked", b"Transfer-Encoding: gzip, chunked"),
          ("two-lines", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"),
          ("empty", b"Transfer-Encoding:"),
          ("http10", b"Transfer-Encoding: chunked"),
      ]],
    # Content-Length obfuscations
    *[(f"cl-{name}", _req(b"Content-Length: " + cl + b"\r\n", b"hello" + _SMUGGLED))
      for name, cl in [
          ("plus", b"+5"), ("minus", b"-5"), ("leading-zeros", b"0005"),
          ("leading-spaces", b"   5"), ("trailing-spaces", b"5   "), ("list", b"5, 5"),
          ("list-differs", b"5, 6"), ("space-inside", b"5 5"), ("hex", b"0x5"),
          ("exponent", b"5e0"), ("decimal", b"5.0"), ("vt", b"5\x0b"),
          ("nbsp", b"\xa05"), ("huge", b"99999999999999999999999"),
          ("superscript", "\u00b9".encode("latin-1")),
      ]],
    ("cl-two-lines-differ", _req(b"Content-Length: 5\r\nContent-Length: 6\r\n",
                                 b"hello" + _SMUGGLED)),
    ("cl-two-lines-same", _req(b"Content-Length: 5\r\nContent-Length: 5\r\n",
                               b"hello" + _SMUGGLED)),
    # chunk sizes and lines
    *[(f"chunk-{name}", _req(_TE_CHUNKED, body)) for name, body in [
        ("size-2^64-1", b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("size-overflow-17", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("size-plus", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("size-leading-zeros", b"0005\r\nhello\r\n000\r\n\r\n"),
        ("size-20-digits", b"00000000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("lf-size-line", b"5\nhello\r\n0\r\n\r\n"),
        ("lf-after-data", b"5\r\nhello\n0\r\n\r\n"),
        ("lf-last-chunk", b"5\r\nhello\r\n0\n\n"),
        ("no-crlf-after-data", b"5\r\nhelloXX0\r\n\r\n"),
        ("short-data", b"6\r\nhello\r\n0\r\n\r\n"),
        ("ext", b"5;a=b;c=\"d;e\"\r\nhello\r\n0;x\r\n\r\n"),
        ("ext-lf", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ("ext-nul", b"5;a=\x00\r\nhello\r\n0\r\n\r\n"),
        ("trailers", b"5\r\nhello\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n"),
        ("trailer-lf", b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n"),
        ("smuggle-after-last-chunk", _CHUNKED_SMUGGLE),
    ]],
    # heads
    ("bare-cr-line-end", b"GET / HTTP/1.1\rHost: a\r\n\r\n"),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
    ("nul-in-target", b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("non-ascii-target", b"GET /\xa0 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-form", b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("http10-te", b"POST / HTTP/1.0\r\n" + _TE_CHUNKED + b"\r\n" + _CHUNKED_SMUGGLE),
    ("pipelined", _req(b"Content-Length: 0\r\n") + _SMUGGLED + b"GET /3 HTTP/1.1\r\nHost: a\r\n"
     b"Connection: close\r\n\r\nGET /4 HTTP/1.1\r\n\r\n"),
    ("crlf-between", _req(b"Content-Length: 1\r\n", b"x\r\n") + _SMUGGLED),
]

RESPONSE_PAYLOADS = [
    ("cl-te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + _TE_CHUNKED +
     b"\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "GET"),
    ("te-nel", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\x85\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     "GET"),
    ("te-nbsp", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xa0chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     "GET"),
    ("te-gzip-with-cl", (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n"
     b"\r\nok"), "GET"),
    ("cl-nbsp-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2,\xa02\r\n\r\nok", "GET"),
    ("cl-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", "GET"),
    ("chunk-2^64-1", b"HTTP/1.1 200 OK\r\n" + _TE_CHUNKED + b"\r\nFFFFFFFFFFFFFFFF\r\nok\r\n"
     b"0\r\n\r\n", "GET"),
    ("chunk-lf", b"HTTP/1.1 200 OK\r\n" + _TE_CHUNKED + b"\r\n2\nok\r\n0\r\n\r\n", "GET"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", "GET"),
    ("ctl-in-value", b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok", "GET"),
    ("vt-in-value", b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\nContent-Length: 2\r\n\r\nok", "GET"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "GET"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "GET"),
    ("close-delimited", b"HTTP/1.1 200 OK\r\n\r\nall of it", "GET"),
    ("http10-close-delimited", b"HTTP/1.0 200 OK\r\n\r\nall of it", "GET"),
    ("head-with-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD"),
    ("head-with-bad-length", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HEAD"),
    ("204-with-body", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", "GET"),
    ("304-chunked", b"HTTP/1.1 304 Not Modified\r\n" + _TE_CHUNKED + b"\r\n0\r\n\r\n", "GET"),
    ("interim", (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), "POST"),
    ("101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
     "GET"),
    ("status-2-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "GET"),
    ("no-reason", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET"),
    ("http2-status-line", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET"),
    ("splitting", (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n"
     b"Content-Length: 5\r\n\r\nspoof"), "GET"),
]


@pytest.mark.parametrize("data", [
    pytest.param(p[1], id=p[0], marks=list(p[2:])) for p in REQUEST_PAYLOADS])
def test_known_request_payloads(data):
    check_payload("request", data)


@pytest.mark.parametrize("data,method", [
    pytest.param(p[1], p[2], id=p[0], marks=list(p[3:])) for p in RESPONSE_PAYLOADS])
def test_known_response_payloads(data, method):
    check_payload("response", data, method)


# ====================================================================== the known bugs

def test_known_bugs():
    """Each known bug's minimal input still shows its bug (none are known now: a new one
    found by the property tests goes into KNOWN_BUGS with its minimal input); once it
    is fixed this fails: then delete the KNOWN_BUGS entry."""
    for bug in KNOWN_BUGS:
        with pytest.raises(AssertionError):
            check_payload(bug.kind, bug.data, bug.method)


def test_known_bugs_are_what_they_say():
    """Each minimal input does show its bug: we accept it and both oracles reject it."""
    for bug in KNOWN_BUGS:
        mine = _parse(bug.kind, "ours", bug.data, bug.method)[0]
        assert isinstance(mine, Msg) and bug.applies(bug.data, mine, bug.method), bug.name
        assert accepted_against_both(bug.kind, bug.data, bug.method) == [0], bug.name


# one example of each ALLOWED entry the payloads above do not show
TABLE_EXAMPLES = [
    ("request", b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", "GET"),
    ("request", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "GET"),
    ("request", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", "GET"),
    ("request", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET"),
    ("request", b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", "GET"),
    ("request", _req(_TE_CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n"), "GET"),
    ("request", _req(_TE_CHUNKED, b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), "GET"),
    ("request", _req(_TE_CHUNKED, b"5; a = b\r\nhello\r\n0\r\n\r\n"), "GET"),
    ("request", _req(_TE_CHUNKED, b"0\r\nX: a\x01b\r\n\r\n"), "GET"),
    ("request", _req(_TE_CHUNKED, b"0\r\nContent-Length: 5\r\n\r\n"), "GET"),
    ("response", (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip"
                 b"\r\n\r\nok"), "GET"),
    ("response", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok", "GET"),
    ("response", b"HTTP/1.0 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", "GET"),
    ("response", b"HTTP/1.1 103 Early Hints\r\n\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", "GET"),
    ("response", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", "GET"),
    ("response", b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n", "GET"),
    ("response", b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
     "HEAD"),
]


def test_the_table_is_exact():
    """Every ALLOWED entry is used by a known payload or a table example (no dead entry),
    and every table example passes the rules."""
    used: set[str | None] = set()
    for _name, data, *_marks in REQUEST_PAYLOADS:
        used |= {f.allowed for f in compare("request", data)[1]}
    for _name, data, method, *_marks in RESPONSE_PAYLOADS:
        used |= {f.allowed for f in compare("response", data, method)[1]}
    for kind, data, method in TABLE_EXAMPLES:
        used |= {f.allowed for f in check(kind, data, method, tolerate_bugs=False)}
    assert {a.name for a in ALLOWED} - used == set()
    assert len({a.name for a in ALLOWED}) == len(ALLOWED)


def test_the_llhttp_driver_answers_as_httptools_does():
    """The ctypes driver and httptools' own parser (fed byte by byte) agree."""
    for name, data, *_ in REQUEST_PAYLOADS:
        assert llhttp_requests(data) == httptools_requests(data), name
    for kind, data, _method in TABLE_EXAMPLES:
        if kind == "request":
            assert llhttp_requests(data) == httptools_requests(data), data
