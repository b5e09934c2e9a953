"""media_checks: the ranged reader, format identification, and images/audio measured from their content."""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import IO, cast

import mutagen
import pytest
from PIL import Image
from support.corpus import (
    ACCEPTED,
    CorpusCase,
    case_id,
    corpus,
    format_table,
    mp3,
    noise,
    partner_for,
    picture,
    render,
    sine,
)
from support.mp4 import FTYP, MOOV, box

from avatar_pipeline.domain.media_checks import (
    BLOCK_SIZE,
    AudioFacts,
    BytesSource,
    ImageFacts,
    MediaSourceError,
    RangeReader,
    identify,
    inspect_audio,
    inspect_image,
)
from avatar_pipeline.domain.validation import PairReport, validate_pair

KIB = 1024
DATA = bytes(range(256)) * 4  # 1,024 distinct-enough bytes


@dataclass
class CountingSource:
    """A source that records every ranged read, and can fail from a given request on."""

    data: bytes
    fail_from_request: int | None = None
    error: Exception = field(default_factory=lambda: ConnectionError("connection reset by peer"))
    calls: list[tuple[int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)

    def read_range(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        if self.fail_from_request is not None and len(self.calls) >= self.fail_from_request:
            raise self.error
        return self.data[offset : offset + length]


# --------------------------------------------------------------------------------------------------- RangeReader


def test_a_reader_behaves_like_bytesio_for_any_sequence_of_seeks_and_reads() -> None:
    # Given the same bytes behind a RangeReader (small blocks) and a BytesIO
    reader, reference = RangeReader(BytesSource(DATA), block_size=100), io.BytesIO(DATA)
    rng = random.Random(7)

    # When both get the same 500 random seeks (from the start, the current position, the end) and reads
    for _ in range(500):
        whence, offset = rng.choice(
            [
                (io.SEEK_SET, rng.randint(0, 1100)),
                (io.SEEK_CUR, rng.randint(-50, 300)),
                (io.SEEK_END, -rng.randint(0, 1000)),
            ]
        )
        if whence == io.SEEK_CUR and reference.tell() + offset < 0:
            continue  # BytesIO clamps such a seek to 0; a RangeReader refuses it like a real file (tested below)
        assert reader.seek(offset, whence) == reference.seek(offset, whence)
        size = rng.choice([-1, 0, 1, 7, 99, 100, 101, 250, 2000])
        # Then every read returns the same bytes and leaves the same position
        assert reader.read(size) == reference.read(size)
        assert reader.tell() == reference.tell()


def test_readinto_fills_the_buffer_and_reports_how_much() -> None:
    reader = RangeReader(BytesSource(DATA), block_size=64)
    reader.seek(1000)
    buffer = bytearray(50)

    assert reader.readinto(buffer) == 24  # only 24 bytes left
    assert bytes(buffer[:24]) == DATA[1000:]
    assert reader.readinto(buffer) == 0


def test_blocks_are_fetched_aligned_once_and_adjacent_missing_blocks_in_one_request() -> None:
    # Given a 1,024-byte source read in 100-byte blocks
    source = CountingSource(DATA)
    reader = RangeReader(source, block_size=100)

    # When 10 bytes inside block 0 are read, twice
    assert reader.read(10) == DATA[:10]
    reader.seek(0)
    reader.read(10)
    # Then block 0 was fetched once, whole
    assert source.calls == [(0, 100)]
    assert (reader.requests, reader.bytes_fetched) == (1, 100)

    # When a read spans blocks 0 to 3: blocks 1-3 come in one request
    reader.seek(50)
    assert reader.read(300) == DATA[50:350]
    assert source.calls == [(0, 100), (100, 300)]

    # When the end is read: the last, partial block (1000-1023) only
    reader.seek(-4, io.SEEK_END)
    assert reader.read() == DATA[-4:]
    assert source.calls[-1] == (1000, 24)
    assert (reader.requests, reader.bytes_fetched) == (3, 424)


def test_a_read_around_cached_blocks_fetches_only_the_gaps() -> None:
    source = CountingSource(DATA)
    reader = RangeReader(source, block_size=100)
    reader.read_range(200, 10)  # block 2
    reader.read_range(500, 10)  # block 5

    assert reader.read_range(0, 700) == DATA[:700]

    assert source.calls == [(200, 100), (500, 100), (0, 200), (300, 200), (600, 100)]
    assert reader.bytes_fetched == 700


def test_read_range_does_not_move_the_position_and_stops_at_the_end() -> None:
    reader = RangeReader(BytesSource(DATA))
    reader.seek(5)

    assert reader.read_range(1020, 100) == DATA[1020:]
    assert reader.read_range(5000, 10) == b""
    assert reader.tell() == 5


def test_seeking_past_the_end_is_allowed_and_reads_nothing_there() -> None:
    reader = RangeReader(BytesSource(DATA))

    assert reader.seek(10, io.SEEK_END) == len(DATA) + 10
    assert reader.read(5) == b""
    assert reader.read() == b""


def test_seeking_before_the_start_raises_einval_like_a_real_file() -> None:
    # mutagen seeks 128 bytes before the end to look for an ID3v1 tag and expects OSError(EINVAL) on short files.
    reader = RangeReader(BytesSource(b"short"))

    with pytest.raises(OSError, match="Invalid argument") as raised:
        reader.seek(-128, io.SEEK_END)
    assert raised.value.errno == 22


def test_a_reader_is_a_readable_seekable_binary_file_and_refuses_work_once_closed() -> None:
    reader = RangeReader(BytesSource(DATA), name="voice.mp3")
    assert (reader.readable(), reader.seekable(), reader.writable()) == (True, True, False)
    assert reader.name == "voice.mp3"
    assert reader.size == len(DATA)

    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)


def test_a_source_that_returns_fewer_bytes_than_it_has_raises_media_source_error() -> None:
    # Given a source whose size is larger than what it delivers (the object changed since its size was taken)
    @dataclass
    class Shrunk:
        size: int = 1000

        def read_range(self, offset: int, length: int) -> bytes:
            return DATA[offset : min(offset + length, 600)]

    reader = RangeReader(Shrunk())

    # When the missing part is read, Then the reader says so and remembers it
    with pytest.raises(MediaSourceError, match="changed while it was being read"):
        reader.read()
    assert isinstance(reader.failure, MediaSourceError)


def test_pillow_and_mutagen_read_through_a_range_reader() -> None:
    # Given a JPEG and an MP3 behind readers
    jpeg = RangeReader(BytesSource(picture(640, 480)))
    voice = RangeReader(BytesSource(mp3(2.5)), name="voice.mp3")

    # Then Pillow opens the image lazily (the cast: typeshed does not count a RawIOBase as IO[bytes])
    with Image.open(cast(IO[bytes], jpeg)) as image:
        assert (image.format, image.size) == ("JPEG", (640, 480))
    assert jpeg.requests == 1
    # And mutagen.File recognises the clip (it needs read/seek/tell, read(0) -> bytes; `name` is optional)
    found = mutagen.File(voice)
    assert type(found).__name__ == "MP3"
    assert found.info.length == pytest.approx(2.5, abs=0.1)


# ------------------------------------------------------------------------------------------------ identification


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WebP"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "WAV"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"\x00\x00\x00\x18ftypheix\x00\x00\x00\x00mif1heix", "HEIC"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIC"),  # major mif1, compatible heic
        (b"\x00\x00\x00\x14ftypmif1\x00\x00\x00\x00mif1", "HEIF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
        (b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00M4A isomiso2", "M4A"),
        (b"\x00\x00\x00\x1cftypisom\x00\x00\x02\x00isomiso2mp41", "MP4"),  # the tracks decide
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "QuickTime"),
        (b"BM6\x00\x00\x00\x00\x00\x00\x006\x00\x00\x00(\x00\x00\x00", "BMP"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x22", "MP3"),
        (b"\xff\xfb\x90\x64\x00", "MP3"),
        (b"\xff\xfd\x90\x64\x00", "MP2"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "AAC"),
        (b"\xff\xf9\x50\x80\x02\x1f\xfc", "AAC"),
        (b"OggS\x00\x02" + bytes(22) + b"OpusHead", "Ogg Opus"),
        (b"OggS\x00\x02" + bytes(22) + b"\x01vorbis", "Ogg Vorbis"),
        (b"fLaC\x00\x00\x00\x22", "FLAC"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "Matroska"),
        (b"%PDF-1.7\n", "PDF"),
        (b"<!DOCTYPE html><html><body>", "HTML"),
        ("Voilà ma voix, enregistrée cet été.\n".encode(), "text"),
    ],
)
def test_formats_are_identified_from_their_first_bytes(head: bytes, expected: str) -> None:
    found = identify(head)
    assert found is not None
    assert found.format == expected


