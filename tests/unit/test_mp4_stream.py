"""Mp4StreamCheck: an MP4's top-level structure judged from chunks as they stream by."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest
from support.mp4 import FTYP, MOOV, REAL_LAYOUTS, box, fake_mp4, ftyp, real_mp4

from avatar_pipeline.domain.mp4_stream import Mp4StreamCheck, Mp4StructureError

MDAT = box(b"mdat", b"\x01" * 100)


def check(chunks: Iterable[bytes]) -> Mp4StreamCheck:
    """Feed every chunk, then finish: raises Mp4StructureError for what is not a playable MP4."""
    mp4 = Mp4StreamCheck()
    for chunk in chunks:
        mp4.feed(chunk)
    mp4.finish()
    return mp4


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


# --- what is accepted ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", REAL_LAYOUTS)
def test_real_mp4s_of_every_layout_are_accepted_in_any_chunking(layout: str) -> None:
    # Given a real MP4 made by ffmpeg (index first, index last, or fragmented)
    video = real_mp4(layout)

    # When it is checked whole, in 1000-byte chunks and in 7-byte chunks, Then each time it is a playable MP4
    for size in (len(video), 1000, 7):
        assert check(pieces(video, size)).recognised


def test_a_file_split_at_every_possible_byte_is_accepted() -> None:
    # Given a small built MP4 (ftyp, moov, mdat)
    video = FTYP + MOOV + MDAT

    # When it arrives in two chunks, split at each position in turn, Then every split is accepted
    for split in range(1, len(video)):
        check([video[:split], video[split:]])


def test_the_index_may_come_after_the_media_data() -> None:
    # Given mdat before moov (ffmpeg's default without faststart), When checked, Then accepted
    check([FTYP + MDAT + MOOV])


def test_a_box_with_a_64_bit_size_is_followed_correctly() -> None:
    # Given an mdat whose size is in the 64-bit field (size 1), followed by the moov
    video = FTYP + box(b"mdat", b"\x02" * 300, large=True) + MOOV

    # When it is checked in 5-byte chunks (the 16-byte header straddles chunks), Then the moov after it is found
    check(pieces(video, 5))


def test_a_last_box_of_size_zero_runs_to_the_end_of_the_file() -> None:
    # Given a last mdat with size 0 ("to the end of the file") and bytes after its header
    video = FTYP + MOOV + struct.pack(">I4s", 0, b"mdat") + b"\x00\x00\x00\x08moov" * 10

    # When checked, Then accepted: what follows the header belongs to the mdat, even if it looks like boxes
    check([video])


def test_a_few_stray_bytes_after_the_last_box_are_tolerated() -> None:
    # Given a complete MP4 followed by three padding bytes, When checked, Then accepted (as players do)
    check([FTYP + MOOV + MDAT + b"\x00\x00\x00"])


def test_an_mp4_brand_among_the_compatible_brands_is_enough() -> None:
    # Given a major brand we do not list, but mp42 among the compatible ones
    video = ftyp(b"XAVC", b"XAVC", b"mp42") + MOOV + MDAT

    # When checked, Then accepted
    check([video])


def test_recognised_turns_true_once_the_whole_ftyp_box_has_arrived() -> None:
    # Given a check fed the ftyp box one byte at a time
    mp4 = Mp4StreamCheck()
    for index, byte in enumerate(FTYP):
        # Then it is not recognised before the ftyp box's last byte...
        assert not mp4.recognised, index
        mp4.feed(bytes([byte]))
    # ...and is right after it
    assert mp4.recognised


def test_memory_does_not_grow_with_the_media_data() -> None:
    # Given a 64 MiB MP4 fed in 1 MiB chunks
    mp4 = Mp4StreamCheck()
    video = fake_mp4(64 * 1024 * 1024)
    for chunk in pieces(video, 1024 * 1024):
        mp4.feed(chunk)
    mp4.finish()

    # Then the check kept no chunk: its only buffer is for a box header
    assert all(len(value) <= 16 for value in vars(mp4).values() if isinstance(value, bytes | bytearray))


# --- what is refused -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<html><body>Access denied</body></html>", "does not start with an 'ftyp' box"),
        (b'{"error": "not found"}', "does not start with an 'ftyp' box"),
        (struct.pack(">I4s", 8, b"ftyp"), "implausible size"),  # no brand at all
        (struct.pack(">I4s", 100_000, b"ftyp"), "implausible size"),
        (struct.pack(">I4sQ", 1, b"ftyp", 24), "implausible size"),
        (ftyp(b"heic", b"mif1", b"heic") + MOOV + MDAT, r"brands \(heic, mif1\) are not those of an MP4 video"),
        (ftyp(b"qt  ", b"qt  ") + MOOV + MDAT, "not those of an MP4 video"),
    ],
)
def test_what_does_not_start_like_an_mp4_is_refused_at_once(data: bytes, reason: str) -> None:
    # Given bytes that are no MP4 from the start, When they are fed, Then the check refuses them right away
    with pytest.raises(Mp4StructureError, match=reason):
        Mp4StreamCheck().feed(data)


@pytest.mark.parametrize(
    ("video", "reason"),
    [
        (FTYP + MDAT, "no 'moov' box"),
        (FTYP + box(b"free", b"\x00" * 50) + MDAT, "no 'moov' box"),
        (FTYP + MOOV, "no 'mdat' box"),
        (FTYP, "no 'moov' box"),
    ],
)
def test_an_ftyp_without_the_index_or_the_media_data_is_refused_at_the_end(video: bytes, reason: str) -> None:
    # Given a stream that starts like an MP4 but lacks a box a player needs
    mp4 = Mp4StreamCheck()
    mp4.feed(video)
    assert mp4.recognised

    # When the stream ends, Then it is refused, naming what is missing
    with pytest.raises(Mp4StructureError, match=reason):
        mp4.finish()


def test_a_last_box_cut_short_is_refused() -> None:
    # Given an MP4 whose mdat promises 1000 bytes but the file ends after 100
    video = FTYP + MOOV + struct.pack(">I4s", 1008, b"mdat") + b"\x00" * 100

    # When checked, Then refused as cut short
    with pytest.raises(Mp4StructureError, match="'mdat' box runs past the end of the file"):
        check([video])


def test_a_stream_ending_inside_a_64_bit_box_header_is_refused() -> None:
    # Given an MP4 ending 12 bytes into a 16-byte (64-bit size) box header
    video = FTYP + MOOV + MDAT + struct.pack(">I4sI", 1, b"mdat", 0)

    # When checked, Then refused
    with pytest.raises(Mp4StructureError, match="ends inside a box header"):
        check([video])


def test_a_stream_ending_inside_the_ftyp_box_is_refused() -> None:
    # Given only the first 12 bytes of an ftyp box, When the stream ends, Then it is refused
    with pytest.raises(Mp4StructureError, match="ends before its 'ftyp' box does"):
        check([FTYP[:12]])


def test_zeros_after_the_ftyp_box_are_not_a_box() -> None:
    # Given an ftyp followed by zeros (what a wrongly padded or corrupted file looks like)
    mp4 = Mp4StreamCheck()

    # When fed, Then refused where a box should start
    with pytest.raises(Mp4StructureError, match="no valid box at byte 24"):
        mp4.feed(FTYP + bytes(4096))


def test_a_last_box_with_a_64_bit_size_of_0_runs_to_the_end_and_the_video_is_kept() -> None:
    # Given a provider's video whose last mdat says 1 (64-bit size follows) and then 0: players have read moov by
    # then and play it, so a paid video must not be thrown away over it
    video = FTYP + MOOV + struct.pack(">I4sQ", 1, b"mdat", 0) + b"\x01" * 100

    # When checked, Then it is whole (the box runs to the end)
    check([video])


def test_a_box_smaller_than_its_own_header_is_refused() -> None:
    # Given a box declaring 4 bytes, less than its 8-byte header (it would never advance)
    with pytest.raises(Mp4StructureError, match="'free' box has an impossible size"):
        Mp4StreamCheck().feed(FTYP + struct.pack(">I4s", 4, b"free"))
