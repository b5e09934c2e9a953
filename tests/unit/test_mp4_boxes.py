"""mp4_boxes: box headers read one way, boxes walked side by side, ftyp brands listed."""

from __future__ import annotations

import struct

import pytest
from support.mp4 import FTYP, MOOV, box, ftyp, real_mp4

from avatar_pipeline.domain.mp4_boxes import (
    LONG_HEADER,
    SHORT_HEADER,
    Box,
    BoxError,
    BoxHeader,
    ftyp_brands,
    header_length,
    parse_header,
    walk_boxes,
)


class Reads:
    """Bytes in memory, read like a RandomAccessSource; every read is recorded."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]


def walk(data: bytes) -> list[Box]:
    return list(walk_boxes(Reads(data), 0, len(data)))


# --- one header --------------------------------------------------------------------------------------------------


def test_a_32_bit_size_and_a_type_make_an_8_byte_header() -> None:
    # Given the start of a 100-byte free box, When its header is parsed, Then size and type are read from 8 bytes
    assert parse_header(struct.pack(">I4s", 100, b"free") + b"payload") == BoxHeader(b"free", 100, SHORT_HEADER)


def test_a_size_of_1_means_a_64_bit_size_follows_in_a_16_byte_header() -> None:
    # Given an mdat larger than 4 GiB, whose 32-bit size is 1 and whose real size follows the type
    data = struct.pack(">I4sQ", 1, b"mdat", 5 * 2**30)

    # When its header is parsed, Then the size is the 64-bit one and the header is 16 bytes
    assert parse_header(data) == BoxHeader(b"mdat", 5 * 2**30, LONG_HEADER)


@pytest.mark.parametrize(
    ("start", "length"),
    [(b"", 8), (b"\x00\x00", 8), (b"\x00\x00\x00\x18", 8), (b"\x00\x00\x00\x01", 16), (b"\x00\x00\x00\x01mdat", 16)],
)
def test_the_first_four_bytes_tell_how_long_the_header_is(start: bytes, length: int) -> None:
    # Given the first bytes of a header as they arrive, When asked how long it is, Then 16 only once size 1 shows
    assert header_length(start) == length


def test_a_header_cut_inside_its_64_bit_size_is_refused_naming_the_box() -> None:
    # Given 12 of the 16 bytes of a 64-bit header, When parsed, Then BoxError names the box
    with pytest.raises(BoxError, match="its 'mdat' box header is cut off"):
        parse_header(struct.pack(">I4sI", 1, b"mdat", 0))


def test_fewer_than_8_bytes_are_no_header() -> None:
    # Given 5 bytes, When parsed, Then BoxError: there is not even a type to name
    with pytest.raises(BoxError, match="it ends inside a box header"):
        parse_header(b"\x00\x00\x00\x10m")


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (struct.pack(">I4s", 4, b"free"), 4),  # smaller than its 8-byte header
        (struct.pack(">I4s", 1, b"free") + struct.pack(">Q", 12), 12),  # smaller than its 16-byte header
        (struct.pack(">I4s", 1, b"free") + struct.pack(">Q", 0), 0),  # a 64-bit 0 is a size, not "to the end"
    ],
)
def test_a_box_smaller_than_its_own_header_has_an_impossible_size(data: bytes, size: int) -> None:
    # Given a header declaring fewer bytes than the header itself takes (the next box would start inside it)
    header = parse_header(data)

    # When its size is checked, Then BoxError says so with the declared size
    assert not header.to_end
    with pytest.raises(BoxError, match=rf"its 'free' box has an impossible size \({size}\)"):
        header.check_size()


def test_a_32_bit_size_of_0_means_the_box_runs_to_the_end() -> None:
    # Given a header whose 32-bit size is 0, When parsed, Then it runs to the end, which is a possible size
    header = parse_header(struct.pack(">I4s", 0, b"mdat"))

    assert header.to_end
    header.check_size()


def test_any_byte_of_a_type_shows_in_its_name() -> None:
    # Given a type of bytes that are not ASCII letters, When named, Then each byte keeps a character
    assert parse_header(struct.pack(">I", 8) + b"\x00\xa9\xffz").name == "\x00©ÿz"


# --- boxes side by side ------------------------------------------------------------------------------------------


def test_boxes_are_walked_in_order_with_their_offsets() -> None:
    # Given an ftyp, a moov and an mdat with a 64-bit size
    mdat = box(b"mdat", b"\x01" * 40, large=True)
    data = FTYP + MOOV + mdat

    # When walked, Then each box comes with where it starts, where its payload starts and where it ends
    assert walk(data) == [
        Box(b"ftyp", 0, 8, 24),
        Box(b"moov", 24, 32, 40),
        Box(b"mdat", 40, 56, 40 + len(mdat)),
    ]


def test_only_the_headers_are_read_never_more_than_16_bytes_or_past_the_end() -> None:
    # Given two large boxes and a 10-byte box last
    data = box(b"mdat", bytes(5000)) + box(b"free", bytes(3000)) + box(b"skip", b"\x00\x00")
    reads = Reads(data)

    # When walked
    list(walk_boxes(reads, 0, len(data)))

    # Then one read per header, 16 bytes at most, and the last one stops at the end
    assert reads.calls == [(0, 16), (5008, 16), (8016, 10)]


def test_a_walk_is_lazy_and_reads_a_header_only_when_the_next_box_is_asked_for() -> None:
    # Given a walk over three boxes
    reads = Reads(FTYP + MOOV + box(b"mdat"))
    boxes = walk_boxes(reads, 0, len(reads.data))

    # When only the first box is taken, Then only its header was read
    assert next(boxes).type == b"ftyp"
    assert reads.calls == [(0, 16)]


def test_a_box_of_size_0_takes_the_rest_even_what_looks_like_boxes() -> None:
    # Given a last mdat of size 0 followed by bytes that look like moov boxes
    data = FTYP + struct.pack(">I4s", 0, b"mdat") + MOOV * 3

    # When walked, Then the mdat ends at the end and nothing after it is a box
    assert walk(data)[1:] == [Box(b"mdat", 24, 32, len(data))]


def test_a_box_of_size_0_inside_a_parent_ends_with_the_parent() -> None:
    # Given a moov whose payload is a trak of size 0 and more bytes, followed by an mdat
    data = box(b"moov", struct.pack(">I4s", 0, b"trak") + bytes(20)) + box(b"mdat")

    # When the moov's payload is walked, Then the trak ends where the moov does, not at the end of the file
    assert list(walk_boxes(Reads(data), 8, 36)) == [Box(b"trak", 8, 16, 36)]


def test_a_box_running_past_the_end_is_yielded_for_the_caller_to_judge() -> None:
    # Given an mdat promising 1000 bytes in a file that ends 100 bytes into it
    data = FTYP + struct.pack(">I4s", 1000, b"mdat") + bytes(92)

    # When walked, Then the mdat is there with its declared end, past the data's
    assert walk(data)[-1] == Box(b"mdat", 24, 32, 1024)


def test_fewer_than_8_bytes_after_the_last_box_end_the_walk() -> None:
    # Given a whole box and 7 stray bytes, When walked, Then only the box
    assert walk(MOOV + bytes(7)) == [Box(b"moov", 0, 8, 16)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (MOOV + struct.pack(">I4s", 4, b"free") + MOOV, r"its 'free' box has an impossible size \(4\)"),
        (MOOV + struct.pack(">I4sI", 1, b"mdat", 0), "its 'mdat' box header is cut off"),
    ],
)
def test_a_walk_stops_with_box_error_at_a_bad_header_after_the_good_boxes(data: bytes, reason: str) -> None:
    # Given a good box and then a bad header
    boxes = walk_boxes(Reads(data), 0, len(data))

    # When walked, Then the good box comes first, and then BoxError says what is wrong
    assert next(boxes).type == b"moov"
    with pytest.raises(BoxError, match=reason):
        next(boxes)


def test_a_real_mp4_walks_to_its_last_byte() -> None:
    # Given a real fragmented MP4 made by ffmpeg (moov, then moof/mdat pairs), When walked
    video = real_mp4("fragmented")
    boxes = walk(video)

    # Then it starts with ftyp and moov, has fragments, and its last box ends at its last byte
    assert [found.type for found in boxes[:2]] == [b"ftyp", b"moov"]
    assert {b"moof", b"mdat"} <= {found.type for found in boxes}
    assert boxes[-1].end == len(video)


# --- ftyp brands -------------------------------------------------------------------------------------------------


def test_the_brands_of_an_ftyp_are_its_major_brand_and_the_listed_ones() -> None:
    # Given an ftyp with major brand mp42 and three compatible brands, When its payload is read
    payload = ftyp(b"mp42", b"isom", b"mp42", b"avc1")[SHORT_HEADER:]

    # Then the major brand comes apart from the compatible ones (the minor version is not a brand)
    assert ftyp_brands(payload) == (b"mp42", frozenset({b"isom", b"mp42", b"avc1"}))


def test_a_brand_cut_short_is_left_out() -> None:
    # Given an ftyp payload ending 2 bytes into its second compatible brand, When read, Then only the whole one
    assert ftyp_brands(b"M4A \x00\x00\x00\x00M4A is") == (b"M4A ", frozenset({b"M4A "}))
