"""Real media for the local stack, made with the ffmpeg binary that ships in the ``imageio-ffmpeg`` wheel.

- `render_avatar_video`: a still image + an audio clip → a playable H.264/AAC MP4 as long as the audio. It stands
  in for the provider's lip-sync model: no lips move, but everything downstream (download, copy, probe, play)
  handles a real file of the right length.
- `probe_media`: duration and streams of a file, parsed from ``ffmpeg -i`` (the wheel has no ffprobe).
- `make_sample_portrait` / `make_sample_speech`: deterministic test inputs (a drawn face, a speech-like MP3).

How the video's duration is made to match the audio's
----------------------------------------------------
1. The audio is first decoded to 16-bit PCM WAV at 44.1 kHz; its exact length is its sample count / sample rate
   (this also rejects audio ffmpeg cannot decode, with ffmpeg's reason).
2. The still image becomes N = ceil(length x 15) frames played at the rational rate N / length (a hair above
   15 fps), so the video track ends on the same sample as the audio track instead of up to a frame early or late.
   AAC's encoder priming is hidden by the MP4 edit list that ffmpeg writes, so the audio track keeps its length.
3. The result is probed; a duration more than `DURATION_TOLERANCE` seconds off the audio's raises `MediaError`
   instead of handing out a wrong file.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final

import imageio_ffmpeg
from PIL import Image, ImageDraw

FPS: Final = 15  # nominal; the exact rate is adjusted per clip (see the module docstring)
DURATION_TOLERANCE: Final = 0.1
FFMPEG_TIMEOUT_SECONDS: Final = 120.0
_STDERR_TAIL_CHARS: Final = 1500

_DURATION_RE: Final = re.compile(r"Duration:\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_STREAM_RE: Final = re.compile(r"^\s*Stream #\d+:\d+.*?: (Video|Audio): (.*)$", re.MULTILINE)
_SIZE_RE: Final = re.compile(r"\b(\d{1,5})x(\d{1,5})\b")
_RATE_RE: Final = re.compile(r"\b(\d+) Hz\b")


class MediaError(Exception):
    """ffmpeg could not read or produce a media file; the message carries ffmpeg's reason."""


@dataclass(frozen=True)
class MediaInfo:
    """What ``ffmpeg -i`` says about a file. `duration` is in seconds (to 10 ms), 0.0 when ffmpeg reports none
    (e.g. a still image)."""

    duration: float
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_sample_rate: int | None = None


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL_CHARS else "..." + text[-_STDERR_TAIL_CHARS:]


def _run_ffmpeg(args: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args]
    try:
        result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_SECONDS, check=False)  # noqa: S603
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"{what}: ffmpeg timed out after {FFMPEG_TIMEOUT_SECONDS:.0f} s") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", errors="replace")
        raise MediaError(f"{what}: ffmpeg exited with {result.returncode}: {_tail(stderr)}")
    return result


def _wav_samples(path: Path) -> tuple[int, int]:
    """(sample frames, sample rate) of a PCM WAV file."""
    with wave.open(str(path), "rb") as wav:
        frames, rate = wav.getnframes(), wav.getframerate()
    if frames <= 0 or rate <= 0:
        raise MediaError("audio: the clip has no samples")
    return frames, rate


def _wav_duration(path: Path) -> float:
    frames, rate = _wav_samples(path)
    return frames / rate


