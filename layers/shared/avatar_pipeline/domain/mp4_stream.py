"""Whether a stream of bytes is a playable MP4, judged from its top-level boxes as the bytes go by.

Domain code (no HTTP, no AWS): `Mp4StreamCheck` is fed the chunks of a download in order and keeps only a few
counters and at most one box header, so checking a 2 GiB video costs no more memory than checking a small one.

An MP4 (ISO base media file) is a sequence of boxes, each starting with a 32-bit size and a four-character type.
Size 1 means a 64-bit size follows the type; size 0 means "to the end of the file". A playable MP4 starts with an
`ftyp` box naming an MP4-family brand, and has a `moov` box (the index players need) and at least one `mdat` box
(the media data), in either order; its last box ends where the file ends.
"""

from __future__ import annotations

from typing import Final

from avatar_pipeline.domain.mp4_boxes import SHORT_HEADER, BoxError, fourcc, ftyp_brands, header_length, parse_header

# ftyp = major brand (4) + minor version (4) + compatible brands (4 each); a few dozen brands at most in practice.
MIN_FTYP_SIZE: Final = 16
MAX_FTYP_SIZE: Final = 1024
# Brands whose files are MP4 video (ISO/IEC 14496-12/14/15, Apple's M4V, Adobe's F4V, DASH, CMAF).
MP4_BRANDS: Final = frozenset(
    {
        b"isom",
        *(f"iso{n}".encode() for n in range(2, 10)),
        b"mp41",
        b"mp42",
        b"mp71",
        b"avc1",
        b"hvc1",
        b"av01",
        b"M4V ",
        b"M4VH",
        b"M4VP",
        b"f4v ",
        b"dash",
        b"cmfc",
        b"msnv",
    }
)


class Mp4StructureError(ValueError):
    """The bytes are not a playable MP4; the message says what is wrong, for a human."""


class Mp4StreamCheck:
    """Checks an MP4's top-level box structure incrementally: `feed` every chunk in order, then `finish`.

    `recognised` turns true as soon as the whole `ftyp` box has been read and names an MP4 brand, which lets a
    caller decide early (before storing anything) whether the stream is worth keeping.
    """

    def __init__(self) -> None:
        self.recognised = False
        self._offset = 0  # bytes fed so far
        self._next_box = 0  # where the next top-level box header starts
        self._header = bytearray()  # the header being read, when it straddles chunks
        self._ftyp: bytearray | None = None  # the ftyp payload, while it is being read
        self._last_box = b""
        self._to_end = False  # a size-0 box: everything after its header belongs to it
        self._seen_moov = False
        self._seen_mdat = False

    def feed(self, chunk: bytes) -> None:
        """Account for the next bytes of the stream. Raises Mp4StructureError as soon as they cannot be an MP4."""
        position = 0
        while position < len(chunk) and not self._to_end:
            here = self._offset + position
            if here < self._next_box:  # inside a box's payload: skip it (collecting only ftyp's)
                taken = min(len(chunk) - position, self._next_box - here)
                if self._ftyp is not None:
                    self._ftyp += chunk[position : position + taken]
                position += taken
                if self._ftyp is not None and self._offset + position == self._next_box:
                    self._check_brands(bytes(self._ftyp))
                    self._ftyp = None
                continue
            # Up to 8 bytes, then 8 more if its size field says a 64-bit size follows the type.
            taken = min(header_length(self._header) - len(self._header), len(chunk) - position)
            self._header += chunk[position : position + taken]
            position += taken
            if len(self._header) == header_length(self._header):
                self._start_box(bytes(self._header))
                self._header.clear()
        self._offset += len(chunk)

    def finish(self) -> None:
        """Declare the stream complete. Raises Mp4StructureError unless it was a whole, playable MP4."""
        if not self.recognised:  # anything but a short stream was refused by `feed` already
            raise Mp4StructureError("it ends before its 'ftyp' box does")
        # Fewer than 8 stray bytes after the last box are tolerated, as players (and media_checks) do.
        if len(self._header) >= SHORT_HEADER:
            raise Mp4StructureError("it ends inside a box header")
        if not self._to_end and self._next_box > self._offset:
            name = fourcc(self._last_box)
            raise Mp4StructureError(f"its '{name}' box runs past the end of the file (the file is cut short)")
        if not self._seen_moov:
            raise Mp4StructureError("it has no 'moov' box (the index players need)")
        if not self._seen_mdat:
            raise Mp4StructureError("it has no 'mdat' box (no audio or video data)")

    def _start_box(self, raw_header: bytes) -> None:
        header = parse_header(raw_header)
        first = self._next_box == 0
        self._last_box = header.type
        if first:
            # Checked before anything else, so an HTML page or a JSON error is refused in its first 8 bytes.
            if header.type != b"ftyp":
                raise Mp4StructureError("it does not start with an 'ftyp' box")
            if not MIN_FTYP_SIZE <= header.size <= MAX_FTYP_SIZE or header.header_size != SHORT_HEADER:
                raise Mp4StructureError(f"its 'ftyp' box has an implausible size ({header.size})")
            self._ftyp = bytearray()
        elif not all(0x20 <= byte <= 0x7E for byte in header.type):
            # Box types are four printable characters: anything else means the sizes led us into the data.
            raise Mp4StructureError(f"there is no valid box at byte {self._next_box} (type {header.type!r})")
        if header.size == 0:  # a 32-bit size of 0, or a 64-bit one (which mp4_boxes calls too small)
            self._to_end = True
        else:
            try:
                header.check_size()
            except BoxError as error:
                raise Mp4StructureError(str(error)) from error
        if header.type == b"moov":
            self._seen_moov = True
        elif header.type == b"mdat":
            self._seen_mdat = True
        self._next_box += header.size

    def _check_brands(self, payload: bytes) -> None:
        major, compatible = ftyp_brands(payload)
        if major not in MP4_BRANDS and not compatible & MP4_BRANDS:
            listed = ", ".join(sorted(fourcc(brand) for brand in {major} | compatible))
            raise Mp4StructureError(f"its brands ({listed}) are not those of an MP4 video")
        self.recognised = True