@pytest.mark.parametrize("head", [b"\x00\x01\x02\x03" * 16, b"\x13\x37\xca\xfe" * 16, b"", b"\xff\xd8"])
def test_binary_junk_and_too_few_bytes_are_not_identified(head: bytes) -> None:
    assert identify(head) is None


# ---------------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_an_image_is_measured_as_displayed_after_its_exif_orientation(image_format: str) -> None:
    # Given an image stored 1000x400 whose EXIF says "rotate 90° clockwise" (6)
    data = picture(1000, 400, image_format=image_format, orientation=6)

    # When it is inspected
    facts = inspect_image(BytesSource(data), "face")

    # Then it is measured as the 400x1000 portrait it is shown as
    assert isinstance(facts, ImageFacts)
    assert (facts.format, facts.width, facts.height, facts.orientation) == (image_format, 400, 1000, 6)


def test_a_broken_exif_block_does_not_make_the_picture_unusable() -> None:
    data = picture(400, 500)
    with_junk_exif = data[:2] + b"\xff\xe1\x00\x10Exif\x00\x00JUNKJUNK" + data[2:]

    facts = inspect_image(BytesSource(with_junk_exif), "face.jpg")

    assert isinstance(facts, ImageFacts)
    assert (facts.width, facts.height, facts.orientation) == (400, 500, 1)


