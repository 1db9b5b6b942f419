"""Modbus RTU frames, byte for byte (test vectors of the device digest, section 4.5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apis.hardware.driver import BatteryData
from apis.hardware.modbus import (
    ModbusCrcError,
    ModbusError,
    ModbusExceptionReply,
    ModbusFrameError,
    ReadRequest,
    battery_from_registers,
    check_register_range,
    crc16,
    decode_reply,
    decode_request,
    encode_exception_reply,
    encode_read_request,
    encode_registers_reply,
    registers_from_battery,
    reply_length,
    request_length,
)

H = bytes.fromhex


def test_crc16_check_value() -> None:
    # The catalogued check value of CRC-16/MODBUS over ASCII "123456789".
    assert crc16(b"123456789") == 0x4B37
    assert crc16(b"") == 0xFFFF


def test_request_vectors() -> None:
    assert encode_read_request(1, 0x1D, 2) == H("01 04 00 1D 00 02 E1 CD")
    assert encode_read_request(1, 0x1E, 1) == H("01 04 00 1E 00 01 51 CC")
    assert decode_request(H("01 04 00 1D 00 02 E1 CD")) == ReadRequest(1, 0x1D, 2)


def test_reply_vectors() -> None:
    permitted = H("01 04 04 02 C1 00 00 AB C0")
    denied = H("01 04 04 02 C1 00 01 6A 00")
    assert encode_registers_reply(1, [705, 0]) == permitted
    assert encode_registers_reply(1, [705, 1]) == denied
    assert encode_registers_reply(1, [0]) == H("01 04 02 00 00 B9 30")
    assert decode_reply(permitted, 1, 2) == [705, 0]
    assert decode_reply(denied, 1, 2) == [705, 1]
    assert reply_length(permitted[:3]) == 9


def test_exception_vectors() -> None:
    assert encode_exception_reply(1, 0x04, 2) == H("01 84 02 C2 C1")
    assert encode_exception_reply(1, 0x04, 4) == H("01 84 04 42 C3")
    assert reply_length(H("01 84")) == 5
    with pytest.raises(ModbusExceptionReply, match="modbus exception 2: illegal data address"):
        decode_reply(H("01 84 02 C2 C1"), 1, 2)
    with pytest.raises(ModbusExceptionReply) as info:
        decode_reply(H("01 84 04 42 C3"), 1, 2)
    assert info.value.code == 4


def test_bad_crc_wrong_slave_wrong_length() -> None:
    with pytest.raises(ModbusCrcError, match="crc"):
        decode_reply(H("01 04 04 02 C1 00 00 AB C1"), 1, 2)
    with pytest.raises(ModbusFrameError, match="slave = 2"):
        decode_reply(encode_registers_reply(2, [705, 0]), 1, 2)
    with pytest.raises(ModbusFrameError, match="byte count"):
        decode_reply(encode_registers_reply(1, [705]), 1, 2)


def test_slave_side_checks() -> None:
    with pytest.raises(ModbusCrcError):
        decode_request(H("01 04 00 1D 00 02 E1 CE"))
    with pytest.raises(ModbusExceptionReply) as info:
        decode_request(H("01 03 00 1D 00 02 54 0D"))
    assert info.value.code == 1
    with pytest.raises(ModbusExceptionReply) as info:
        check_register_range(0x1D, 0)
    assert info.value.code == 3
    with pytest.raises(ModbusExceptionReply) as info:
        check_register_range(0x270F, 1)
    assert info.value.code == 2
    with pytest.raises(ModbusExceptionReply) as info:
        check_register_range(0x2700, 125)
    assert info.value.code == 2
    check_register_range(0x270E, 1)


def test_register_scaling() -> None:
    assert battery_from_registers(705, 0) == BatteryData(70.5, 3)
    assert battery_from_registers(705, 1) == BatteryData(70.5, 0)
    assert battery_from_registers(1000, 2).battery_operation_status == 3  # reserved bits ignored
    assert battery_from_registers(1000, 0).rsoc == 100.0
    assert battery_from_registers(0, 0).rsoc == 0.0
    assert registers_from_battery(70.5, True) == (705, 0)
    assert registers_from_battery(70.5, False) == (705, 1)
    assert registers_from_battery(120.0, True) == (1000, 0)


def test_request_lengths() -> None:
    assert request_length(H("01 04")) == 8
    assert request_length(H("01 10 00 00 00 01 02")) == 11
    assert request_length(H("01 2B")) is None


@given(
    slave=st.integers(1, 247),
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
)
def test_reply_round_trip(slave: int, registers: list[int]) -> None:
    frame = encode_registers_reply(slave, registers)
    assert reply_length(frame[:3]) == len(frame)
    assert decode_reply(frame, slave, len(registers)) == registers


@given(slave=st.integers(1, 247), start=st.integers(0, 0xFFFF), count=st.integers(0, 0xFFFF))
def test_request_round_trip(slave: int, start: int, count: int) -> None:
    assert decode_request(encode_read_request(slave, start, count)) == ReadRequest(
        slave, start, count
    )


@given(st.binary(max_size=300), st.integers(1, 247), st.integers(1, 125))
def test_random_bytes_give_typed_errors_only(data: bytes, slave: int, count: int) -> None:
    for decode in (lambda: decode_reply(data, slave, count), lambda: decode_request(data)):
        try:
            decode()
        except ModbusError:
            pass


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_register_range_rules(start: int, count: int) -> None:
    try:
        check_register_range(start, count)
    except ModbusExceptionReply as error:
        if not 1 <= count <= 125:
            assert error.code == 3
        else:
            assert error.code == 2
            assert start > 0x270E or start + count > 0x270F
    else:
        assert 1 <= count <= 125 and start + count <= 0x270F
