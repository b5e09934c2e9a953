"""What an uploaded image or audio clip really is, measured from its content while reading as little as possible.

Domain code (no AWS, no HTTP): the bytes come from a `RandomAccessSource` (the S3 adapter implements it with ranged
GETs). `RangeReader` turns a source into a seekable file object that fetches aligned blocks on demand and caches
them, so Pillow and mutagen parse headers without the whole object being downloaded.

`inspect_image` / `inspect_audio` return facts (format, size, duration, ...) or, for a file no provider could use,
one human reason naming the file. They do not apply provider limits: `validation` does that with the facts.

Reading failures of the *source* (network, permissions, an object that changed while being read) are never turned
into a reason: they propagate, so the caller can retry instead of rejecting the user's upload.
"""

from __future__ import annotations

import errno
import io
import math
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol, cast

from mutagen.aac import AACInfo
from mutagen.mp3 import MPEGInfo
from mutagen.mp4 import MP4
from mutagen.wave import WaveStreamInfo
from PIL import Image

from avatar_pipeline.domain.mp4_boxes import Box, BoxError, ftyp_brands, walk_boxes

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BLOCK_SIZE = 64 * 1024
SNIFF_BYTES = 512
IMAGE_FORMATS = ("JPEG", "PNG")
AUDIO_FORMATS = ("MP3", "WAV", "M4A", "AAC")

# A complete JPEG ends with the EOI marker; some writers pad a few bytes after it.
JPEG_END_SLACK = 32
JPEG_PADDING = frozenset(b"\x00\xff\r\n ")
PNG_IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"
EXIF_ORIENTATION = 0x0112
MAX_MOOV_BYTES = 16 * 1024 * 1024
MAX_TOP_LEVEL_BOXES = 4096


class MediaSourceError(Exception):
    """The source could not deliver the bytes it claimed to have: not a fault of the file's content."""