def test_an_image_claiming_a_gigantic_size_is_refused_from_its_header() -> None:
    # Given a PNG header announcing 20000x20000 pixels (400 MP), and almost nothing else
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
    )

    # Then it is refused without decoding anything
    reason = inspect_image(BytesSource(data), "face.png")
    assert isinstance(reason, str)
    assert reason.startswith("face.png has too many pixels to process")


@pytest.mark.parametrize("orientation", [2, 3, 4])
def test_orientations_that_do_not_turn_the_picture_sideways_keep_its_shape(orientation: int) -> None:
    facts = inspect_image(BytesSource(picture(1000, 400, orientation=orientation)), "face.jpg")
    assert isinstance(facts, ImageFacts)
    assert (facts.width, facts.height) == (1000, 400)


def test_a_large_png_is_checked_from_its_header_and_its_last_bytes() -> None:
    # Given a 9 MiB-plus PNG (incompressible noise)
    data = picture(1800, 1800, image_format="PNG", noisy=True, compress_level=0)
    assert len(data) > 9 * 1024 * KIB
    reader = RangeReader(BytesSource(data))

    # When it is inspected
    facts = inspect_image(reader, "face.png")

    # Then its size is known from two small reads: the first block and the last
    assert isinstance(facts, ImageFacts)
    assert (facts.width, facts.height, facts.integrity) == (1800, 1800, "end marker")
    assert facts.bytes_read == reader.bytes_fetched < 256 * KIB
    assert reader.requests == 2


def test_a_large_jpeg_is_checked_from_its_header_and_its_last_bytes() -> None:
    data = picture(1800, 1800, noisy=True, quality=95)
    assert len(data) > 2 * 1024 * KIB

    facts = inspect_image(BytesSource(data), "face.jpg")

    assert isinstance(facts, ImageFacts)
    assert facts.integrity == "end marker"
    assert facts.bytes_read < 256 * KIB


