"""`avatar submit`: what it uploads for a job, and the job.json its flags make."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from support.aws import REGION

from avatar_cli.__main__ import main

BUCKET = "cli-media"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


def submit(tmp_path: Path, *flags: str) -> list[str]:
    """Run `avatar submit` for a face and a voice in `tmp_path` as job "j"; returns the keys now in the bucket."""
    stack_file = tmp_path / "stack.json"
    stack_file.write_text(json.dumps({"bucket": BUCKET, "table": "tasks", "region": REGION}))
    (tmp_path / "face.png").write_bytes(b"png")
    (tmp_path / "voice.mp3").write_bytes(b"mp3")
    argv = ["--stack-file", str(stack_file), "submit", str(tmp_path / "face.png"), str(tmp_path / "voice.mp3")]
    assert main([*argv, "--job", "j", *flags]) == 0
    listed = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_model_options_and_providers_become_the_jobs_options_file(s3: Any, tmp_path: Path) -> None:
    # When a pair is submitted with a model, two of its options and two providers in order of preference
    keys = submit(
        tmp_path,
        *("--model", "infinitetalk", "--option", "resolution=720p", "--option", "seed=-1"),
        *("--option", "turbo_mode=true", "--provider", "wavespeed", "--provider", "fal"),
    )
    # Then job.json holds them as job.json takes them (whole numbers and true/false typed), next to the pair
    assert keys == ["inbox/j/face.png", "inbox/j/job.json", "inbox/j/voice.mp3"]
    written = json.loads(s3.get_object(Bucket=BUCKET, Key="inbox/j/job.json")["Body"].read())
    assert written == {
        "model": "infinitetalk",
        "options": {"resolution": "720p", "seed": -1, "turbo_mode": True},
        "providers": ["wavespeed", "fal"],
    }


def test_a_mask_is_uploaded_under_a_masks_name_first_and_named_in_the_options(s3: Any, tmp_path: Path) -> None:
    # Given a mask file named as any image
    (tmp_path / "outline.png").write_bytes(b"png")
    # When it is submitted with a pair for InfiniteTalk
    keys = submit(tmp_path, "--model", "infinitetalk", "--mask", str(tmp_path / "outline.png"))
    # Then it is in the job's folder under a mask's name, and job.json names it as the model's mask_image
    assert keys == ["inbox/j/face.png", "inbox/j/job.json", "inbox/j/outline.mask.png", "inbox/j/voice.mp3"]
    written = json.loads(s3.get_object(Bucket=BUCKET, Key="inbox/j/job.json")["Body"].read())
    assert written == {"model": "infinitetalk", "options": {"mask_image": "outline.mask.png"}}


def test_a_pair_submitted_without_choices_has_no_options_file(s3: Any, tmp_path: Path) -> None:
    # When a pair is submitted with no flag; Then only the pair is uploaded (the stack's defaults apply)
    assert submit(tmp_path) == ["inbox/j/face.png", "inbox/j/voice.mp3"]


@pytest.mark.parametrize("flags", [("--option", "resolution"), ("--option", "=720p"), ("--model", "ultra")])
def test_a_malformed_option_or_unknown_model_is_refused_before_anything_is_uploaded(
    s3: Any, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    # When a flag is not NAME=VALUE, or names no model; Then the command fails and nothing is uploaded
    with pytest.raises(SystemExit):
        submit(tmp_path, *flags)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