class RandomAccessSource(Protocol):
    """Bytes that can be read at any offset: an S3 object (ranged GETs), a local file, bytes in memory."""

    @property
    def size(self) -> int: ...

    def read_range(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer only at the end of the data)."""
        ...


@dataclass(frozen=True)
class BytesSource:
    """A RandomAccessSource over bytes in memory (tests, local tools)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read_range(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class RangeReader(io.RawIOBase):
    """A read-only, seekable binary file over a RandomAccessSource.

    Reads fetch the aligned `block_size` blocks they touch (adjacent missing blocks in one request) and keep them,
    so a parser re-reading a header costs nothing. `bytes_fetched` and `requests` count what reached the source.
    Seeking past the end is allowed (reads there return b""); seeking before the start raises OSError(EINVAL) like
    a real file, which mutagen relies on. `name` is optional: only `mutagen.File` looks at it (its extension nudges
    the format guess), so it defaults to "" to keep detection about content.
    """

    def __init__(self, source: RandomAccessSource, *, block_size: int = BLOCK_SIZE, name: str = "") -> None:
        super().__init__()
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self._source = source
        self._size = source.size
        self._block_size = block_size
        self._blocks: dict[int, bytes] = {}
        self._position = 0
        self.name = name
        self.bytes_fetched = 0
        self.requests = 0
        self.failure: BaseException | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self._block_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if target < 0:
            raise OSError(errno.EINVAL, "Invalid argument: seek before the start of the data")
        self._position = target
        return target

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        data = self.read_range(self._position, size)
        self._position += len(data)
        return data

    def readall(self) -> bytes:
        self._check_open()
        data = self.read_range(self._position, max(0, self._size - self._position))
        self._position += len(data)
        return data

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._check_open()
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self.read_range(self._position, len(target))
            target[: len(data)] = data
        self._position += len(data)
        return len(data)

    def read_range(self, offset: int, length: int) -> bytes:
        """Bytes at `offset` without moving the position (so a RangeReader is itself a RandomAccessSource)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        stop = min(self._size, offset + length)
        if offset >= stop:
            return b""
        first, last = offset // self._block_size, (stop - 1) // self._block_size
        self._fetch(first, last)
        base = first * self._block_size
        if first == last:
            return self._blocks[first][offset - base : stop - base]
        joined = b"".join(self._blocks[index] for index in range(first, last + 1))
        return joined[offset - base : stop - base]

    def raise_if_failed(self) -> None:
        """Re-raise a source failure a parser may have swallowed (Pillow turns read errors into "not an image")."""
        if self.failure is not None:
            raise self.failure

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _fetch(self, first: int, last: int) -> None:
        index = first
        while index <= last:
            if index in self._blocks:
                index += 1
                continue
            run_end = index
            while run_end < last and run_end + 1 not in self._blocks:
                run_end += 1
            start = index * self._block_size
            data = self._request(start, min(self._size, (run_end + 1) * self._block_size) - start)
            for block in range(index, run_end + 1):
                offset = (block - index) * self._block_size
                self._blocks[block] = data[offset : offset + self._block_size]
            index = run_end + 1

    def _request(self, offset: int, length: int) -> bytes:
        self.requests += 1
        try:
            data = self._source.read_range(offset, length)
        except Exception as error:
            self.failure = error
            raise
        self.bytes_fetched += len(data)
        if len(data) != length:
            self.failure = MediaSourceError(
                f"asked for {length:,} bytes at offset {offset:,} of a {self._size:,}-byte object and got"
                f" {len(data):,}: the object changed while it was being read, or the source is broken"
            )
            raise self.failure
        return data


@dataclass(frozen=True)
class ImageFacts:
    format: str  # "JPEG" or "PNG", from the content (not the file name)
    width: int  # as displayed: after the EXIF orientation
    height: int
    mode: str  # Pillow's mode: "RGB", "L", "CMYK", "I;16", ...
    orientation: int  # EXIF orientation, 1 when absent; 5-8 swap width and height
    integrity: str  # how completeness was established: "end marker" or "full decode"
    bytes_read: int  # fetched from the source


@dataclass(frozen=True)
class AudioFacts:
    format: str  # "MP3", "WAV", "M4A" or "AAC", from the content
    duration_seconds: float
    sample_rate: int
    channels: int
    bytes_read: int  # fetched from the source


# ------------------------------------------------------------------------------------------------- identification


@dataclass(frozen=True)
class Identified:
    format: str  # short name, e.g. "JPEG", "WebP", "Ogg Vorbis"
    description: str  # for messages, with its article: "a WebP image"


HEIC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
M4A_BRANDS = frozenset({b"M4A ", b"M4B ", b"F4A ", b"F4B "})
MP4_VIDEO_BRANDS = frozenset({b"M4V ", b"M4VH", b"M4VP", b"f4v "})
BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def identify(head: bytes) -> Identified | None:
    """The format of a file from its first bytes (SNIFF_BYTES are plenty); None when it is not one we know."""
    for prefix, found in _SIMPLE_SIGNATURES:
        if head.startswith(prefix):
            return found
    for sniff in _SNIFFERS:
        if (found_by_structure := sniff(head)) is not None:
            return found_by_structure
    return _identify_text(head)


def _identify_riff(head: bytes) -> Identified | None:
    if not (head.startswith(b"RIFF") and len(head) >= 12):
        return None
    return {
        b"WAVE": Identified("WAV", "a WAV audio file"),
        b"WEBP": Identified("WebP", "a WebP image"),
        b"AVI ": Identified("AVI", "an AVI video"),
    }.get(head[8:12], Identified("RIFF", "a RIFF file"))


def _identify_ftyp(head: bytes) -> Identified | None:
    return _identify_iso_bmff(head) if head[4:8] == b"ftyp" else None


def _identify_bmp(head: bytes) -> Identified | None:
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in BMP_HEADER_SIZES:
        return Identified("BMP", "a BMP image")
    return None


def _identify_ogg(head: bytes) -> Identified | None:
    if not head.startswith(b"OggS"):
        return None
    payload = head[28:36]
    for marker, found in _OGG_CODECS:
        if payload.startswith(marker):
            return found
    return Identified("Ogg", "an Ogg file")


def _identify_aiff(head: bytes) -> Identified | None:
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return Identified("AIFF", "an AIFF audio file")
    return None


def _identify_aac(head: bytes) -> Identified | None:
    return Identified("AAC", "an AAC audio file") if head.startswith(b"ADIF") or _is_adts_header(head) else None


def _identify_mpeg_audio(head: bytes) -> Identified | None:
    layer = _mpeg_audio_layer(head)
    if layer is None:
        return None
    return {
        3: Identified("MP3", "an MP3 audio file"),
        2: Identified("MP2", "an MPEG layer II (MP2) audio file"),
        1: Identified("MP1", "an MPEG layer I audio file"),
    }[layer]


_OGG_CODECS: tuple[tuple[bytes, Identified], ...] = (
    (b"\x01vorbis", Identified("Ogg Vorbis", "an Ogg Vorbis audio file")),
    (b"OpusHead", Identified("Ogg Opus", "an Ogg Opus audio file")),
    (b"\x7fFLAC", Identified("Ogg FLAC", "an Ogg FLAC audio file")),
)

# Formats told by their structure, in this order, after the fixed signatures (an ID3 tag before an MPEG frame).
_SNIFFERS: tuple[Callable[[bytes], Identified | None], ...] = (
    _identify_riff,
    _identify_ftyp,
    _identify_bmp,
    _identify_ogg,
    _identify_aiff,
    _identify_aac,
    _identify_mpeg_audio,
)

# Formats told by their first bytes alone.
_SIMPLE_SIGNATURES: tuple[tuple[bytes, Identified], ...] = (
    (b"\xff\xd8\xff", Identified("JPEG", "a JPEG image")),
    (b"\x89PNG\r\n\x1a\n", Identified("PNG", "a PNG image")),
    (b"GIF87a", Identified("GIF", "a GIF image")),
    (b"GIF89a", Identified("GIF", "a GIF image")),
    (b"II*\x00", Identified("TIFF", "a TIFF image")),
    (b"MM\x00*", Identified("TIFF", "a TIFF image")),
    (b"ID3", Identified("MP3", "an MP3 audio file")),
    (b"fLaC", Identified("FLAC", "a FLAC audio file")),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", Identified("ASF", "a Windows Media (WMA/WMV) file")),
    (b"\x1a\x45\xdf\xa3", Identified("Matroska", "a WebM or Matroska file")),
    (b"#!AMR", Identified("AMR", "an AMR audio file")),
    (b"caff", Identified("CAF", "a Core Audio (CAF) file")),
    (b"MThd", Identified("MIDI", "a MIDI file")),
    (b"%PDF-", Identified("PDF", "a PDF document")),
    (b"PK\x03\x04", Identified("ZIP", "a ZIP archive (or an Office document)")),
    (b"8BPS", Identified("PSD", "a Photoshop (PSD) image")),
    (b"\xff\x0a", Identified("JPEG XL", "a JPEG XL image")),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", Identified("JPEG XL", "a JPEG XL image")),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", Identified("JPEG 2000", "a JPEG 2000 image")),
    (b"\xff\x4f\xff\x51", Identified("JPEG 2000", "a JPEG 2000 image")),
)


def _identify_iso_bmff(head: bytes) -> Identified:
    box_size = struct.unpack_from(">I", head, 0)[0]  # a sniff: the 32-bit size only bounds the list of brands
    major, compatible = ftyp_brands(head[8 : max(box_size, 16)])
    brands = {major} | compatible
    if brands & HEIC_BRANDS:
        return Identified("HEIC", "a HEIC image")
    if brands & AVIF_BRANDS:
        return Identified("AVIF", "an AVIF image")
    if brands & HEIF_BRANDS:
        return Identified("HEIF", "a HEIF image")
    if major == b"qt  ":
        return Identified("QuickTime", "a QuickTime movie")
    if major.startswith((b"3gp", b"3g2")):
        return Identified("3GP", "a 3GP file")
    if major == b"M4P ":
        return Identified("M4P", "a copy-protected M4P file")
    if major in MP4_VIDEO_BRANDS:
        return Identified("MP4 video", "an MP4 video")
    if major in M4A_BRANDS:
        return Identified("M4A", "an M4A audio file")
    # isom, iso2, mp41, mp42, dash, ...: audio-only or a video; the tracks decide (see _measure_m4a).
    return Identified("MP4", "an MP4 file")


def _mpeg_audio_layer(head: bytes) -> int | None:
    """1, 2 or 3 when `head` starts with a plausible MPEG audio frame header."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate_index, rate_index = head[2] >> 4, (head[2] >> 2) & 3
    if version == 1 or layer == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    return 4 - layer


def _is_adts_header(head: bytes) -> bool:
    """An ADTS (raw AAC) frame header: a 12-bit sync, layer 00, a valid sampling-frequency index."""
    return len(head) >= 7 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0 and (head[2] >> 2) & 0x0F <= 12


def _identify_text(head: bytes) -> Identified | None:
    sample = head[:SNIFF_BYTES].removeprefix(b"\xef\xbb\xbf")
    if not sample or b"\x00" in sample:
        return None
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(sample) - 3:  # only a character cut at the end of the sample is forgiven
            return None
        text = sample[: error.start].decode("utf-8")
    if not text or sum(char.isprintable() or char in "\r\n\t" for char in text) < 0.95 * len(text):
        return None
    lowered = text.lstrip().lower()
    if "<svg" in lowered:
        return Identified("SVG", "an SVG drawing")
    if lowered.startswith(("<!doctype html", "<html")):
        return Identified("HTML", "an HTML page")
    return Identified("text", "a text file")


def _wrong_format(file_name: str, found: Identified | None, wanted: tuple[str, ...]) -> str:
    use = f"use {_or_list(wanted)}"
    if found is None:
        return f"{file_name} is not in a format this pipeline recognises; {use}"
    return f"{file_name} is {found.description}; {use}"


def _or_list(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _reader_for(source: RandomAccessSource, file_name: str) -> RangeReader:
    return source if isinstance(source, RangeReader) else RangeReader(source, name=file_name)


# --------------------------------------------------------------------------------------------------------- images


def inspect_image(source: RandomAccessSource, file_name: str) -> ImageFacts | str:
    """The facts of a JPEG or PNG, or why the file is not a usable one.

    Reads the first block, Pillow's header parse (lazy: no pixels) and the last few bytes. A file that does not
    end with its format's end marker is decoded in full before being called damaged (JPEG at 1/8 scale, PNG by
    walking its chunks), so a complete image with trailing bytes (e.g. a phone's "motion photo") still passes.
    Pass a RangeReader to read its byte counters afterwards.
    """
    reader = _reader_for(source, file_name)
    if reader.size == 0:
        return f"{file_name} is empty (0 bytes)"
    found = identify(reader.read_range(0, SNIFF_BYTES))
    if found is None or found.format not in IMAGE_FORMATS:
        return _wrong_format(file_name, found, IMAGE_FORMATS)
    reader.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # big is fine; absurd raises below
            with Image.open(cast(IO[bytes], reader), formats=[found.format]) as image:
                width, height, mode = image.width, image.height, image.mode
                orientation = _exif_orientation(image)
                if _ends_with_end_marker(reader, found.format):
                    integrity = "end marker"
                else:
                    _decode_to_the_end(image, found.format)
                    integrity = "full decode"
    except Image.DecompressionBombError:
        reader.raise_if_failed()
        return f"{file_name} has too many pixels to process (more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,})"
    except Exception:
        reader.raise_if_failed()
        return f"{file_name} is truncated or damaged: it could not be read as a complete {found.format} image"
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageFacts(found.format, width, height, mode, orientation, integrity, reader.bytes_fetched)


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation from the header's EXIF block (never from the pixels); 1 when absent or unreadable."""
    raw = image.info.get("exif")
    if not isinstance(raw, bytes | bytearray) or not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(bytes(raw))
        value = exif.get(EXIF_ORIENTATION, 1)
    except Exception:
        return 1  # broken EXIF does not make the picture unusable
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _ends_with_end_marker(reader: RangeReader, image_format: str) -> bool:
    if image_format == "PNG":
        return reader.read_range(max(0, reader.size - len(PNG_IEND_CHUNK)), len(PNG_IEND_CHUNK)) == PNG_IEND_CHUNK
    tail = reader.read_range(max(0, reader.size - JPEG_END_SLACK), JPEG_END_SLACK)
    end = tail.rfind(b"\xff\xd9")
    return end >= 0 and all(byte in JPEG_PADDING for byte in tail[end + 2 :])


def _decode_to_the_end(image: Image.Image, image_format: str) -> None:
    """Raise unless the whole image decodes; reads the whole file, so only for files without their end marker."""
    if image_format == "PNG":
        image.verify()  # every chunk and its CRC up to IEND, without building the pixels
    else:
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


# ---------------------------------------------------------------------------------------------------------- audio


class _Damaged(Exception):
    """The file is incomplete or inconsistent (message: what is wrong)."""


class _Unusable(Exception):
    """The file is complete but not a usable audio clip (message: the rest of the sentence after its name)."""


def inspect_audio(source: RandomAccessSource, file_name: str) -> AudioFacts | str:
    """The facts of an MP3, WAV, M4A or AAC (ADTS) clip, or why the file is not a usable one.

    The format comes from the content (after any ID3v2 tags). mutagen measures duration, sample rate and
    channels from the stream headers; the container's own sizes are checked against the file's, so a cut-off
    upload is caught instead of being measured by what its header promised. Pass a RangeReader to read its byte
    counters afterwards.
    """
    reader = _reader_for(source, file_name)
    if reader.size == 0:
        return f"{file_name} is empty (0 bytes)"
    start = _skip_id3v2(reader)
    if start >= reader.size:
        return f"{file_name} is truncated or damaged: it holds an ID3 tag and no audio"
    found = identify(reader.read_range(start, SNIFF_BYTES))
    if found is None and start > 0:
        found = Identified("MP3", "an MP3 audio file")  # tagged like an MP3: let mutagen look for its frames
    if found is None or found.format not in (*AUDIO_FORMATS, "MP4"):
        return _wrong_format(file_name, found, AUDIO_FORMATS)
    audio_format = "M4A" if found.format == "MP4" else found.format
    try:
        duration, sample_rate, channels = _MEASURES[audio_format](reader, start)
    except _Damaged as problem:
        reader.raise_if_failed()
        return f"{file_name} is truncated or damaged: {problem}"
    except _Unusable as problem:
        reader.raise_if_failed()
        return f"{file_name} {problem}"
    except Exception:
        reader.raise_if_failed()
        return f"{file_name} is truncated or damaged: it could not be read as {found.description}"
    if not math.isfinite(duration) or duration <= 0 or sample_rate <= 0:
        return f"{file_name} holds no audio that could be measured"
    return AudioFacts(audio_format, duration, sample_rate, channels, reader.bytes_fetched)


def _skip_id3v2(reader: RangeReader) -> int:
    """The offset after any ID3v2 tags at the start (some writers stack several)."""
    offset = 0
    for _ in range(16):
        header = reader.read_range(offset, 10)
        if len(header) < 10 or not header.startswith(b"ID3") or any(byte >= 0x80 for byte in header[6:10]):
            break
        size = (header[6] << 21) | (header[7] << 14) | (header[8] << 7) | header[9]
        offset += 10 + size + (10 if header[5] & 0x10 else 0)
    return offset


def _measure_mp3(reader: RangeReader, start: int) -> tuple[float, int, int]:
    info = MPEGInfo(reader, offset=start)  # stream info only: a large cover-art tag is skipped, not read
    if info.layer != 3:
        raise _Unusable(f"is an MPEG layer {info.layer} audio file, not an MP3; use MP3, WAV, M4A or AAC")
    frame_offset = int(getattr(info, "frame_offset", start))
    promised = _xing_byte_count(reader, frame_offset)
    # LAME and ffmpeg count the stream from its first frame; some writers count the whole file. Only a file shorter
    # than the stream it announces under either reading is called truncated.
    if promised is not None and promised > reader.size:
        available = reader.size - frame_offset
        raise _Damaged(f"its header promises {promised:,} bytes of MP3 audio but only {available:,} are there")
    return float(info.length), int(info.sample_rate), int(info.channels)


def _xing_byte_count(reader: RangeReader, frame_offset: int) -> int | None:
    """The stream length in bytes a Xing/Info header (LAME, ffmpeg) declares, if the first frame carries one."""
    header = reader.read_range(frame_offset, 4)
    if len(header) < 4:
        return None
    mpeg1, mono = (header[1] >> 3) & 3 == 3, header[3] >> 6 == 3
    side_info_end = (21 if mono else 36) if mpeg1 else (13 if mono else 21)
    tag = reader.read_range(frame_offset + side_info_end, 16)
    if len(tag) < 16 or tag[:4] not in (b"Xing", b"Info"):
        return None
    flags = struct.unpack_from(">I", tag, 4)[0]
    if not flags & 0x2:
        return None
    return int(struct.unpack_from(">I", tag, 12 if flags & 0x1 else 8)[0])


def _measure_wav(reader: RangeReader, start: int) -> tuple[float, int, int]:
    riff_size = struct.unpack("<I", reader.read_range(start + 4, 4))[0]
    position, fmt, data = start + 12, b"", None
    while position + 8 <= reader.size:
        chunk_id, chunk_size = struct.unpack("<4sI", reader.read_range(position, 8))
        if chunk_id == b"fmt ":
            fmt = reader.read_range(position + 8, min(chunk_size, 40))
        elif chunk_id == b"data":
            data = (position + 8, chunk_size)
            break
        position += 8 + chunk_size + (chunk_size & 1)
    if len(fmt) < 16 or data is None:
        missing = "'fmt ' chunk (the audio format)" if len(fmt) < 16 else "'data' chunk (the samples)"
        raise _Damaged(f"its {missing} is missing")
    data_offset, declared = data
    present = reader.size - data_offset
    # Written to a pipe, a WAV cannot go back to fill in its sizes: 0xFFFFFFFF (or 0) then means "until the end".
    streamed = declared == 0xFFFFFFFF or (declared == 0 and riff_size in (0, 0xFFFFFFFF))
    if not streamed and declared > present:
        raise _Damaged(f"its header promises {declared:,} bytes of audio but only {present:,} are there")
    reader.seek(0)
    info = WaveStreamInfo(reader)
    duration = float(info.length)
    if streamed:
        byte_rate = struct.unpack_from("<I", fmt, 8)[0]
        duration = present / byte_rate if byte_rate else 0.0
    return duration, int(info.sample_rate), int(info.channels)


def _measure_aac(reader: RangeReader, start: int) -> tuple[float, int, int]:
    reader.seek(0)
    info = AACInfo(reader)  # ADTS: the length is estimated from the bitrate of the first frames and the file size
    return float(info.length), int(info.sample_rate), int(info.channels)


def _measure_m4a(reader: RangeReader, start: int) -> tuple[float, int, int]:
    moov: Box | None = None
    for box in _top_level_boxes(reader, start):
        if box.end > reader.size:
            raise _Damaged(f"its '{box.name}' box runs past the end of the file")
        if box.type == b"moov":
            moov = box
    if moov is None:
        raise _Damaged("it has no 'moov' box (the index of its audio)")
    if moov.end - moov.payload_start > MAX_MOOV_BYTES:
        raise _Damaged("its 'moov' box is implausibly large")
    payload = reader.read_range(moov.payload_start, moov.end - moov.payload_start)
    handlers = [_handler_type(trak) for trak in _child_boxes(payload, b"trak")]
    if b"vide" in handlers:
        raise _Unusable("is a video (an MP4 with a picture track); use an audio-only MP3, WAV, M4A or AAC file")
    if b"soun" not in handlers:
        raise _Unusable("has no audio track")
    reader.seek(0)
    info = MP4(reader).info  # type: ignore[no-untyped-call]  # mutagen has no type hints
    if info is None:
        raise _Damaged("its audio track could not be measured")
    return float(info.length), int(info.sample_rate), int(info.channels)


def _top_level_boxes(reader: RangeReader, start: int) -> Iterator[Box]:
    """Each top-level box, from the box headers alone; a bad header, or too many boxes, is damage."""
    try:
        for count, box in enumerate(walk_boxes(reader.read_range, start, reader.size), start=1):
            yield box
            if count == MAX_TOP_LEVEL_BOXES:  # each header may cost a request: a file of tiny boxes is not an M4A
                raise _Damaged("it has an implausible number of top-level boxes")
    except BoxError as error:
        raise _Damaged(str(error)) from error


def _child_boxes(payload: bytes, wanted: bytes) -> Iterator[bytes]:
    """The payloads of the direct children of a box named `wanted`, parsed from the parent's payload in memory.

    A bad child header quietly ends the list: the children before it still count.
    """
    try:
        for box in walk_boxes(BytesSource(payload).read_range, 0, len(payload)):
            if box.type == wanted:
                yield payload[box.payload_start : box.end]
    except BoxError:
        return


def _handler_type(trak: bytes) -> bytes:
    """A track's handler ('soun', 'vide', 'text', ...) from trak/mdia/hdlr."""
    for mdia in _child_boxes(trak, b"mdia"):
        for hdlr in _child_boxes(mdia, b"hdlr"):
            return hdlr[8:12]  # version and flags (4 bytes), pre_defined (4 bytes), handler_type
    return b""


_MEASURES = {"MP3": _measure_mp3, "WAV": _measure_wav, "M4A": _measure_m4a, "AAC": _measure_aac}
