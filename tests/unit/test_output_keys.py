"""Where a task's video goes: the output path template (the stack's, or the job's own), checked before anything is
paid, rendered for the task when its pair is checked, and where finalize copies the video."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from support.fakes import BUCKET, ScriptedProvider, make_settings, make_world, upload

from avatar_pipeline.domain.models import S3Object, TaskStatus
from avatar_pipeline.domain.output_keys import DEFAULT_TEMPLATE, key_problems, render, template_problems
from avatar_pipeline.domain.state_machine import begin
from avatar_pipeline.services.finishing import output_key
from avatar_pipeline.services.intake import handle_upload

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def task_of(image_key: str, job: str = "team/amy", model: str = "kling-v1-std"):  # type: ignore[no-untyped-def]
    image = S3Object(bucket=BUCKET, key=image_key)
    return begin("t-1", job, since=T0, arrived="a", now=T0, provider="wavespeed", model=model, image=image)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("outputs/../inbox/{task}.mp4", "it may not hold . or .. segments"),
        ("inbox/{job}/{task}.mp4", "it must start with outputs/ (the bucket's output area)"),
        ("outputs/{job}/{stem}.mp4", "it must hold {task}, so no task's video replaces another's"),
        ("outputs/{tenant}/{task}.mp4", "it names {tenant}; the placeholders are {job}, {task}, {stem}"),
        ("outputs/{task!r}.mp4", "its placeholders take no format"),
        ("outputs/{task:>40}.mp4", "its placeholders take no format"),
        ("outputs/{task}.mov", "it must end with .mp4"),
        ("outputs/{task.mp4", "it is not a template"),
    ],
)
def test_a_template_that_could_escape_overwrite_or_not_render_is_refused_saying_why(
    template: str, problem: str
) -> None:
    assert any(found.startswith(problem) for found in template_problems(template)), template_problems(template)


@pytest.mark.parametrize(
    "template", [DEFAULT_TEMPLATE, "outputs/{input_dir}/{stem}-{task}.mp4", "outputs/{date}/{model}/{task}.mp4"]
)
def test_the_default_and_layout_keeping_templates_are_accepted(template: str) -> None:
    assert template_problems(template) == []


def test_a_template_renders_the_tasks_parts_and_drops_empty_ones() -> None:
    # A folder job keeps its inbox layout; a pair straight under inbox/ has no folder, and no empty segment is left
    folder_job = task_of("inbox/team/amy/face.png")
    root_pair = task_of("inbox/amy.jpg", job="amy")
    layout = "outputs/{input_dir}/{stem}-{task}.mp4"
    assert render(layout, folder_job) == "outputs/team/amy/face-t-1.mp4"
    assert render(layout, root_pair) == "outputs/amy-t-1.mp4"
    assert (
        render("outputs/{date}/{model}/{job}/{task}.mp4", folder_job)
        == "outputs/2025-06-01/kling-v1-std/team/amy/t-1.mp4"
    )
    assert render(DEFAULT_TEMPLATE, folder_job) == "outputs/team/amy/t-1.mp4"


def test_a_rendered_key_a_job_name_would_take_out_of_the_output_area_or_past_s3s_limit_is_refused() -> None:
    escaping = render("outputs/{input_dir}/{task}.mp4", task_of("inbox/../inbox/amy/face.png", job="../inbox/amy"))
    assert key_problems(escaping) == [f"its video's key {escaping!r} would leave the bucket's output area (outputs/)"]
    long = render(DEFAULT_TEMPLATE, task_of("inbox/x/face.png", job="j" * 1020))
    assert key_problems(long) == [
        "the job name is too long: its video's key would be 1,036 bytes, over S3's limit of 1,024"
    ]


def test_the_stacks_template_is_checked_when_the_settings_are_read() -> None:
    assert make_settings(OUTPUT_PATH_TEMPLATE="outputs/{input_dir}/{stem}-{task}.mp4").output_path_template
    with pytest.raises(
        ValidationError, match=re.escape("OUTPUT_PATH_TEMPLATE 'outputs/{stem}.mp4': it must hold {task}")
    ):
        make_settings(OUTPUT_PATH_TEMPLATE="outputs/{stem}.mp4")


def deliver(w, job: str, options: dict[str, object] | None):  # type: ignore[no-untyped-def]
    if options is not None:
        w.media.put_object(BUCKET, f"inbox/{job}/job.json", json.dumps(options))
    handle_upload(w.ctx, upload(f"inbox/{job}/face.png", etag="img", size=200_000))
    outcome = handle_upload(w.ctx, upload(f"inbox/{job}/voice.mp3", etag="aud", size=50_000))
    task = w.tasks.get(outcome.task_id or "")
    assert task is not None
    return task


def test_a_task_keeps_the_key_its_template_gave_it_when_its_pair_was_checked() -> None:
    # Given a stack whose videos keep the inbox layout, and a job that gives a template of its own
    w = make_world(
        provider=ScriptedProvider(), settings={"OUTPUT_PATH_TEMPLATE": "outputs/{input_dir}/{stem}-{task}.mp4"}
    )
    stack_default = deliver(w, "team/amy", None)
    own = deliver(w, "team/bob", {"output_path": "outputs/clients/{job}/{task}.mp4"})
    # Then each task holds its key, which is where finalize will copy its video
    assert stack_default.status is TaskStatus.QUEUED and own.status is TaskStatus.QUEUED
    assert output_key(stack_default) == f"outputs/team/amy/face-{stack_default.task_id}.mp4"
    assert output_key(own) == f"outputs/clients/team/bob/{own.task_id}.mp4"


def test_a_record_from_before_templates_keeps_todays_key() -> None:
    assert output_key(task_of("inbox/team/amy/face.png")) == "outputs/team/amy/t-1.mp4"


def test_a_hostile_output_path_in_job_json_rejects_the_pair_unpaid() -> None:
    # Given a job whose job.json would put its video under inbox/ (and so start the pipeline again)
    w = make_world(provider=ScriptedProvider())
    task = deliver(w, "eve", {"output_path": "inbox/{job}/{task}.mp4"})
    # Then it is REJECTED saying why, and nothing is sent
    assert task.status is TaskStatus.REJECTED
    assert task.reason == (
        "job.json's output_path 'inbox/{job}/{task}.mp4' cannot be used: it must start with outputs/ (the bucket's"
        " output area)"
    )
