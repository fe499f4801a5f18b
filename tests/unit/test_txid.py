from __future__ import annotations

import pytest

from forwarder import InvalidTxid, Txid


def test_round_trip() -> None:
    assert Txid.parse("00000000000003e8") == 1000
    assert str(Txid(1000)) == "00000000000003e8"
    assert str(Txid((1 << 64) - 1)) == "ffffffffffffffff"
    assert repr(Txid(1)) == "Txid(0x0000000000000001)"
    assert f"{Txid(255)}" == "00000000000000ff"


@pytest.mark.parametrize(
    "text",
    ["", "3e8", "00000000000003E8", "00000000000003e8\n", " 00000000000003e8", "0x000000000003e8", "g" * 16, "1" * 17],
)
def test_rejects_anything_but_16_lowercase_hex(text: str) -> None:
    with pytest.raises(InvalidTxid, match="16 lowercase hex digits"):
        Txid.parse(text)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_rejects_out_of_range(value: int) -> None:
    with pytest.raises(InvalidTxid, match="unsigned 64-bit"):
        Txid(value)


def test_rejects_non_integers() -> None:
    with pytest.raises(InvalidTxid):
        Txid(True)
    with pytest.raises(InvalidTxid):
        Txid.parse(1000)  # type: ignore[arg-type]


def test_is_an_invalid_value_error() -> None:
    with pytest.raises(ValueError):
        Txid.parse("nope")


def test_compares_as_integer() -> None:
    assert Txid(2) >= Txid(1)
    assert max(Txid(3), Txid(9)) == Txid(9)
