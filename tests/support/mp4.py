"""MP4s built box by box, of any size, for tests of the download and its structure check (no encoder needed)."""

from __future__ import annotations

import functools
import struct
import subprocess
import tempfile
from pathlib import Path

from avatar_local.simulators.media import ffmpeg_exe

FTYP = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"  # a 24-byte ftyp box, as ffmpeg writes it
MOOV = b"\x00\x00\x00\x10moov\x00\x00\x00\x08free"  # a (tiny, content-free) index box
MDAT_HEADER_SIZE = 8


def box(kind: bytes, payload: bytes = b"", *, large: bool = False) -> bytes:
    """One box: a 32-bit size (or 1 and a 64-bit size when `large`), the four-character type, the payload."""
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def ftyp(major: bytes = b"isom", *compatible: bytes) -> bytes:
    return box(b"ftyp", major + b"\x00\x00\x02\x00" + b"".join(compatible or (b"isom", b"iso2")))


def mp4_head(total_size: int) -> bytes:
    """ftyp, moov, and the header of an mdat box that takes up the rest of a `total_size`-byte file."""
    head = FTYP + MOOV
    return head + struct.pack(">I4s", total_size - len(head), b"mdat")


def fake_mp4(size: int) -> bytes:
    """A structurally valid MP4 of exactly `size` bytes: its mdat holds a non-repeating-looking filler, so
    misplaced bytes would show."""
    head = mp4_head(size)
    filler_size = size - len(head)
    pattern = bytes(range(251))  # a prime length, so parts never line up with the pattern
    return head + (pattern * (filler_size // len(pattern) + 1))[:filler_size]


REAL_LAYOUTS = {
    "faststart": ["-movflags", "+faststart"],  # moov before mdat: what our renderer and most CDNs serve
    "moov-last": [],  # ffmpeg's default: mdat first, the index written at the end
    "fragmented": ["-movflags", "frag_keyframe+empty_moov"],  # moov, then moof/mdat pairs
}


@functools.cache
def real_mp4(layout: str = "faststart") -> bytes:
    """A real one-second H.264/AAC MP4 (64x64, a test pattern and a tone) in one of `REAL_LAYOUTS`, made by the
    ffmpeg binary of the imageio-ffmpeg wheel."""
    with tempfile.TemporaryDirectory(prefix="test-mp4-") as tmp:
        out = Path(tmp) / "clip.mp4"
        command = [
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
            "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=1",
            "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
            *REAL_LAYOUTS[layout], str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: S603
        return out.read_bytes()
