"""validation: the provider's limits, the size stage (nothing read), the content checks and `validate_pair`."""

from __future__ import annotations

import dataclasses
import re

import pytest
from support.corpus import mp3, picture, wav

from avatar_pipeline.domain.media_checks import AudioFacts, BytesSource, ImageFacts
from avatar_pipeline.domain.models import S3Object
from avatar_pipeline.domain.validation import (
    MIB,
    TIMES,
    check_audio,
    check_image,
    check_size,
    validate_pair,
)
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.spec import InputLimits

LIMITS = PROVIDERS.model("wavespeed", "kling-v1-std").limits
# Whose limits validate_pair's messages name: the model, at its provider.
WHO = "Kling v1 AI Avatar (standard) on WaveSpeed"


def size_problems(image: S3Object, audio: S3Object) -> list[str]:
    """What the size stage alone says of a pair (nothing is read)."""
    found = (
        check_size(image, LIMITS.max_image_bytes, WHO),
        check_size(audio, LIMITS.max_audio_bytes, WHO),
    )
    return [problem for problem in found if problem]


OK_IMAGE = S3Object(bucket="media", key="inbox/alice/face.png", etag="a", size=200_000)
OK_AUDIO = S3Object(bucket="media", key="inbox/alice/voice.mp3", etag="b", size=300_000)


def image(size: int) -> S3Object:
    return OK_IMAGE.model_copy(update={"size": size})


def audio(size: int) -> S3Object:
    return OK_AUDIO.model_copy(update={"size": size})


def image_facts(width: int, height: int, image_format: str = "PNG") -> ImageFacts:
    return ImageFacts(
        format=image_format, width=width, height=height, mode="RGB", orientation=1, integrity="end marker", bytes_read=0
    )


def audio_facts(seconds: float, audio_format: str = "MP3") -> AudioFacts:
    return AudioFacts(format=audio_format, duration_seconds=seconds, sample_rate=44100, channels=1, bytes_read=0)


class UnreadableSource:
    """A source that must not be read: validation is expected to decide from the size alone."""

    def __init__(self, size: int) -> None:
        self.size = size

    def read_range(self, offset: int, length: int) -> bytes:
        raise AssertionError("this file should not have been read")


