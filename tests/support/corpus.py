"""A generated corpus of uploads, each with the outcome validation must give it (no binaries are checked in).

Images are drawn with Pillow; audio is rendered by the ffmpeg binary imageio-ffmpeg ships (lavfi sources such as
`sine=...`). Everything is generated once per session (`corpus()` is cached) in about a second.

A case's `expected` is "accepted" or a substring of the one reason it is rejected for. Paired with the partner of
the other role (`partner_for`), which is valid, the pair's problems are exactly that case's.
"""

from __future__ import annotations

import functools
import io
import os
import random
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg
from PIL import Image

from avatar_pipeline.domain.media_checks import BytesSource
from avatar_pipeline.domain.models import MediaRole, S3Object
from avatar_pipeline.domain.validation import MIB, TIMES

BUCKET = "media"
ACCEPTED = "accepted"
# 1.5 KB of text: a web page or a note saved under a picture's name.
TEXT = ("Meeting notes: send the portrait and the voice clip before Friday. " * 24).encode()
# The smallest thing a HEIC file starts with: an ISO-BMFF `ftyp` box whose brands say HEIC; then junk.
HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00\x00\x00\x08meta" + bytes(64)


@dataclass(frozen=True)
class CorpusCase:
    name: str
    key: str
    data: bytes = field(repr=False)
    role: MediaRole
    expected: str  # ACCEPTED, or a substring of the reason the file is rejected for
    declared_size: int | None = None  # the size the S3 event reports, when it is not len(data)

    @property
    def size(self) -> int:
        return len(self.data) if self.declared_size is None else self.declared_size

    @property
    def file_name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def s3_object(self) -> S3Object:
        return S3Object(bucket=BUCKET, key=self.key, etag=f'"{self.name}"', size=self.size)

    def source(self) -> BytesSource:
        return BytesSource(self.data)


# ------------------------------------------------------------------------------------------------------- images


