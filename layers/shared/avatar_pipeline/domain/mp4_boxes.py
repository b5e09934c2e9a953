"""The boxes of an MP4 (ISO base media file, ISO/IEC 14496-12): how their headers read, and how they follow each other.

Domain code (no AWS, no HTTP), shared by `media_checks` (an uploaded M4A, read in ranges) and `mp4_stream` (an
output video, checked while it streams by), so both read a box the same way.

A box starts with a 32-bit size (header included) and a four-character type. Size 1 means a 64-bit size follows the
type (a 16-byte header); size 0 means the box runs to the end of the file, or of the box that contains it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

SHORT_HEADER: Final = 8
LONG_HEADER: Final = 16
_HEADER: Final = struct.Struct(">I4s")
_LARGE_SIZE: Final = struct.Struct(">Q")
_LARGE_MARKER: Final = b"\x00\x00\x00\x01"  # a 32-bit size of 1: the real size is the 64-bit field after the type

# `length` bytes at `offset`, fewer only at the end of the data (RangeReader.read_range, BytesSource.read_range).
ReadRange = Callable[[int, int], bytes]


class BoxError(ValueError):
    """A box header that cannot be right; the message says what is wrong, for a human."""


def fourcc(code: bytes) -> str:
    """A four-character code (a box type, a brand) as text for a message; any byte value keeps a character."""
    return code.decode("latin-1")


def header_length(start: bytes | bytearray) -> int:
    """How long the header beginning with `start` is: 16 bytes when its 32-bit size is 1, else 8.

    The first 4 bytes decide; with fewer, the answer is 8 (the most that can be read before knowing more).
    """
    return LONG_HEADER if start[:4] == _LARGE_MARKER else SHORT_HEADER


@dataclass(frozen=True)
class BoxHeader:
    type: bytes
    size: int  # the whole box, header included, as declared (the 64-bit size if there is one); see `to_end`
    header_size: int  # SHORT_HEADER or LONG_HEADER

    @property
    def name(self) -> str:
        return fourcc(self.type)

    @property
    def to_end(self) -> bool:
        """A 32-bit size of 0: the box runs to the end of its container (a 64-bit size of 0 is just too small)."""
        return self.size == 0 and self.header_size == SHORT_HEADER

    def check_size(self) -> None:
        """Raise BoxError for a box smaller than its own header: the next box would start inside this one."""
        if not self.to_end and self.size < self.header_size:
            raise BoxError(f"its '{self.name}' box has an impossible size ({self.size})")


def parse_header(data: bytes) -> BoxHeader:
    """The box header at the start of `data` (which may go on past it); BoxError when `data` stops inside it.

    The size is not checked here (`check_size`), so a caller can first refuse a box for what it is.
    """
    length = header_length(data)
    if len(data) < length:
        if len(data) < SHORT_HEADER:
            raise BoxError("it ends inside a box header")
        raise BoxError(f"its '{fourcc(data[4:8])}' box header is cut off")
    size, box_type = _HEADER.unpack_from(data)
    if length == LONG_HEADER:
        size = _LARGE_SIZE.unpack_from(data, SHORT_HEADER)[0]
    return BoxHeader(box_type, size, length)


@dataclass(frozen=True)
class Box:
    type: bytes
    start: int  # offset of its header
    payload_start: int  # offset of what follows the header
    end: int  # offset just past it: beyond the data's end when the box is cut short

    @property
    def name(self) -> str:
        return fourcc(self.type)


def walk_boxes(read: ReadRange, start: int, end: int) -> Iterator[Box]:
    """The boxes lying side by side from `start` to `end` (a file's top level, or a box's payload), in order.

    Reads only their headers, lazily: one `read` of at most LONG_HEADER bytes per box, none past `end`. Fewer than
    8 bytes left after the last box end the walk (players ignore them). Raises BoxError at a header cut off by `end`
    or a box smaller than its header; a box running past `end` is yielded as it is, for the caller to judge.
    """
    position = start
    while position + SHORT_HEADER <= end:
        header = parse_header(read(position, min(LONG_HEADER, end - position)))
        header.check_size()
        box_end = end if header.to_end else position + header.size
        yield Box(header.type, position, position + header.header_size, box_end)
        position = box_end


def ftyp_brands(payload: bytes) -> tuple[bytes, frozenset[bytes]]:
    """The major brand and the compatible brands listed in an `ftyp` box's payload.

    The payload is the major brand (4 bytes), a minor version (4 bytes), then compatible brands (4 bytes each); a
    brand cut short at the end is left out.
    """
    compatible = frozenset(payload[index : index + 4] for index in range(8, len(payload) - 3, 4))
    return payload[:4], compatible
