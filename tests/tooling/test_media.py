"""The local stack's real media: rendered avatar videos, probing, and the deterministic sample inputs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from avatar_local.simulators.media import (
    MediaError,
    audio_duration,
    make_sample_portrait,
    make_sample_speech,
    probe_media,
    render_avatar_video,
)


@pytest.fixture(scope="module")
def portrait() -> bytes:
    return make_sample_portrait()


@pytest.mark.parametrize("seconds", [2.0, 5.5])
def test_rendered_video_lasts_as_long_as_the_speech(portrait: bytes, tmp_path: Path, seconds: float) -> None:
    # Given a portrait and a speech clip of `seconds`
    speech = make_sample_speech(seconds)
    out = tmp_path / "avatar.mp4"

    # When it is rendered
    render_avatar_video(portrait, speech, out)

    # Then the MP4 lasts as long as the speech (within 0.1 s), with an even-sized picture ≤ 512 and both streams
    info = probe_media(out)
    assert abs(info.duration - seconds) <= 0.1
    assert info.has_video and info.has_audio
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.width is not None and info.height is not None
    assert max(info.width, info.height) <= 512
    assert info.width % 2 == 0 and info.height % 2 == 0


def test_rendering_scales_odd_sized_large_images_to_even_sides_within_max_side(tmp_path: Path) -> None:
    # Given a 1001x777 JPEG (odd, larger than max_side)
    buffer = io.BytesIO()
    Image.new("RGB", (1001, 777), (200, 120, 90)).save(buffer, format="JPEG")
    out = tmp_path / "wide.mp4"

    # When it is rendered with max_side=300
    render_avatar_video(buffer.getvalue(), make_sample_speech(1.0), out, max_side=300)

    # Then the longer side is at most 300, both sides are even and the aspect ratio is kept
    info = probe_media(out)
    assert info.width is not None and info.height is not None
    assert info.width <= 300 and info.height <= 300
    assert info.width % 2 == 0 and info.height % 2 == 0
    assert abs(info.width / info.height - 1001 / 777) < 0.02


def test_rendering_a_non_image_raises_media_error_with_ffmpegs_reason(tmp_path: Path) -> None:
    # Given bytes that are not an image
    not_an_image = b"this is plain text, not a picture"

    # When they are rendered, Then MediaError carries ffmpeg's complaint and no output is left behind
    with pytest.raises(MediaError, match="Invalid data"):
        render_avatar_video(not_an_image, make_sample_speech(1.0), tmp_path / "never.mp4")
    assert not (tmp_path / "never.mp4").exists()


def test_rendering_audio_that_is_not_audio_raises_media_error(portrait: bytes, tmp_path: Path) -> None:
    # Given an image where the audio should be, When it is rendered, Then MediaError is raised
    with pytest.raises(MediaError):
        render_avatar_video(portrait, b"\x00" * 64, tmp_path / "never.mp4")


def test_sample_portrait_is_a_png_of_the_requested_size() -> None:
    # Given/When a 320x400 sample portrait is made (twice)
    data = make_sample_portrait(320, 400)

    # Then it is a PNG of exactly that size, and the same bytes every time
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (320, 400)
    assert make_sample_portrait(320, 400) == data


def test_sample_speech_lasts_exactly_the_requested_time(tmp_path: Path) -> None:
    # Given/When a 3.3 s sample speech clip is made
    speech = make_sample_speech(3.3)
    path = tmp_path / "speech.mp3"
    path.write_bytes(speech)

    # Then it is a deterministic mono MP3 whose duration is 3.3 s within 0.05 s (reported and decoded)
    info = probe_media(path)
    assert info.has_audio and not info.has_video and info.audio_codec == "mp3"
    assert abs(info.duration - 3.3) <= 0.05
    assert abs(audio_duration(speech) - 3.3) <= 0.05
    assert make_sample_speech(3.3) == speech


def test_probe_rejects_files_ffmpeg_cannot_read(tmp_path: Path) -> None:
    # Given a file of garbage, When it is probed, Then MediaError is raised
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(MediaError):
        probe_media(path)