def render_avatar_video(
    image: bytes, audio: bytes, out_path: Path, *, max_side: int = 512, max_seconds: float | None = None
) -> None:
    """Write an MP4 (H.264 yuv420p + AAC, faststart) showing `image` for exactly as long as `audio` plays — or for
    its first `max_seconds`, as a model told to make fewer frames than the voice needs does.

    The picture is scaled down (never up) so that its longer side is at most `max_side`, with both sides even.
    Raises `MediaError` when ffmpeg cannot decode either input or the result's length is off.
    """
    if max_side < 2:
        raise ValueError("max_side must be at least 2")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="avatar-render-") as tmp:
        work = Path(tmp)
        image_path, audio_path, wav_path = work / "image", work / "audio", work / "audio.wav"
        image_path.write_bytes(image)
        audio_path.write_bytes(audio)

        decode = ["-vn", "-sn", "-dn", "-map", "0:a:0", "-c:a", "pcm_s16le", "-ar", "44100"]
        if max_seconds is not None:
            decode += ["-t", f"{max_seconds:.3f}"]
        _run_ffmpeg(["-i", str(audio_path), *decode, str(wav_path)], "audio")
        samples, sample_rate = _wav_samples(wav_path)
        duration = samples / sample_rate
        frames = max(1, math.ceil(samples * FPS / sample_rate))
        frame_rate = Fraction(frames * sample_rate, samples)  # frames / duration, exactly

        # Scale by the same factor on both axes (never up), then round each side down to an even number.
        factor = f"min(1,{max_side}/max(iw,ih))"
        video_filter = (
            f"scale=w='max(2,trunc({factor}*iw/2)*2)':h='max(2,trunc({factor}*ih/2)*2)'"
            ":out_range=tv,setsar=1,format=yuv420p"
        )
        partial = work / ("partial" + (out_path.suffix or ".mp4"))
        _run_ffmpeg(
            [
                "-loop", "1", "-framerate", f"{frame_rate.numerator}/{frame_rate.denominator}", "-i", str(image_path),
                "-i", str(wav_path),
                "-map", "0:v:0", "-map", "1:a:0",
                "-vf", video_filter,
                "-c:v", "libx264", "-preset", "ultrafast", "-tune", "stillimage",
                "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-color_range", "tv",
                "-c:a", "aac", "-b:a", "96k",
                "-movflags", "+faststart",
                str(partial),
            ],
            "render",
        )  # fmt: skip
        produced = probe_media(partial)
        if not (produced.has_video and produced.has_audio):
            raise MediaError("render: the output lacks a video or an audio stream")
        if abs(produced.duration - duration) > DURATION_TOLERANCE:
            raise MediaError(f"render: output lasts {produced.duration} s but the audio lasts {duration:.3f} s")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, out_path)