def test_a_jpeg_padded_after_its_end_marker_still_ends_like_a_jpeg() -> None:
    facts = inspect_image(BytesSource(picture(400, 400) + b"\x00" * 20), "face.jpg")
    assert isinstance(facts, ImageFacts)
    assert facts.integrity == "end marker"


def test_a_jpeg_with_trailing_data_is_accepted_only_after_a_full_decode() -> None:
    # Given a complete JPEG with 300 KB of something else after its end marker (like a "motion photo")
    jpeg = picture(640, 800)
    data = jpeg + noise(300_000)

    # When it is inspected
    facts = inspect_image(BytesSource(data), "face.jpg")

    # Then it is accepted because it decodes completely; the decoder stopped at the end marker
    assert isinstance(facts, ImageFacts)
    assert facts.integrity == "full decode"
    assert facts.bytes_read < len(data)


def test_a_png_cut_inside_its_header_is_damaged() -> None:
    data = picture(400, 400, image_format="PNG")[:40]
    assert inspect_image(BytesSource(data), "face.png") == (
        "face.png is truncated or damaged: it could not be read as a complete PNG image"
    )


def test_an_unknown_binary_file_is_named_as_unrecognised() -> None:
    assert inspect_image(BytesSource(b"\x00\x01\x02\x03" * 100), "face.jpg") == (
        "face.jpg is not in a format this pipeline recognises; use JPEG or PNG"
    )


@pytest.mark.parametrize("failing_request", [1, 2])
def test_a_failing_source_is_raised_not_turned_into_a_rejection(failing_request: int) -> None:
    # Given a source that breaks on the first request (the header) or the second (the tail of a large file)
    data = picture(1800, 1800, image_format="PNG", noisy=True, compress_level=0)
    source = CountingSource(data, fail_from_request=failing_request)

    # When it is inspected, Then the source's error comes out, even where Pillow would have swallowed it
    with pytest.raises(ConnectionError):
        inspect_image(source, "face.png")


# ----------------------------------------------------------------------------------------------------------- audio


def test_a_large_mp3_is_measured_from_its_first_block() -> None:
    # Given a 4.9 MiB MP3 of 256 s
    data = mp3(256, rate=22050, bitrate="160k")
    assert len(data) > 4.5 * 1024 * KIB
    reader = RangeReader(BytesSource(data))

    # When it is inspected
    facts = inspect_audio(reader, "voice.mp3")

    # Then one 64 KiB block was enough
    assert isinstance(facts, AudioFacts)
    assert facts.duration_seconds == pytest.approx(256, abs=0.2)
    assert facts.bytes_read == reader.bytes_fetched <= 64 * KIB
    assert reader.requests == 1


def test_a_large_id3_tag_is_skipped_not_read() -> None:
    # Given an MP3 behind 1 MiB of ID3v2 (think embedded cover art; here the tag's padding)
    size = 1024 * KIB
    synchsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    data = b"ID3\x04\x00\x00" + synchsafe + bytes(size) + mp3(2.5)
    reader = RangeReader(BytesSource(data))

    # When it is inspected
    facts = inspect_audio(reader, "voice.mp3")

    # Then only the first block and the one after the tag were read
    assert isinstance(facts, AudioFacts)
    assert facts.format == "MP3"
    assert facts.duration_seconds == pytest.approx(2.5, abs=0.1)
    assert reader.bytes_fetched <= 128 * KIB


def test_an_id3_tag_in_front_of_raw_aac_is_seen_through() -> None:
    adts = render(*sine(2.5), "-c:a", "aac", "-b:a", "32k", "-f", "adts", suffix=".aac")
    data = b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(16) + adts

    facts = inspect_audio(BytesSource(data), "voice.aac")

    assert isinstance(facts, AudioFacts)
    assert facts.format == "AAC"