def picture(
    width: int,
    height: int,
    *,
    image_format: str = "JPEG",
    mode: str = "RGB",
    orientation: int | None = None,
    noisy: bool = False,
    **options: object,
) -> bytes:
    """A picture of the given stored size: a soft gradient (or noise, which compresses badly) in `mode`."""
    if noisy:
        image = Image.frombytes("RGB", (width, height), noise(width * height * 3))
    else:
        image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
        image.paste((200, 120, 90), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    image = image.convert(mode)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def noise(length: int) -> bytes:
    """The same incompressible bytes on every run."""
    return random.Random(length).randbytes(length)


def sixteen_bit_png(width: int, height: int) -> bytes:
    ramp = Image.linear_gradient("L").resize((width, height)).point(lambda value: value * 257, mode="I")
    buffer = io.BytesIO()
    ramp.convert("I;16").save(buffer, format="PNG")
    data = buffer.getvalue()
    assert data[24] == 16, "the PNG's IHDR must say 16 bits per sample"
    return data


# -------------------------------------------------------------------------------------------------------- audio


def render(*arguments: str, suffix: str) -> bytes:
    """What ffmpeg writes for `arguments` (inputs and codec options) into a file named *suffix."""
    return _render(tuple(arguments), suffix)


@functools.cache
def _render(arguments: tuple[str, ...], suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"out{suffix}"
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *arguments, str(out)]
        subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: S603 - our own arguments
        return out.read_bytes()


def sine(seconds: float, *, rate: int = 44100, channels: int = 1, frequency: int = 440) -> list[str]:
    source = f"sine=frequency={frequency}:duration={seconds}:sample_rate={rate}"
    return ["-f", "lavfi", "-i", source, "-ac", str(channels)]


def mp3(seconds: float, *, rate: int = 44100, channels: int = 1, bitrate: str = "32k") -> bytes:
    return render(*sine(seconds, rate=rate, channels=channels), "-c:a", "libmp3lame", "-b:a", bitrate, suffix=".mp3")


def wav(seconds: float, *, rate: int = 8000, channels: int = 1) -> bytes:
    return render(*sine(seconds, rate=rate, channels=channels), "-c:a", "pcm_s16le", suffix=".wav")


def streamed_wav(seconds: float) -> bytes:
    """A WAV written to a pipe: its RIFF and data sizes stay 0xFFFFFFFF ("until the end")."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *sine(seconds, rate=8000)]
    done = subprocess.run([*command, "-f", "wav", "-"], check=True, capture_output=True, timeout=60)  # noqa: S603
    assert done.stdout[4:8] == b"\xff\xff\xff\xff"
    return done.stdout


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


VALID_IMAGE_KEY = "inbox/partner/face.jpg"
VALID_AUDIO_KEY = "inbox/partner/voice.mp3"


@functools.cache
def valid_image() -> CorpusCase:
    return CorpusCase("valid-image", VALID_IMAGE_KEY, picture(512, 640), "image", ACCEPTED)


@functools.cache
def valid_audio() -> CorpusCase:
    return CorpusCase("valid-audio", VALID_AUDIO_KEY, mp3(2.5), "audio", ACCEPTED)


def partner_for(case: CorpusCase) -> CorpusCase:
    """A valid file of the other role, to make a pair whose only problems are `case`'s."""
    return valid_audio() if case.role == "image" else valid_image()


# ------------------------------------------------------------------------------------------------------- corpus


def _image_cases() -> list[CorpusCase]:
    jpeg = picture(640, 800, quality=90)
    png = picture(640, 800, image_format="PNG")
    over = 10 * MIB + 1
    return [
        CorpusCase("image-empty", "inbox/c01/face.jpg", b"", "image", "face.jpg is empty (0 bytes)"),
        CorpusCase("jpeg-truncated", "inbox/c02/face.jpg", cut(picture(640, 800, noisy=True), 0.6), "image",
                   "face.jpg is truncated or damaged"),
        CorpusCase("png-truncated", "inbox/c03/face.png", cut(png, 0.6), "image", "face.png is truncated or damaged"),
        CorpusCase("text-as-jpg", "inbox/c04/face.jpg", TEXT, "image", "face.jpg is a text file; use JPEG or PNG"),
        CorpusCase("gif-as-jpg", "inbox/c05/face.jpg", picture(400, 400, image_format="GIF"), "image",
                   "face.jpg is a GIF image; use JPEG or PNG"),
        CorpusCase("webp-as-jpg", "inbox/c06/face.jpg", picture(400, 400, image_format="WEBP"), "image",
                   "face.jpg is a WebP image; use JPEG or PNG"),
        CorpusCase("heic-as-jpg", "inbox/c07/face.jpg", HEIC_HEADER, "image",
                   "face.jpg is a HEIC image; use JPEG or PNG"),
        CorpusCase("bmp-as-png", "inbox/c08/face.png", picture(400, 400, image_format="BMP"), "image",
                   "face.png is a BMP image"),
        CorpusCase("tiff-as-jpg", "inbox/c09/face.jpg", picture(400, 400, image_format="TIFF"), "image",
                   "face.jpg is a TIFF image"),
        CorpusCase("mp3-as-jpg", "inbox/c10/face.jpg", mp3(2.5), "image", "face.jpg is an MP3 audio file"),
        CorpusCase("jpeg-cmyk", "inbox/c11/face.jpg", picture(400, 500, mode="CMYK"), "image", ACCEPTED),
        CorpusCase("png-16-bit", "inbox/c12/face.png", sixteen_bit_png(400, 500), "image", ACCEPTED),
        CorpusCase("png-as-jpg", "inbox/c13/face.jpg", picture(400, 500, image_format="PNG"), "image", ACCEPTED),
        # Stored landscape, displayed portrait (orientation 6 = rotate 90° clockwise): measured as 400 x 1000.
        CorpusCase("exif-rotated-portrait", "inbox/c14/face.jpg", picture(1000, 400, orientation=6), "image",
                   ACCEPTED),
        # Symmetric limits cannot flip on a rotation, but the reason names the displayed shape (299 x 700).
        CorpusCase("exif-rotated-too-narrow", "inbox/c15/face.jpg", picture(700, 299, orientation=8), "image",
                   f"face.jpg is 299{TIMES}700 px; each side must be at least 300 px"),
        CorpusCase("side-299", "inbox/c16/face.png", picture(299, 400, image_format="PNG"), "image",
                   f"face.png is 299{TIMES}400 px; each side must be at least 300 px"),
        CorpusCase("side-300", "inbox/c17/face.png", picture(300, 300, image_format="PNG"), "image", ACCEPTED),
        CorpusCase("aspect-1-2.6", "inbox/c18/face.png", picture(300, 780, image_format="PNG"), "image",
                   "face.png has an aspect ratio of 1:2.6; it must be between 1:2.5 and 2.5:1"),
        CorpusCase("aspect-1-2.5", "inbox/c19/face.png", picture(300, 750, image_format="PNG"), "image", ACCEPTED),
        CorpusCase("aspect-2.6-1", "inbox/c20/face.jpg", picture(780, 300), "image",
                   "face.jpg has an aspect ratio of 2.6:1"),
        # The event says one byte over 10 MiB: rejected from the size alone, so the bytes are never read.
        CorpusCase("image-over-10-MiB", "inbox/c21/face.png", bytes(16), "image",
                   "face.png is 10.00 MiB (10,485,761 bytes); the limit is 10.00 MiB (10,485,760 bytes)"
                   " for Kling v1 AI Avatar (standard) on WaveSpeed",
                   declared_size=over),
        CorpusCase("uppercase-extension", "inbox/c22/FACE.PNG", png, "image", ACCEPTED),
        CorpusCase("spaces-and-non-ascii-key", "inbox/Zoë Müller/portrait d'été.jpg", jpeg, "image", ACCEPTED),
        # A complete JPEG followed by other bytes (a phone's "motion photo" appends a video): decoded in full.
        CorpusCase("jpeg-with-trailer", "inbox/c24/face.jpg", jpeg + b"ftypmp42" + noise(200_000), "image",
                   ACCEPTED),
        CorpusCase("large-png", "inbox/c25/face.png",
                   picture(1800, 1800, image_format="PNG", noisy=True, compress_level=0), "image", ACCEPTED),
    ]  # fmt: skip


def _audio_cases() -> list[CorpusCase]:
    over = 5 * MIB + 1
    stereo_48k = mp3(2.5, rate=48000, channels=2, bitrate="96k")
    return [
        CorpusCase("audio-empty", "inbox/c30/voice.mp3", b"", "audio", "voice.mp3 is empty (0 bytes)"),
        CorpusCase("audio-over-5-MiB", "inbox/c31/voice.mp3", bytes(16), "audio",
                   "voice.mp3 is 5.00 MiB (5,242,881 bytes); the limit is 5.00 MiB (5,242,880 bytes)"
                   " for Kling v1 AI Avatar (standard) on WaveSpeed",
                   declared_size=over),
        CorpusCase("mp3-1.9-s", "inbox/c32/voice.mp3", mp3(1.9), "audio", "it must last at least 2 s"),
        CorpusCase("mp3-2.0-s", "inbox/c33/voice.mp3", mp3(2.0), "audio", ACCEPTED),
        CorpusCase("wav-2.0-s-8-kHz-mono", "inbox/c34/voice.wav", wav(2.0), "audio", ACCEPTED),
        CorpusCase("mp3-60.1-s", "inbox/c35/voice.mp3", mp3(60.1, rate=8000, bitrate="8k"), "audio", ACCEPTED),
        CorpusCase("mp3-300.5-s", "inbox/c36/voice.mp3", mp3(300.5, rate=8000, bitrate="8k"), "audio",
                   "the limit is 300 s"),
        CorpusCase("mp3-48-kHz-stereo", "inbox/c37/voice.mp3", stereo_48k, "audio", ACCEPTED),
        CorpusCase("wav-48-kHz-stereo", "inbox/c38/voice.wav", wav(2.5, rate=48000, channels=2), "audio", ACCEPTED),
        CorpusCase("wav-streamed-sizes", "inbox/c39/voice.wav", streamed_wav(3.0), "audio", ACCEPTED),
        CorpusCase("m4a", "inbox/c40/voice.m4a", render(*sine(2.5, channels=2), "-c:a", "aac", "-b:a", "48k",
                                                        suffix=".m4a"), "audio", ACCEPTED),
        CorpusCase("aac-adts", "inbox/c41/voice.aac", render(*sine(2.5), "-c:a", "aac", "-b:a", "32k", "-f", "adts",
                                                             suffix=".aac"), "audio", ACCEPTED),
        CorpusCase("ogg-as-mp3", "inbox/c42/voice.mp3", render(*sine(2.5), "-c:a", "libvorbis", suffix=".ogg"),
                   "audio", "voice.mp3 is an Ogg Vorbis audio file; use MP3, WAV, M4A or AAC"),
        CorpusCase("flac-as-wav", "inbox/c43/voice.wav", render(*sine(2.5), "-c:a", "flac", suffix=".flac"),
                   "audio", "voice.wav is a FLAC audio file"),
        CorpusCase("mp2-as-mp3", "inbox/c44/voice.mp3", render(*sine(2.5), "-c:a", "mp2", suffix=".mp2"),
                   "audio", "voice.mp3 is an MPEG layer II (MP2) audio file"),
        CorpusCase("png-as-mp3", "inbox/c45/voice.mp3", picture(400, 400, image_format="PNG"), "audio",
                   "voice.mp3 is a PNG image; use MP3, WAV, M4A or AAC"),
        CorpusCase("text-as-mp3", "inbox/c46/voice.mp3", TEXT, "audio", "voice.mp3 is a text file"),
        CorpusCase("video-as-m4a", "inbox/c47/voice.m4a",
                   render("-f", "lavfi", "-i", "testsrc=size=64x64:duration=2.5:rate=10", *sine(2.5),
                          "-c:v", "mpeg4", "-c:a", "aac", "-shortest", suffix=".mp4"),
                   "audio", "voice.m4a is a video"),
        CorpusCase("mp3-truncated", "inbox/c48/voice.mp3", cut(mp3(4.0), 0.5), "audio",
                   "voice.mp3 is truncated or damaged"),
        CorpusCase("wav-truncated", "inbox/c49/voice.wav", cut(wav(4.0), 0.5), "audio",
                   "voice.wav is truncated or damaged"),
        CorpusCase("m4a-truncated", "inbox/c50/voice.m4a",
                   cut(render(*sine(4.0), "-c:a", "aac", "-b:a", "32k", suffix=".m4a"), 0.5), "audio",
                   "voice.m4a is truncated or damaged"),
        CorpusCase("uppercase-extension", "inbox/c51/VOICE.MP3", mp3(2.5), "audio", ACCEPTED),
        CorpusCase("spaces-and-non-ascii-key", "inbox/Zoë Müller/voix d'été.mp3", mp3(2.5), "audio", ACCEPTED),
        CorpusCase("mp3-4.9-MiB", "inbox/c53/voice.mp3", mp3(256, rate=22050, bitrate="160k"), "audio", ACCEPTED),
    ]  # fmt: skip


def _warm_ffmpeg_cache() -> None:
    """Render the clips in parallel first (each ffmpeg run is mostly start-up time)."""
    jobs: list[Callable[[], bytes]] = [
        lambda: mp3(2.5),
        lambda: mp3(1.9),
        lambda: mp3(2.0),
        lambda: mp3(4.0),
        lambda: mp3(60.1, rate=8000, bitrate="8k"),
        lambda: mp3(300.5, rate=8000, bitrate="8k"),
        lambda: mp3(256, rate=22050, bitrate="160k"),
        lambda: mp3(2.5, rate=48000, channels=2, bitrate="96k"),
        lambda: wav(2.0),
        lambda: wav(4.0),
        lambda: wav(2.5, rate=48000, channels=2),
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for done in [pool.submit(job) for job in jobs]:
            done.result()


@functools.cache
def corpus() -> tuple[CorpusCase, ...]:
    _warm_ffmpeg_cache()
    cases = (*_image_cases(), *_audio_cases())
    names = [(case.role, case.name) for case in cases]
    assert len(set(names)) == len(names), "case names must be unique per role"
    return cases


def case_id(case: CorpusCase) -> str:
    return f"{case.role}:{case.name}"


def format_table(rows: Sequence[tuple[str, ...]], headers: Sequence[str]) -> str:
    """A plain-text table (Markdown-compatible) of `rows` under `headers`."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join(
        "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) + " |"
        for line in lines
    )