def probe_media(path: Path | str) -> MediaInfo:
    """Duration, streams and picture size of a media file, parsed from ``ffmpeg -i``'s report."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"probe: no such file {path}")
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    try:
        # Without an output file ffmpeg exits 1 after printing the input's report: the report is all we need.
        result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_SECONDS, check=False)  # noqa: S603
    except subprocess.TimeoutExpired as exc:
        raise MediaError("probe: ffmpeg timed out") from exc
    report = result.stderr.decode("utf-8", errors="replace")
    if "Input #0" not in report:
        raise MediaError(f"probe: ffmpeg cannot read {path.name}: {_tail(report)}")

    duration = 0.0
    if match := _DURATION_RE.search(report):
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)

    width = height = sample_rate = None
    video_codec = audio_codec = None
    has_video = has_audio = False
    for kind, details in _STREAM_RE.findall(report):
        codec = details.split(",", 1)[0].split()[0] if details.strip() else None
        if kind == "Video" and not has_video:
            has_video, video_codec = True, codec
            # The size sits after the codec and pixel format; skip anything in parentheses, e.g. (avc1 / 0x31...).
            if size := _SIZE_RE.search(re.sub(r"\([^)]*\)", "", details)):
                width, height = int(size.group(1)), int(size.group(2))
        elif kind == "Audio" and not has_audio:
            has_audio, audio_codec = True, codec
            if rate := _RATE_RE.search(details):
                sample_rate = int(rate.group(1))
    return MediaInfo(
        duration=duration,
        has_video=has_video,
        has_audio=has_audio,
        width=width,
        height=height,
        video_codec=video_codec,
        audio_codec=audio_codec,
        audio_sample_rate=sample_rate,
    )


# -------------------------------------------------------------------- sample inputs


def make_sample_portrait(width: int = 480, height: int = 640) -> bytes:
    """A PNG of a simple drawn face (head, hair, eyes, brows, nose, mouth, shoulders) on a gradient. Deterministic."""
    if width < 16 or height < 16:
        raise ValueError("the portrait must be at least 16x16")
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):  # a soft vertical gradient backdrop
        shade = y / max(1, height - 1)
        draw.line([(0, y), (width, y)], fill=(int(70 + 60 * shade), int(110 + 50 * shade), int(160 + 40 * shade)))

    def box(cx: float, cy: float, rx: float, ry: float) -> tuple[int, int, int, int]:
        return (round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry))

    w, h = float(width), float(height)
    cx, cy = w / 2, h * 0.42
    head_rx, head_ry = w * 0.26, h * 0.24
    skin, outline = (236, 196, 164), (120, 80, 60)
    # shoulders and neck
    draw.ellipse(box(cx, h * 1.02, w * 0.48, h * 0.28), fill=(60, 70, 110))
    draw.rectangle(box(cx, cy + head_ry * 1.05, w * 0.08, h * 0.07), fill=(222, 180, 148))
    # hair behind, then the head
    draw.ellipse(box(cx, cy - head_ry * 0.12, head_rx * 1.1, head_ry * 1.02), fill=(70, 45, 30))
    draw.ellipse(box(cx, cy, head_rx, head_ry), fill=skin, outline=outline, width=max(1, round(w / 240)))
    draw.chord(box(cx, cy - head_ry * 0.55, head_rx * 1.02, head_ry * 0.55), 180, 360, fill=(70, 45, 30))
    # eyes with pupils, brows
    eye_dx, eye_y = head_rx * 0.42, cy - head_ry * 0.12
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse(box(ex, eye_y, head_rx * 0.17, head_ry * 0.08), fill=(255, 255, 255), outline=outline)
        draw.ellipse(box(ex, eye_y, head_rx * 0.07, head_ry * 0.065), fill=(60, 40, 30))
        draw.line(
            [(ex - head_rx * 0.18, eye_y - head_ry * 0.17), (ex + head_rx * 0.18, eye_y - head_ry * 0.2)],
            fill=(70, 45, 30),
            width=max(2, round(w / 120)),
        )
    # nose and mouth
    draw.line(
        [
            (cx, eye_y + head_ry * 0.08),
            (cx - head_rx * 0.08, cy + head_ry * 0.22),
            (cx + head_rx * 0.04, cy + head_ry * 0.24),
        ],
        fill=outline,
        width=max(1, round(w / 200)),
    )
    mouth = box(cx, cy + head_ry * 0.48, head_rx * 0.36, head_ry * 0.12)
    draw.chord(mouth, 0, 180, fill=(170, 60, 70), outline=(120, 40, 50))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


SPEECH_SAMPLE_RATE: Final = 24000
_SYLLABLES_PER_SECOND: Final = 4


def _speech_expression() -> str:
    """An aevalsrc expression: voiced syllables (a harmonic-rich tone whose pitch glides and changes from syllable to
    syllable) under a rise-and-fall envelope, with every fifth syllable silent like a pause between words."""
    rate = _SYLLABLES_PER_SECOND
    syllable = f"floor(t*{rate})"
    # Pitch 110-190 Hz, different per syllable, with a gentle glide inside each one.
    pitch = f"(150+40*sin(2.3*{syllable}+1)+12*sin(2*PI*3*t))"
    phase = f"2*PI*{pitch}*t"
    voice = f"(sin({phase})+0.6*sin(2*{phase})+0.35*sin(3*{phase})+0.2*sin(5*{phase}))/2.15"
    envelope = f"pow(sin(PI*{rate}*t),2)"
    spoken = f"lt(mod({syllable},5),4)"
    return f"0.7*{voice}*{envelope}*{spoken}"


def make_sample_speech(seconds: float = 4.0) -> bytes:
    """A mono 24 kHz MP3 of exactly `seconds` that sounds speech-like (syllable-like tone bursts). Deterministic."""
    if not 0.1 <= seconds <= 600:
        raise ValueError("seconds must be between 0.1 and 600")
    with tempfile.TemporaryDirectory(prefix="avatar-speech-") as tmp:
        out = Path(tmp) / "speech.mp3"
        _run_ffmpeg(
            [
                "-f", "lavfi", "-i", f"aevalsrc=exprs='{_speech_expression()}':s={SPEECH_SAMPLE_RATE}:d={seconds:.6f}",
                "-ac", "1", "-c:a", "libmp3lame", "-b:a", "64k",
                "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
                str(out),
            ],
            "speech",
        )  # fmt: skip
        return out.read_bytes()


def audio_duration(audio: bytes) -> float:
    """Exact decoded length in seconds of an audio clip (sample count / rate), for checks and tests."""
    with tempfile.TemporaryDirectory(prefix="avatar-audio-") as tmp:
        source, wav_path = Path(tmp) / "audio", Path(tmp) / "audio.wav"
        source.write_bytes(audio)
        _run_ffmpeg(["-i", str(source), "-vn", "-map", "0:a:0", "-c:a", "pcm_s16le", str(wav_path)], "audio")
        return _wav_duration(wav_path)


__all__ = [
    "DURATION_TOLERANCE",
    "FPS",
    "MediaError",
    "MediaInfo",
    "audio_duration",
    "ffmpeg_exe",
    "make_sample_portrait",
    "make_sample_speech",
    "probe_media",
    "render_avatar_video",
]
