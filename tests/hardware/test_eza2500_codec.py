"""EZA2500 frames, checksums and fixed-point values, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apis.hardware.eza2500 import (
    ALARMS,
    COMMANDS,
    CURRENT_LIMITS,
    GRID_VOLTAGE,
    METER,
    MODE,
    Address,
    Command,
    EzaChecksumError,
    EzaEncodeError,
    EzaError,
    EzaNak,
    EzaValueError,
    Frame,
    FrameScanner,
    alarm_text,
    checksum,
    decode_cst,
    decode_reply,
    encode_ack,
    encode_nak,
    encode_read,
    encode_write,
    parse_frame,
    reply_scanner,
    request_scanner,
)

H = bytes.fromhex


def scan_one(scanner: FrameScanner, data: bytes) -> Frame:
    scanner.feed(data)
    frame = scanner.next_frame()
    assert frame is not None
    return frame


def test_sixteen_commands() -> None:
    assert [c.number for c in COMMANDS] == list(range(1, 17))
    assert [c.cmd for c in COMMANDS] == [
        0x00, 0x01, 0x18, 0x1A, 0x17, 0x1C, 0x1D, 0x16, 0x12, 0x09, 0x0A, 0x0D, 0x0E, 0x11,
        0x1E, 0x1F,
    ]
    assert [c.reply_length for c in COMMANDS] == [2, 4, 4, 4, 4, 12, 10, 4, 6, 16, 16, 16, 16,
                                                  20, 2, 2]


def test_checksum_is_little_endian_sum() -> None:
    assert checksum(b"") == 0
    assert checksum(bytes([0xFF] * 300)) == (300 * 0xFF) & 0xFFFF
    # 4-4 dvg 350 V, drg 0: 00+10+1A+F2+3A+00+00 = 0x0156, sent as 56 01.
    assert encode_write(GRID_VOLTAGE, {"dvg": 350, "drg": 0}) == H(
        "05 04 00 10 1A F2 3A 00 00 56 01"
    )


def test_request_frames() -> None:
    assert encode_read(MODE) == H("05 00 00 10 00 10 00")
    assert encode_read(METER) == H("05 00 00 10 09 19 00")
    assert encode_write(MODE, {"mode": 0x0014}) == H("05 02 00 10 00 14 00 24 00")
    assert encode_write(MODE, {"mode": 0x0014}, Address(1, 2)) == H("05 02 01 02 00 14 00 17 00")
    assert encode_write(ALARMS, {"d0": 0, "d1": 0}) == H("05 02 00 10 12 00 00 22 00")


def test_fixed_point_vectors() -> None:
    dvg, drg = GRID_VOLTAGE.fields
    dig = CURRENT_LIMITS.fields[1]
    assert dvg.to_raw(350) == 15090
    assert dvg.from_raw(15090) == 349.98779296875
    assert dig.to_raw(7.5) == 7864
    assert dig.from_raw(7864) == pytest.approx(7.4997, abs=1e-4)
    assert dig.to_raw(3) == 3145
    assert dig.from_raw(3145) == pytest.approx(2.9993, abs=1e-4)
    assert drg.to_raw(0.1) == 819
    assert drg.from_raw(819) == pytest.approx(0.09998, abs=1e-5)


def test_current_limits_frame() -> None:
    frame = encode_write(
        CURRENT_LIMITS,
        {"cib": 52, "dig": 7.5, "ubv": 40, "ugv": 300, "obv": 59, "ogv": 400},
    )
    # cib 8179, dig 7864, ubv 13653, ugv 12934, obv 20138, ogv 17246
    data = H("F3 1F B8 1E 55 35 86 32 AA 4E 5E 43")
    body = H("00 10 1C") + data
    assert frame == H("05 0C") + body + checksum(body).to_bytes(2, "little")


def test_meter_decoding_signed() -> None:
    raw = {"vg": 15090, "ig": -2097, "vb": 24576, "ib": 0, "wg": -1405, "wb": 0, "ic": 0,
           "tmp": 25 * 128}
    frame = encode_ack(METER, raw)
    assert frame[:5] == H("02 10 00 10 09")
    values = decode_reply(scan_one(reply_scanner(METER), frame), METER)
    assert values["vg"] == pytest.approx(349.99, abs=0.01)
    assert values["ig"] == pytest.approx(-2.0, abs=0.001)
    assert values["wg"] == pytest.approx(-1715.09, abs=0.01)
    assert values["vb"] == 72.0
    assert values["tmp"] == 25.0


def test_out_of_range_values_are_not_encoded() -> None:
    for values, name in (
        ({"dvg": 500, "drg": 0}, "dvg = 500"),
        ({"dvg": 200, "drg": 0}, "dvg = 200"),
        ({"dvg": 350, "drg": 5}, "drg = 5"),
        ({"dvg": float("nan"), "drg": 0}, "dvg = nan"),
    ):
        with pytest.raises(EzaEncodeError, match=name):
            encode_write(GRID_VOLTAGE, values)
    limits = {"cib": 52, "dig": 9, "ubv": 40, "ugv": 300, "obv": 59, "ogv": 400}
    with pytest.raises(EzaEncodeError, match=r"dig = 9 \(must be within 0..8.5162\)"):
        encode_write(CURRENT_LIMITS, limits)
    with pytest.raises(EzaEncodeError, match="read-only"):
        encode_write(METER, {})


def test_nak_codes() -> None:
    assert encode_nak(0x1A, 0xFFFE) == H("02 02 00 10 9A FE FF A7 02")
    for ercd, retryable in ((0xFFFF, False), (0xFFFE, False), (0xFFFB, False),
                            (0xFFFD, True), (0xFFFC, True), (0x1234, True)):
        frame = scan_one(reply_scanner(GRID_VOLTAGE, write=True), encode_nak(0x1A, ercd))
        with pytest.raises(EzaNak, match=f"ERCD={ercd:04x}") as info:
            decode_reply(frame, GRID_VOLTAGE, write=True)
        assert info.value.retryable is retryable


def test_bad_checksum_and_wrong_cmd() -> None:
    good = encode_ack(MODE, {"mode": 0x14})
    bad = good[:-2] + bytes([good[-2] ^ 1, good[-1]])
    with pytest.raises(EzaChecksumError, match="checksum error"):
        parse_frame(bad)
    with pytest.raises(EzaValueError, match="CMD = 0x01"):
        decode_reply(parse_frame(encode_ack(MODE, {"mode": 0x14})[:4] + b"\x01"
                                 + good[5:-2] + b"\x25\x00"), MODE)


def test_scanner_resynchronises_on_garbage() -> None:
    scanner = reply_scanner(MODE)
    scanner.feed(H("FF 00 02 77 13") + encode_ack(MODE, {"mode": 0x41}))
    frame = scanner.next_frame()
    assert frame is not None and frame.data == H("41 00")
    assert scanner.next_frame() is None
    # Half a frame: wait for the rest.
    ack = encode_ack(MODE, {"mode": 0})
    scanner.feed(ack[:4])
    assert scanner.next_frame() is None
    scanner.feed(ack[4:])
    assert scan_one(scanner, b"").data == H("00 00")


def test_cst_and_alarm_words() -> None:
    assert decode_cst(0x0002) == ("discharge", "No alarm")
    assert decode_cst(0x0005) == ("charge", "Light alarm")
    assert alarm_text(0, 0x0002) == "0000 0000 0002"
    with pytest.raises(EzaValueError, match="running state = 3"):
        decode_cst(0x0003)
    with pytest.raises(EzaValueError, match="alarm state = 3"):
        decode_cst(0x000C)


@given(dvg=st.floats(260, 390), drg=st.floats(0, 3.999))
def test_voltage_round_trip(dvg: float, drg: float) -> None:
    frame = scan_one(request_scanner(), encode_write(GRID_VOLTAGE, {"dvg": dvg, "drg": drg}))
    values = {f.name: f.from_raw(int.from_bytes(frame.data[i * 2:i * 2 + 2], "little"))
              for i, f in enumerate(GRID_VOLTAGE.fields)}
    # Truncation: never above the request, at most one step below it.
    assert dvg - 380 / 2**14 <= values["dvg"] <= dvg
    assert drg - 1 / 2**13 <= values["drg"] <= drg


@given(st.sampled_from(COMMANDS), st.data())
def test_ack_round_trip(command: Command, data: st.DataObject) -> None:
    raw = {f.name: data.draw(st.integers(*f.raw_bounds)) for f in command.fields}
    frame = scan_one(reply_scanner(command), encode_ack(command, raw))
    assert decode_reply(frame, command) == {f.name: f.from_raw(raw[f.name])
                                            for f in command.fields}


@given(st.binary(max_size=200))
def test_random_bytes_give_typed_errors_only(data: bytes) -> None:
    for scanner in (request_scanner(), reply_scanner(METER), reply_scanner(MODE)):
        scanner.feed(data)
        for _ in range(50):
            try:
                frame = scanner.next_frame()
            except EzaError:
                continue
            if frame is None:
                break
            try:
                decode_reply(frame, METER)
            except EzaError:
                pass
    try:
        parse_frame(data)
    except EzaError:
        pass


# --- replies that pass the checksum but cannot be true ------------------------------------


def test_check_reply_refuses_what_cannot_be_true() -> None:
    from apis.hardware.eza2500 import EzaImplausible, check_reply

    own, other = Address(0, 16), Address(1, 16)
    reply = parse_frame(encode_ack(MODE, {"mode": 0x14}, other))
    with pytest.raises(EzaImplausible, match=r"reply address = AD1=1 AD2=16 .*AD1=0 AD2=16"):
        check_reply(reply, MODE, own, write=False)
    assert check_reply(parse_frame(encode_ack(MODE, {"mode": 0x14})), MODE, own,
                       write=False) == {"mode": 0x14}
    swapped = parse_frame(encode_ack(MODE, {"mode": 0x1400}))  # the two data bytes swapped
    with pytest.raises(EzaImplausible, match="mode = 0x1400"):
        check_reply(swapped, MODE, own, write=False)
    request = encode_write(GRID_VOLTAGE, {"dvg": 350, "drg": 0})
    echo = parse_frame(encode_ack(GRID_VOLTAGE, {"dvg": 15091, "drg": 0}, write=True))
    with pytest.raises(EzaImplausible, match=r"4-4 echo dvg = 350\.01.* \(sent 349\.98"):
        check_reply(echo, GRID_VOLTAGE, own, write=True, request=request)
    meter = {"vg": 15090, "ig": 2 * 1048, "vb": 17000, "ib": 0, "wg": 0, "wb": 0, "ic": 0,
             "tmp": 30 * 128}  # 350 V at 2 A but no power
    wrong_power = r"wg = 0\.0 \(vg \* ig = 699\.6: must agree within 24\.0 W\)"
    with pytest.raises(EzaImplausible, match=wrong_power):
        check_reply(parse_frame(encode_ack(METER, meter)), METER, own, write=False)
