"""The fleet's wire format (shadowproxy/transport/wire.py): an exchange survives the
trip exactly; an unknown version, a malformed frame or a pickle is refused."""

from __future__ import annotations

import dataclasses
import pickle

import msgpack
import pytest

from shadowproxy.models import to_wire
from shadowproxy.transport import wire
from tests.transport.exchanges import corpus, exchange, item, response


def test_every_exchange_round_trips() -> None:
    for ex in corpus():
        entry = wire.fields(ex)
        assert entry[b"v"] == b"2"
        assert wire.read_entry(entry) == ex


def test_an_entry_says_which_sidecar_mirrored_it() -> None:
    ex = dataclasses.replace(exchange(response(item(1)), response(item(2))), instance=None)
    with pytest.raises(ValueError):
        wire.pack(ex)                    # no sidecar named: never sent unlabelled
    got = wire.read_entry(wire.fields(ex, "pod-a.ns@eu-1"))
    assert got.instance == "pod-a.ns@eu-1"
    assert dataclasses.replace(got, instance=None) == ex


def test_a_version_1_entry_is_still_read_without_a_sidecar() -> None:
    """Comparators read both versions while sidecars roll out; a version 1 entry has
    no instance (the comparator stores it under its own name, as before)."""
    ex = exchange(response(item(1)), response(item(2)))
    t = msgpack.unpackb(wire.pack(ex), raw=False)
    assert t.pop() == "pod-test"
    got = wire.read_entry({b"v": b"1", b"x": msgpack.packb(t, use_bin_type=True)})
    assert got.instance is None and dataclasses.replace(got, instance="pod-test") == ex
    # a version 1 frame with an instance, or a version 2 frame without one: refused
    for version, frame in ((b"1", wire.pack(ex)),
                           (b"2", msgpack.packb(t, use_bin_type=True))):
        with pytest.raises(wire.RefusedFrame) as exc:
            wire.read_entry({b"v": version, b"x": frame})
        assert exc.value.reason == "malformed"


@pytest.mark.parametrize("name", ["", "-pod", "pod a", "pod/a", "x" * 129, 7, None,
                                  b"pod-a"])
def test_an_instance_that_is_not_an_instance_name_is_refused(name: object) -> None:
    t = msgpack.unpackb(wire.pack(exchange(response(item(1)), response(item(1)))), raw=False)
    t[-1] = name
    with pytest.raises(wire.RefusedFrame) as exc:
        wire.read_entry({b"v": b"2", b"x": msgpack.packb(t, use_bin_type=True)})
    assert exc.value.reason == "malformed"


def test_bodies_travel_as_raw_bytes() -> None:
    ex = corpus()[6]                     # binary bodies
    t = msgpack.unpackb(wire.pack(ex), raw=False)
    assert isinstance(t[5][3], bytes) and t[5][3] == ex.primary.body


def test_an_unknown_version_is_refused_not_guessed() -> None:
    ex = exchange(response(item(1)), response(item(1)))
    for version in (b"3", b"0", b"", b"1 ", None):
        entry = {b"x": wire.pack(ex)} if version is None else {b"v": version,
                                                               b"x": wire.pack(ex)}
        with pytest.raises(wire.RefusedFrame) as exc:
            wire.read_entry(entry)
        assert exc.value.reason == "version"


@pytest.mark.parametrize("data", [
    b"\xc1", b"", msgpack.packb([1, 2, 3]), msgpack.packb({"id": "x"}),
    msgpack.packb(["id", 1.0, "ep", None, ["GET", "/", "", [], "not bytes"], [], [], None,
                   "pod-a"]),
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


def _frame(started: object = 1.0, status: object = 200, size: object = 0,
           latency: object = 0.01) -> bytes:
    resp = [status, "OK", [], b"", size, "", False, latency, None]
    ok = [200, "OK", [], b"", 0, "", False, 0.01, None]
    return msgpack.packb(["id", started, "ep", None, ["GET", "/", "", [], b""], resp, ok,
                          None, "pod-a"], use_bin_type=True)


def test_a_well_formed_frame_of_plain_numbers_is_read() -> None:
    ex = wire.read_entry({b"v": wire.VERSION, b"x": _frame()})
    assert (ex.started, ex.primary.status, ex.primary.latency) == (1.0, 200, 0.01)


@pytest.mark.parametrize("numbers", [
    {"started": 1e300}, {"started": float("nan")}, {"started": float("inf")},
    {"started": -1.0}, {"status": 2**40}, {"status": -5}, {"size": 2**64 - 1},
    {"size": -1}, {"latency": float("nan")}, {"latency": -0.5}, {"latency": float("inf")},
])
def test_numbers_no_store_can_hold_are_refused(numbers: dict[str, object]) -> None:
    """Such an entry would be judged, then fail in the store on each delivery and end
    as a dead letter after being counted compared: it is refused on the way in."""
    with pytest.raises(wire.RefusedFrame) as exc:
        wire.read_entry({b"v": wire.VERSION, b"x": _frame(**numbers)})
    assert exc.value.reason == "malformed"
