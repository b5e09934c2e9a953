"""The benchmark (`make bench`, local/avatar_local/bench) still runs: its parts at tiny sizes, no timing asserted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.mp4 import real_mp4

from avatar_local.bench import finalize_copy, poll_child, report
from avatar_local.bench.__main__ import main as bench_main
from avatar_local.bench.common import MIB, Figure, Section, lambda_environment
from avatar_local.bench.task_cost import TaskUsage, cost_of
from avatar_pipeline.domain.mp4_stream import Mp4StreamCheck


def test_a_padded_video_is_a_whole_mp4_of_the_size_asked(tmp_path: Path) -> None:
    video = tmp_path / "padded.mp4"
    finalize_copy.padded_mp4(real_mp4(), 6 * MIB + 3, video)
    check = Mp4StreamCheck()
    with video.open("rb") as file:
        while chunk := file.read(MIB):
            check.feed(chunk)
    check.finish()
    assert video.stat().st_size == 6 * MIB + 3


def test_a_copy_is_measured_against_the_baseline_in_processes_of_their_own(tmp_path: Path) -> None:
    section = finalize_copy.measure(1, tmp_path, lambda _: None, sizes=(6 * MIB, 7 * MIB))
    measures = {figure.measure: figure for figure in section.figures}
    assert set(measures) == {
        "7 MiB copy: throughput",
        "6 MiB copy: throughput",
        "7 MiB copy: CPU time of the copying process, per GiB",
        "7 MiB copy: peak RSS",
        "6 MiB copy: peak RSS",
    }
    assert all(figure.value > 0 and figure.baseline for figure in section.figures)


def test_a_poll_reads_the_tasks_due_and_not_the_history() -> None:
    (with_history,) = poll_child.main(finished=40, in_flight=3, polls=1)["polls"]
    (without_history,) = poll_child.main(finished=0, in_flight=3, polls=1)["polls"]
    # The queries read the three tasks due; the quota records read beside them do not grow with the history.
    assert with_history["reads"]["Query"] == 3
    assert with_history["items_read"] == without_history["items_read"]
    assert with_history["actions"] == {"no-news": 3}


def test_a_function_environment_is_the_templates_plus_lambdas_own() -> None:
    spec = lambda_environment("FinalizeFunction")
    assert spec["module"] == "finalize_handler"
    assert {"ALLOWED_OUTPUT_HOSTS", "TASK_TABLE_NAME", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_FUNCTION_NAME"} <= set(
        spec["environment"]
    )
    assert spec["memory_mb"] > 0


def test_a_tasks_cost_adds_up_what_it_used() -> None:
    usage = TaskUsage(
        invocations={
            "SubmitFunction": [{"wall_ms": 80.0, "cpu_ms": 20.0, "aws_calls": {"dynamodb.GetItem": 3}}],
            "WebhookFunction": [{"wall_ms": 30.0, "cpu_ms": 10.0, "aws_calls": {"dynamodb.PutItem": 2}}],
            "FinalizeFunction": [
                {"wall_ms": 200.0, "cpu_ms": 30.0, "aws_calls": {"s3.UploadPart": 1, "sns.Publish": 1}}
            ],
        },
        log_bytes={"SubmitFunction": 4000},
    )
    memory = {"SubmitFunction": 512, "WebhookFunction": 512, "FinalizeFunction": 512}
    costs = cost_of(usage, memory, task_item_bytes=2500)
    assert usage.cpu_ms == 60.0
    assert all(value >= 0 for value in costs.values())
    assert 0 < sum(costs.values()) < 0.01
    assert costs["Lambda duration"] == pytest.approx((80 + 30 + 200) / 1000 * 0.5 * 0.0000133334)


def test_the_table_names_the_command_the_figures_and_what_was_missed() -> None:
    section = Section("cold", "1. Cold start", method="imported")
    section.figures = [
        Figure(
            section.title,
            "import `x`",
            300.0,
            "ms",
            5,
            baseline=150.0,
            baseline_label="boto3",
            target="≤ 1.5",
            met=False,
        ),
        Figure(section.title, "layer", 55.5, "MiB", 1, decimals=1),
    ]
    text = report.markdown([section], command="make bench", seconds=61, machine="test", when=datetime.now(UTC))
    assert "make bench" in text
    assert "| 1 | import `x` | 300 ms | 150 ms: boto3 | 2.00\u00d7 | ≤ 1.5 | **no** | 5 |" in text
    assert "Targets missed: 1" in text
    assert "| 1 | layer | 55.5 MiB | — | — | — | — | 1 |" in text


def test_a_tiny_batch_and_task_run_through_the_local_stack_meet_their_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the benchmark at its smallest: a batch of 3 pairs, 1 task measured for CPU and cost
    # When it runs those two sections through the local stack
    exit_code = bench_main(["--quick", "--no-write", "--only", "batch", "--only", "cost"])

    # Then every pair became a stored video, none was answered 429, and the per-task figures are there
    printed = capsys.readouterr().out
    assert exit_code == 0
    assert "| 4 | first upload to last stored video |" in printed
    assert "| 4 | submit requests answered 429 | 0 requests | — | — | < 5% of 3 | yes | 1 |" in printed
    assert "| 4 | pairs COMPLETED with a stored MP4 (of 3) | 3 pairs | — | — | 3 | yes | 1 |" in printed
    assert "| 5 | CPU in submit + webhook + finalize, one task |" in printed
    assert "| 6 | AWS per 10 s video" in printed
    # Every target met but perhaps the batch's ratio: 3 pairs' 1-minute bound is dwarfed by the stack's start-up
    # (tests/chaos/test_batch_run.py and `make batch` hold the ratio, at sizes where it means something).
    missed = [line for line in printed.splitlines() if "**no**" in line]
    assert all(line.startswith("| 4 | first upload to last stored video |") for line in missed), missed
