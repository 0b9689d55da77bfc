"""Protocol decoding: every bad frame becomes one ProtocolError with a clear reason."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.protocol import (
    PROTOCOL_VERSION,
    Heartbeat,
    ProtocolError,
    Refresh,
    Register,
    ServerStatus,
    Status,
    decode_agent_message,
    decode_balancer_message,
    encode,
)


def test_round_trip():
    message = Register(
        version=PROTOCOL_VERSION,
        name="gpu-1",
        address="http://10.0.0.1:8080",
        status=ServerStatus(condition="ready", model="gemma", slots_total=4, slots_processing=1),
        api_key="k",
    )
    assert decode_agent_message(encode(message)) == message
    assert decode_agent_message(encode(Heartbeat())) == Heartbeat()
    timed = Status(ServerStatus(condition="ready"), read_age=0.25)
    assert decode_agent_message(encode(timed)) == timed
    spanned = Status(ServerStatus(condition="ready"), read_age=0.25, read_end_age=0.05)
    assert decode_agent_message(encode(spanned)) == spanned
    # an agent that says nothing of the read's age (before protocol 1.1) is fine
    assert decode_agent_message(b'{"type":"status","status":{"condition":"ready"}}') == Status(
        ServerStatus(condition="ready")
    )
    assert decode_balancer_message(encode(Refresh())) == Refresh()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"type": "launch_missiles"}', "Invalid value 'launch_missiles'"),
        (b'{"no_type": 1}', "missing required field `type`"),
        (b'{"type": "status"}', "missing required field `status`"),
        (b'{"type": "status", "status": {"condition": "sleepy"}}', "$.status.condition"),
        (
            b'{"type": "status", "status": {"condition": "ready", "slots_total": -3}}',
            "$.status.slots_total",
        ),
        (
            b'{"type": "status", "status": {"condition": "ready", "slots_total": "4"}}',
            "Expected `int`, got `str`",
        ),
        (b"\xff\xfe", "malformed JSON"),
        (b'{"type": "status", "status": {"condition": "ready"}, "read_age": -1}', "$.read_age"),
        (b'{"type": "status", "status": {"condition": "ready"}, "read_age": "x"}', "$.read_age"),
        (
            b'{"type": "status", "status": {"condition": "ready"}, "read_end_age": -0.1}',
            "$.read_end_age",
        ),
    ],
)
def test_bad_frames_give_clear_errors(frame, reason):
    with pytest.raises(ProtocolError) as info:
        decode_agent_message(frame)
    assert reason in str(info.value)


def test_other_protocol_versions_are_refused():
    frame = encode(Register(version=99, name="a", address="http://a", status=ServerStatus("ready")))
    with pytest.raises(ProtocolError, match="unsupported protocol version 99"):
        decode_agent_message(frame)


def test_huge_names_are_refused():
    frame = encode(Status(ServerStatus("ready"))).replace(b"{", b"{", 1)
    assert decode_agent_message(frame) == Status(ServerStatus("ready"))
    register = (
        b'{"type":"register","version":1,"name":"' + b"x" * 300 + b'","address":"http://a",'
        b'"status":{"condition":"ready"}}'
    )
    with pytest.raises(ProtocolError, match="length <= 256"):
        decode_agent_message(register)


def test_unicode_names_are_fine():
    frame = (
        '{"type":"register","version":1,"name":"ゲーム-gpu 🚀","address":"http://a",'
        '"status":{"condition":"ready"}}'
    ).encode()
    assert decode_agent_message(frame).name == "ゲーム-gpu 🚀"


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_any_frame_decodes_or_is_a_protocol_error(data):
    from corral.protocol.messages import decode_desired_state

    for decode in (decode_agent_message, decode_balancer_message, decode_desired_state):
        with contextlib.suppress(ProtocolError):
            decode(data)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type": "stat\xa3us"}',  # a tag that is not UTF-8
        b'{"type": "status", "status": {"condition": "re\xa3dy"}}',  # an enum value
    ],
)
def test_bytes_that_are_not_utf8_are_a_protocol_error(frame: bytes):
    """msgspec raises UnicodeDecodeError for some of these (found by benchmarks/fuzz.py):
    the decoder's one error type covers them too."""
    with pytest.raises(ProtocolError, match="malformed JSON"):
        decode_agent_message(frame)


def test_a_start_in_progress_travels_and_older_peers_ignore_it():
    import msgspec

    from corral.protocol import messages as m

    info = m.SupervisorInfo(
        state="starting", step="copying", copied_bytes=5, copy_bytes=10, copy_time_s=None
    )
    status = m.Status(m.ServerStatus(condition="loading", supervisor=info))
    assert decode_agent_message(encode(status)) == status

    class OldInfo(msgspec.Struct):  # a balancer from before these fields
        state: str
        restarts: int = 0

    wire = msgspec.json.encode(info)
    assert msgspec.json.decode(wire, type=OldInfo) == OldInfo("starting")
    with pytest.raises(msgspec.ValidationError):  # a byte count is never negative
        msgspec.json.decode(b'{"state":"starting","copied_bytes":-1}', type=m.SupervisorInfo)