class BrokenSource:
    """A source whose storage fails (S3 throttling, a network error)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def read_range(self, offset: int, length: int) -> bytes:
        raise ConnectionError("S3 is having a bad day")


# ---------------------------------------------------------------------------------------------------- the table


def test_wavespeed_limits_are_klings_published_ones() -> None:
    assert (
        InputLimits(
            max_image_bytes=10 * MIB,
            max_audio_bytes=5 * MIB,
            min_image_side=300,
            max_aspect_ratio=2.5,
            min_audio_seconds=2.0,
            max_audio_seconds=300.0,
            image_formats=("JPEG", "PNG"),
            audio_formats=("MP3", "WAV", "M4A", "AAC"),
        )
        == LIMITS
    )


def test_cometapi_is_stricter_on_duration_than_wavespeed() -> None:
    # CometAPI documents 2-60 s; WaveSpeed proxies Kling, whose own limit is 300 s.
    models = ("kling-v1-std", "kling-v1-pro")
    assert [PROVIDERS.model("cometapi", model).limits.max_audio_seconds for model in models] == [60, 60]
    assert [PROVIDERS.model("wavespeed", model).limits.max_audio_seconds for model in models] == [300, 300]


# ------------------------------------------------------------------------------------------ sizes (nothing read)


def test_a_pair_within_the_limits_has_no_size_problems() -> None:
    assert size_problems(OK_IMAGE, OK_AUDIO) == []


def test_sizes_exactly_at_the_limits_are_accepted() -> None:
    assert size_problems(image(LIMITS.max_image_bytes), audio(LIMITS.max_audio_bytes)) == []


def test_one_byte_sizes_are_accepted_by_the_size_stage() -> None:
    assert size_problems(image(1), audio(1)) == []


def test_an_image_one_byte_over_shows_both_sizes_to_the_byte() -> None:
    assert size_problems(image(LIMITS.max_image_bytes + 1), OK_AUDIO) == [
        f"face.png is 10.00 MiB (10,485,761 bytes); the limit is 10.00 MiB (10,485,760 bytes) for {WHO}"
    ]


def test_an_audio_one_byte_over_shows_a_measured_size_that_differs_from_the_limit_as_written() -> None:
    (message,) = size_problems(OK_IMAGE, audio(LIMITS.max_audio_bytes + 1))
    match = re.fullmatch(
        r"voice\.mp3 is (.+); the limit is (.+) for Kling v1 AI Avatar \(standard\) on WaveSpeed", message
    )
    assert match is not None
    measured, limit = match.groups()
    assert measured != limit, message
    assert limit == "5.00 MiB (5,242,880 bytes)"


def test_a_clearly_oversized_audio_shows_its_measured_size() -> None:
    (message,) = size_problems(OK_IMAGE, audio(7 * MIB + MIB // 2))
    assert message == f"voice.mp3 is 7.50 MiB; the limit is 5.00 MiB for {WHO}"


@pytest.mark.parametrize("which", ["image", "audio"])
def test_an_empty_file_is_refused_naming_the_file_and_zero_bytes(which: str) -> None:
    pair = (image(0), OK_AUDIO) if which == "image" else (OK_IMAGE, audio(0))
    expected_name = "face.png" if which == "image" else "voice.mp3"
    assert size_problems(*pair) == [f"{expected_name} is empty (0 bytes)"]


def test_both_size_problems_are_reported_together_image_first() -> None:
    problems = size_problems(image(0), audio(LIMITS.max_audio_bytes * 2))
    assert [problem.split(" ", 1)[0] for problem in problems] == ["face.png", "voice.mp3"]


def test_small_limits_are_shown_in_exact_bytes() -> None:
    assert (
        check_size(audio(1001), 1000, "wavespeed") == "voice.mp3 is 1,001 bytes; the limit is 1,000 bytes for wavespeed"
    )
    assert check_size(audio(1000), 1000, "wavespeed") is None


def test_the_message_names_the_file_not_its_whole_key() -> None:
    big = S3Object(bucket="media", key="inbox/team/alice/big face.png", size=11 * MIB)
    assert check_size(big, LIMITS.max_image_bytes, WHO) == (
        f"big face.png is 11.00 MiB; the limit is 10.00 MiB for {WHO}"
    )


# -------------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize(("width", "height"), [(300, 300), (300, 750), (750, 300), (4000, 3000), (512, 640)])
def test_images_within_the_limits_pass(width: int, height: int) -> None:
    assert check_image(image_facts(width, height), "face.png", LIMITS) == []


def test_a_side_under_the_minimum_names_both_sides_and_the_minimum() -> None:
    assert check_image(image_facts(299, 400), "face.png", LIMITS) == [
        f"face.png is 299{TIMES}400 px; each side must be at least 300 px"
    ]


def test_a_portrait_too_narrow_is_written_1_to_n() -> None:
    assert check_image(image_facts(300, 780), "face.png", LIMITS) == [
        "face.png has an aspect ratio of 1:2.6; it must be between 1:2.5 and 2.5:1"
    ]


def test_a_landscape_too_wide_is_written_n_to_1() -> None:
    assert check_image(image_facts(780, 300), "face.png", LIMITS) == [
        "face.png has an aspect ratio of 2.6:1; it must be between 1:2.5 and 2.5:1"
    ]


def test_a_ratio_just_over_the_limit_is_not_rounded_onto_it() -> None:
    # 751 / 300 = 2.5033...: "1:2.5" would contradict the verdict, so more digits are shown
    assert check_image(image_facts(300, 751), "face.png", LIMITS) == [
        "face.png has an aspect ratio of 1:2.503; it must be between 1:2.5 and 2.5:1"
    ]


def test_a_tiny_extreme_image_reports_both_problems() -> None:
    assert check_image(image_facts(100, 1000), "face.jpg", LIMITS) == [
        f"face.jpg is 100{TIMES}1000 px; each side must be at least 300 px",
        "face.jpg has an aspect ratio of 1:10.0; it must be between 1:2.5 and 2.5:1",
    ]


def test_a_format_the_provider_does_not_take_is_named() -> None:
    jpeg_only = dataclasses.replace(LIMITS, image_formats=("JPEG",))
    assert check_image(image_facts(400, 400, "PNG"), "face.png", jpeg_only) == ["face.png is a PNG image; use JPEG"]


# --------------------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("seconds", [2.0, 2.04, 60.1, 299.9, 300.0])
def test_durations_within_the_limits_pass(seconds: float) -> None:
    assert check_audio(audio_facts(seconds), "voice.mp3", LIMITS, "WaveSpeed") == []


def test_a_clip_too_long_names_its_duration_and_the_limit() -> None:
    sixty = dataclasses.replace(LIMITS, max_audio_seconds=60.0)
    assert check_audio(audio_facts(61.4), "voice.mp3", sixty, "WaveSpeed") == [
        "voice.mp3 lasts 61.4 s; the limit is 60 s for WaveSpeed"
    ]


def test_wavespeed_allows_up_to_300_seconds() -> None:
    assert check_audio(audio_facts(300.672), "voice.mp3", LIMITS, "WaveSpeed") == [
        "voice.mp3 lasts 300.7 s; the limit is 300 s for WaveSpeed"
    ]


def test_a_clip_too_short_names_its_duration_and_the_minimum() -> None:
    assert check_audio(audio_facts(1.9), "voice.wav", LIMITS, "WaveSpeed") == [
        "voice.wav lasts 1.9 s; it must last at least 2 s"
    ]


@pytest.mark.parametrize(
    ("seconds", "shown"), [(1.96, "1.96"), (1.999, "1.999"), (300.04, "300.04"), (300.0004, "300.0004")]
)
def test_a_duration_near_a_limit_is_shown_with_the_digits_that_matter(seconds: float, shown: str) -> None:
    (message,) = check_audio(audio_facts(seconds), "voice.mp3", LIMITS, "WaveSpeed")
    assert f"lasts {shown} s;" in message


def test_an_audio_format_the_provider_does_not_take_is_named() -> None:
    no_aac = dataclasses.replace(LIMITS, audio_formats=("MP3", "WAV"))
    assert check_audio(audio_facts(5.0, "AAC"), "voice.aac", no_aac, "WaveSpeed") == [
        "voice.aac is AAC audio; use MP3 or WAV"
    ]


# ------------------------------------------------------------------------------------------------- validate_pair


def _objects(image_data: bytes, audio_data: bytes, *, image_key: str = "inbox/bob/face.jpg") -> tuple[S3Object, ...]:
    return (
        S3Object(bucket="media", key=image_key, etag="i", size=len(image_data)),
        S3Object(bucket="media", key="inbox/bob/voice.mp3", etag="a", size=len(audio_data)),
    )


def test_a_good_pair_is_accepted_with_its_facts_and_what_was_read() -> None:
    # Given a 512x640 JPEG and a 2.5 s MP3
    jpeg, clip = picture(512, 640), mp3(2.5)
    image_obj, audio_obj = _objects(jpeg, clip)

    # When the pair is validated
    report = validate_pair(BytesSource(jpeg), image_obj, BytesSource(clip), audio_obj, "wavespeed", "kling-v1-std", {})

    # Then it has no problems, and says what it measured and read
    assert report.accepted
    assert report.problems == []
    assert report.image is not None and (report.image.format, report.image.width, report.image.height) == (
        "JPEG",
        512,
        640,
    )
    assert report.audio is not None and report.audio.duration_seconds == pytest.approx(2.5, abs=0.1)
    assert (report.image_bytes_read, report.audio_bytes_read) == (len(jpeg), len(clip))  # small: one block each


def test_a_file_whose_event_size_rules_it_out_is_not_read_but_its_partner_still_is() -> None:
    # Given an image the event says is 11 MiB, and a clip that is too short
    clip = wav(1.0)
    image_obj = S3Object(bucket="media", key="inbox/bob/face.png", size=11 * MIB)
    audio_obj = S3Object(bucket="media", key="inbox/bob/voice.wav", size=len(clip))

    # When the pair is validated (reading the image would fail the test)
    report = validate_pair(
        UnreadableSource(11 * MIB), image_obj, BytesSource(clip), audio_obj, "wavespeed", "kling-v1-std", {}
    )

    # Then both problems are reported, image first, and the image was never read
    assert report.problems == [
        f"face.png is 11.00 MiB; the limit is 10.00 MiB for {WHO}",
        "voice.wav lasts 1.0 s; it must last at least 2 s",
    ]
    assert report.image is None
    assert report.image_bytes_read == 0
    assert report.audio is not None and report.audio_bytes_read == len(clip)


def test_both_sizes_failing_reads_nothing() -> None:
    image_obj, audio_obj = image(0), audio(6 * MIB)

    report = validate_pair(
        UnreadableSource(0), image_obj, UnreadableSource(6 * MIB), audio_obj, "wavespeed", "kling-v1-std", {}
    )

    assert report.problems == size_problems(image_obj, audio_obj)
    assert (report.image_bytes_read, report.audio_bytes_read) == (0, 0)


def test_content_problems_of_both_files_are_reported_together() -> None:
    # Given a 299 px wide PNG named .jpg and an Ogg file named .mp3
    png = picture(299, 500, image_format="PNG")
    ogg = bytes.fromhex("4f676753") + bytes(24) + b"\x01vorbis" + bytes(64)
    image_obj, audio_obj = _objects(png, ogg)

    report = validate_pair(BytesSource(png), image_obj, BytesSource(ogg), audio_obj, "wavespeed", "kling-v1-std", {})

    assert report.problems == [
        f"face.jpg is 299{TIMES}500 px; each side must be at least 300 px",
        "voice.mp3 is an Ogg Vorbis audio file; use MP3, WAV, M4A or AAC",
    ]
    assert report.image is not None and report.image.format == "PNG"  # measured, then found wanting
    assert report.audio is None


def test_a_storage_failure_is_raised_instead_of_rejecting_the_upload() -> None:
    clip = mp3(2.5)
    image_obj, audio_obj = _objects(b"\xff" * 5000, clip)

    with pytest.raises(ConnectionError):
        validate_pair(BrokenSource(5000), image_obj, BytesSource(clip), audio_obj, "wavespeed", "kling-v1-std", {})


def test_the_providers_own_limits_apply() -> None:
    # Given a provider whose clips may last at most 60 s (CometAPI documents that for the same model)
    jpeg, clip = picture(400, 400), mp3(60.1, rate=8000, bitrate="8k")
    image_obj, audio_obj = _objects(jpeg, clip)

    # When a 60.1 s clip (measured a little longer: whole MP3 frames) is validated
    report = validate_pair(BytesSource(jpeg), image_obj, BytesSource(clip), audio_obj, "cometapi", "kling-v1-std", {})

    # Then it is refused with that limit
    (problem,) = report.problems
    assert re.fullmatch(
        r"voice\.mp3 lasts 60\.\d+ s; the limit is 60 s for Kling AI Avatar \(std\) on CometAPI", problem
    ), problem
