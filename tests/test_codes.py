import numpy as np
import pytest

from rsir_sdk.codes import (
    as_packed,
    hamming_distances,
    pack_codes,
    topk_bruteforce,
    unpack_codes,
    validate_bits,
    within_radius,
)
from rsir_sdk.errors import CodeLengthError


def test_pack_is_big_endian_and_roundtrips():
    signed = np.array([[1, -1, -1, -1, -1, -1, -1, -1] + [-1] * 7 + [1]])
    packed = pack_codes(signed)
    assert packed.tolist() == [[128, 1]]
    assert (unpack_codes(packed, signed=True) == signed).all()
    assert (pack_codes(signed > 0) == packed).all()
    assert (pack_codes((signed > 0).astype(int)) == packed).all()


def test_random_roundtrip_many_lengths():
    rng = np.random.default_rng(1)
    for bits in (8, 16, 64, 128, 1024):
        b = rng.integers(0, 2, (50, bits))
        assert (unpack_codes(pack_codes(b), bits) == b).all()


@pytest.mark.parametrize("bits", [0, 7, 12, 32776, -8, 8.0, True])
def test_bad_bit_lengths_rejected(bits):
    with pytest.raises(CodeLengthError):
        validate_bits(bits)


def test_mixed_values_rejected():
    with pytest.raises(ValueError):
        pack_codes(np.array([[1, 0, -1, 1, 1, 1, 1, 1]]))


def test_as_packed_checks_length_and_accepts_bytes():
    one = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert as_packed(one, 64).shape == (1, 8)
    assert as_packed([one, one], 64).shape == (2, 8)
    with pytest.raises(CodeLengthError, match="128 bits"):
        as_packed(one * 2, 64)
    with pytest.raises(CodeLengthError):
        as_packed(np.zeros((2, 8), np.int64), 64)


def test_hamming_matches_naive_popcount():
    rng = np.random.default_rng(2)
    q = rng.integers(0, 256, (7, 16), dtype=np.uint8)
    db = rng.integers(0, 256, (33, 16), dtype=np.uint8)
    d = hamming_distances(q, db)
    for i in range(7):
        for j in range(33):
            assert d[i, j] == sum(bin(a ^ b).count("1") for a, b in zip(q[i], db[j]))


def test_topk_ties_broken_by_lower_index():
    db = np.array([[0], [255], [0], [1], [0]], dtype=np.uint8)
    idx, dist = topk_bruteforce(np.array([[0]], np.uint8), db, 4)
    assert idx.tolist() == [[0, 2, 4, 3]]
    assert dist.tolist() == [[0, 0, 0, 1]]


def test_within_radius_is_inclusive():
    db = np.array([[0], [1], [3], [7]], dtype=np.uint8)
    assert within_radius(np.array([[0]], np.uint8), db, 2)[0].tolist() == [0, 1, 2]
