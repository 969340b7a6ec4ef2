"""The fleet's wire format (shadowproxy/transport/wire.py): an exchange survives the
trip exactly; an unknown version, a malformed frame or a pickle is refused."""

from __future__ import annotations

import pickle

import msgpack
import pytest

from shadowproxy.models import to_wire
from shadowproxy.transport import wire
from tests.transport.exchanges import corpus, exchange, item, response


def test_every_exchange_round_trips() -> None:
    for ex in corpus():
        entry = wire.fields(ex)
        assert entry[b"v"] == b"1"
        assert wire.read_entry(entry) == ex


def test_bodies_travel_as_raw_bytes() -> None:
    ex = corpus()[6]                     # binary bodies
    t = msgpack.unpackb(wire.pack(ex), raw=False)
    assert isinstance(t[5][3], bytes) and t[5][3] == ex.primary.body


def test_an_unknown_version_is_refused_not_guessed() -> None:
    ex = exchange(response(item(1)), response(item(1)))
    for version in (b"2", b"0", b"", None):
        entry = {b"x": wire.pack(ex)} if version is None else {b"v": version,
                                                               b"x": wire.pack(ex)}
        with pytest.raises(wire.RefusedFrame) as exc:
            wire.read_entry(entry)
        assert exc.value.reason == "version"


@pytest.mark.parametrize("data", [
    b"\xc1", b"", msgpack.packb([1, 2, 3]), msgpack.packb({"id": "x"}),
    msgpack.packb(["id", 1.0, "ep", None, ["GET", "/", "", [], "not bytes"], [], [], None]),
])
def test_a_malformed_frame_is_refused(data: bytes) -> None:
    with pytest.raises(wire.RefusedFrame) as exc:
        wire.read_entry({b"v": wire.VERSION, b"x": data})
    assert exc.value.reason == "malformed"


def test_a_pickle_is_never_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (pytest.fail, ("a pickle was loaded",))
    ex = exchange(response(item(1)), response(item(1)))
    for payload in (pickle.dumps(Boom()), pickle.dumps(to_wire(ex))):
        with pytest.raises(wire.RefusedFrame):
            wire.read_entry({b"v": wire.VERSION, b"x": payload})
