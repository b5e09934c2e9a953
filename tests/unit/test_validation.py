"""validation: the size checks that stop a pair before any money is spent."""

from __future__ import annotations

import re

import pytest

from avatar_pipeline.models import S3Object
from avatar_pipeline.validation import INPUT_LIMITS, MIB, InputLimits, problems_with_pair

LIMITS = INPUT_LIMITS["wavespeed"]
OK_IMAGE = S3Object(bucket="media", key="inbox/alice/face.png", etag="a", size=200_000)
OK_AUDIO = S3Object(bucket="media", key="inbox/alice/voice.mp3", etag="b", size=300_000)


def image(size: int) -> S3Object:
    return OK_IMAGE.model_copy(update={"size": size})


def audio(size: int) -> S3Object:
    return OK_AUDIO.model_copy(update={"size": size})


def test_wavespeed_limits_are_klings_published_ones() -> None:
    assert LIMITS.max_image_bytes == 10 * MIB
    assert LIMITS.max_audio_bytes == 5 * MIB


def test_a_pair_within_the_limits_has_no_problems() -> None:
    assert problems_with_pair(OK_IMAGE, OK_AUDIO, "wavespeed") == []


def test_sizes_exactly_at_the_limits_are_accepted() -> None:
    assert problems_with_pair(image(LIMITS.max_image_bytes), audio(LIMITS.max_audio_bytes), "wavespeed") == []


def test_one_byte_sizes_are_accepted() -> None:
    assert problems_with_pair(image(1), audio(1), "wavespeed") == []


def test_an_image_one_byte_over_the_limit_is_refused_naming_file_size_and_limit() -> None:
    problems = problems_with_pair(image(LIMITS.max_image_bytes + 1), OK_AUDIO, "wavespeed")
    assert len(problems) == 1
    message = problems[0]
    assert message.startswith("face.png is ")
    assert "10.00 MiB" in message  # measured size and limit, both rounded
    assert "the limit is 10.00 MiB" in message
    assert "wavespeed" in message


def test_an_audio_one_byte_over_the_limit_is_refused_naming_file_size_and_limit() -> None:
    problems = problems_with_pair(OK_IMAGE, audio(LIMITS.max_audio_bytes + 1), "wavespeed")
    assert len(problems) == 1
    message = problems[0]
    assert message.startswith("voice.mp3 is ")
    assert "the limit is 5.00 MiB" in message


def test_a_clearly_oversized_audio_shows_its_measured_size() -> None:
    (message,) = problems_with_pair(OK_IMAGE, audio(7 * MIB + MIB // 2), "wavespeed")
    assert message == "voice.mp3 is 7.50 MiB; the limit is 5.00 MiB for wavespeed"


def test_the_measured_size_of_a_file_just_over_the_limit_differs_from_the_limit_as_written() -> None:
    (message,) = problems_with_pair(OK_IMAGE, audio(LIMITS.max_audio_bytes + 1), "wavespeed")
    match = re.fullmatch(r"voice\.mp3 is (.+); the limit is (.+) for wavespeed", message)
    assert match is not None
    measured, limit = match.groups()
    assert measured != limit, message


@pytest.mark.parametrize("which", ["image", "audio"])
def test_an_empty_file_is_refused_naming_the_file_and_zero_bytes(which: str) -> None:
    pair = (image(0), OK_AUDIO) if which == "image" else (OK_IMAGE, audio(0))
    problems = problems_with_pair(*pair, "wavespeed")
    expected_name = "face.png" if which == "image" else "voice.mp3"
    assert problems == [f"{expected_name} is empty (0 bytes)"]


def test_both_problems_are_reported_together() -> None:
    problems = problems_with_pair(image(0), audio(LIMITS.max_audio_bytes * 2), "wavespeed")
    assert len(problems) == 2
    assert problems[0].startswith("face.png")
    assert problems[1].startswith("voice.mp3")


def test_small_sizes_are_shown_in_exact_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a provider whose limits are small enough to be written in bytes
    monkeypatch.setitem(INPUT_LIMITS, "wavespeed", InputLimits(max_image_bytes=2000, max_audio_bytes=1000))
    # When an audio clip is one byte over
    problems = problems_with_pair(image(2000), audio(1001), "wavespeed")
    # Then the message gives the exact measured size and limit
    assert problems == ["voice.mp3 is 1,001 bytes; the limit is 1,000 bytes for wavespeed"]


def test_the_message_names_the_file_not_its_whole_key() -> None:
    big = S3Object(bucket="media", key="inbox/team/alice/big face.png", size=11 * MIB)
    (message,) = problems_with_pair(big, OK_AUDIO, "wavespeed")
    assert message == "big face.png is 11.00 MiB; the limit is 10.00 MiB for wavespeed"