def test_an_audio_only_mp4_counts_as_m4a() -> None:
    data = render(*sine(2.5), "-c:a", "aac", "-b:a", "32k", "-f", "mp4", suffix=".mp4")
    assert data[8:12] == b"isom"

    facts = inspect_audio(BytesSource(data), "voice.m4a")

    assert isinstance(facts, AudioFacts)
    assert (facts.format, facts.sample_rate, facts.channels) == ("M4A", 44100, 1)


def test_an_m4a_is_judged_from_its_box_headers_without_reading_what_lies_between() -> None:
    # Given a real M4A (index first) followed by a 4 MiB box and a small one
    m4a = render(*sine(2.5), "-c:a", "aac", "-b:a", "32k", "-movflags", "+faststart", suffix=".m4a")
    reader = RangeReader(BytesSource(m4a + box(b"free", bytes(4 * 1024 * 1024)) + box(b"skip")))

    # When it is inspected
    facts = inspect_audio(reader, "voice.m4a")

    # Then it is measured from the first block and the one holding the last box's header, not the 4 MiB between
    assert isinstance(facts, AudioFacts)
    assert (facts.format, reader.requests) == ("M4A", 2)
    assert facts.bytes_read < 2 * BLOCK_SIZE


M4A_MDAT = box(b"mdat", bytes(50))
# A track whose first mdia child declares 3 bytes (less than its header), then a good mdia holding a sound handler.
TRAK_WITH_A_BAD_CHILD = box(b"trak", struct.pack(">I4s", 3, b"mdia") + box(b"mdia", box(b"hdlr", bytes(8) + b"soun")))
# A video track whose trak and mdia headers carry 64-bit sizes.
VIDEO_TRAK_IN_64_BIT_BOXES = box(b"trak", box(b"mdia", box(b"hdlr", bytes(8) + b"vide"), large=True), large=True)
IS_DAMAGED = "is truncated or damaged:"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            FTYP + struct.pack(">I4s", 4, b"free") + MOOV + M4A_MDAT,
            f"{IS_DAMAGED} its 'free' box has an impossible size (4)",
        ),
        (
            FTYP + MOOV + M4A_MDAT + struct.pack(">I4sI", 1, b"mdat", 0),
            f"{IS_DAMAGED} its 'mdat' box header is cut off",
        ),
        (
            FTYP + MOOV + struct.pack(">I4s", 1000, b"mdat") + bytes(92),
            f"{IS_DAMAGED} its 'mdat' box runs past the end of the file",
        ),
        (FTYP + box(b"free") * 4096 + MOOV + M4A_MDAT, f"{IS_DAMAGED} it has an implausible number of top-level boxes"),
        (FTYP + M4A_MDAT, f"{IS_DAMAGED} it has no 'moov' box (the index of its audio)"),
        (FTYP + box(b"moov", bytes(17 * 1024 * 1024)) + M4A_MDAT, f"{IS_DAMAGED} its 'moov' box is implausibly large"),
        (FTYP + box(b"moov", TRAK_WITH_A_BAD_CHILD) + M4A_MDAT, "has no audio track"),
        (
            FTYP + box(b"moov", VIDEO_TRAK_IN_64_BIT_BOXES) + M4A_MDAT,
            "is a video (an MP4 with a picture track); use an audio-only MP3, WAV, M4A or AAC file",
        ),
    ],
    ids=["box-too-small", "header-cut", "box-cut", "too-many-boxes", "no-moov", "huge-moov", "bad-child", "video"],
)
def test_an_m4a_whose_boxes_are_broken_or_hold_no_sound_track_is_refused_saying_why(data: bytes, reason: str) -> None:
    # Given an MP4-branded file whose boxes are damaged, or whose tracks include a picture or no sound
    # When inspected as audio
    outcome = inspect_audio(BytesSource(data), "voice.m4a")

    # Then the reason names the file and what is wrong (a bad child header quietly ends its parent's children)
    assert outcome == f"voice.m4a {reason}"


def test_an_id3_tag_with_nothing_after_it_is_damaged() -> None:
    data = b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(16)
    assert inspect_audio(BytesSource(data), "voice.mp3") == (
        "voice.mp3 is truncated or damaged: it holds an ID3 tag and no audio"
    )


def test_a_failing_source_is_raised_from_audio_inspection_too() -> None:
    source = CountingSource(mp3(2.5), fail_from_request=1, error=TimeoutError("read timed out"))
    with pytest.raises(TimeoutError):
        inspect_audio(source, "voice.mp3")


# ---------------------------------------------------------------------------------------------- the whole corpus


def _validate(case: CorpusCase) -> tuple[PairReport, int]:
    partner = partner_for(case)
    image, audio = (case, partner) if case.role == "image" else (partner, case)
    report = validate_pair(
        image.source(), image.s3_object(), audio.source(), audio.s3_object(), "wavespeed", "kling-v1-std", {}
    )
    return report, report.image_bytes_read if case.role == "image" else report.audio_bytes_read


def test_the_corpus_is_big_enough_and_covers_both_roles() -> None:
    cases = corpus()
    assert len(cases) >= 28
    assert {case.role for case in cases} == {"image", "audio"}
    assert sum(case.expected == ACCEPTED for case in cases) >= 10


@pytest.mark.parametrize("case", corpus(), ids=case_id)
def test_every_corpus_case_gets_its_expected_outcome(case: CorpusCase) -> None:
    # Given the case paired with a valid file of the other role
    # When the pair is validated
    report, bytes_read = _validate(case)

    # Then it is accepted, or rejected with exactly the one reason expected, naming the file
    if case.expected == ACCEPTED:
        assert report.problems == []
        assert (report.image if case.role == "image" else report.audio) is not None
    else:
        assert len(report.problems) == 1, report.problems
        assert case.expected in report.problems[0]
        assert report.problems[0].startswith(case.file_name)
    # A file the S3 event's size already rules out is not read at all; no file is read more than once
    if case.declared_size is not None or case.size == 0:
        assert bytes_read == 0
    else:
        assert 0 < bytes_read <= case.size


@pytest.mark.parametrize(
    ("name", "audio_format", "seconds", "sample_rate", "channels"),
    [
        ("mp3-2.0-s", "MP3", 2.04, 44100, 1),  # MP3 rounds up to whole 1,152-sample frames
        ("wav-2.0-s-8-kHz-mono", "WAV", 2.0, 8000, 1),
        ("wav-48-kHz-stereo", "WAV", 2.5, 48000, 2),
        ("wav-streamed-sizes", "WAV", 3.0, 8000, 1),  # sizes 0xFFFFFFFF: measured from the bytes present
        ("mp3-48-kHz-stereo", "MP3", 2.54, 48000, 2),
        ("mp3-60.1-s", "MP3", 60.26, 8000, 1),
        ("mp3-300.5-s", "MP3", 300.67, 8000, 1),
        ("m4a", "M4A", 2.52, 44100, 2),
        ("aac-adts", "AAC", 2.52, 44100, 1),  # ADTS: estimated from the bitrate and the size
    ],
)
def test_audio_facts_are_measured_from_the_streams(
    name: str, audio_format: str, seconds: float, sample_rate: int, channels: int
) -> None:
    (case,) = [case for case in corpus() if case.role == "audio" and case.name == name]

    facts = inspect_audio(BytesSource(case.data), case.file_name)

    assert isinstance(facts, AudioFacts)
    assert (facts.format, facts.sample_rate, facts.channels) == (audio_format, sample_rate, channels)
    assert facts.duration_seconds == pytest.approx(seconds, abs=0.02)


def test_print_the_corpus_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`pytest tests/unit/test_media_checks.py -k table -s` shows what each case costs to check."""
    rows = []
    for case in corpus():
        report, bytes_read = _validate(case)
        outcome = "accepted" if report.accepted else "rejected: " + "; ".join(report.problems)
        rows.append((f"{case.role}:{case.name}", outcome, f"{bytes_read:,}", f"{case.size:,}"))
    table = format_table(rows, ["case", "outcome", "bytes read", "file size"])
    with capsys.disabled():
        print("\n" + table)
    assert len(rows) == len(corpus())
