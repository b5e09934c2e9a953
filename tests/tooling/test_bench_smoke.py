"""The benchmark (`make bench`, local/avatar_local/bench) still runs: its parts at tiny sizes, no timing asserted."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.mp4 import real_mp4

from avatar_local.bench import coldstart, finalize_copy, poll_child, report, snapstart
from avatar_local.bench.__main__ import main as bench_main
from avatar_local.bench.common import MIB, ROOT, Figure, Section, function_ids, lambda_environment
from avatar_local.bench.task_cost import (
    PER_TASK_FUNCTIONS,
    TaskUsage,
    cost_of,
    events_published,
    first_invocation_figures,
    first_invocations,
)
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


def test_the_cold_start_measures_every_function_of_the_template_in_its_own_environment() -> None:
    # Given the template's six functions
    functions = function_ids()
    assert set(functions) == {
        "SubmitFunction",
        "WebhookFunction",
        "PollerFunction",
        "FinalizeFunction",
        "DispatchFunction",
        "EventsFunction",
    }

    # When each one's Lambda environment is resolved
    specs = {name: lambda_environment(name) for name in functions}

    # Then each names its own module and code directory, and the variables its handler reads are set
    for name, spec in specs.items():
        short = name.removesuffix("Function").lower()
        assert spec["module"] == f"{short}_handler"
        assert Path(spec["code_dir"]).name == short
        assert (Path(spec["code_dir"]) / f"{short}_handler.py").is_file()
    assert specs["EventsFunction"]["environment"]["EVENT_BUS_NAME"]
    # A queue's Ref is its URL, as CloudFormation resolves it
    wakeups = specs["DispatchFunction"]["environment"]["WAKEUP_QUEUE_URL"]
    assert wakeups.startswith("https://sqs.us-east-1.amazonaws.com/123456789012/")


def test_an_import_is_timed_and_names_the_heavy_packages_it_pulled_in(tmp_path: Path) -> None:
    # Given a handler that imports a (stand-in) httpx at module level, and one that imports nothing heavy
    (tmp_path / "httpx.py").write_text("")
    (tmp_path / "eager_handler.py").write_text("import httpx\n")
    (tmp_path / "lazy_handler.py").write_text("def lambda_handler(event, context):\n    import httpx\n")
    env = {"PATH": os.environ.get("PATH", "")}

    # When each is imported in a fresh interpreter, as the cold start imports a handler
    eager = coldstart._import("eager_handler", [tmp_path], env)
    lazy = coldstart._import("lazy_handler", [tmp_path], env)

    # Then both are timed, and only the eager one is said to import httpx
    assert eager["ms"] > 0 and lazy["ms"] > 0
    assert eager["lazy"] == ["httpx"]
    assert lazy["lazy"] == []


def test_the_floor_is_boto3_pydantic_and_powertools_logger_and_metrics_only(tmp_path: Path) -> None:
    # Given the floor's module, on a path with this machine's packages
    (tmp_path / f"{coldstart.FLOOR}.py").write_text(coldstart._FLOOR_MODULE)
    paths = [tmp_path, *(Path(p) for p in site.getsitepackages())]
    env = {"PATH": os.environ.get("PATH", ""), **lambda_environment("FinalizeFunction")["environment"]}

    # When it is imported as a handler is
    result = coldstart._import(coldstart.FLOOR, paths, env)

    # Then it imports none of what only some paths need (httpx) nor anything of tracing, and its row says so
    assert result["lazy"] == []
    assert "Tracer" not in coldstart._FLOOR_MODULE
    assert coldstart.FLOOR_LABEL == "import boto3, pydantic and Powertools' Logger and Metrics only"


@pytest.fixture(scope="module")
def tracing_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tracing packages as the cold start installs them, once: the OpenTelemetry SDK and instrumentations, and
    the X-Ray SDK (in no requirements file), each in a directory of its own."""
    return coldstart.prepare_tracing(tmp_path_factory.mktemp("tracing"))


def _webhook_paths(tracing_dir: Path) -> list[Path]:
    """What the webhook's import finds: its code, the layer's package, the tracing packages, then this virtualenv's
    packages (standing for the layer's requirements and the runtime's boto3)."""
    return [
        ROOT / "functions/webhook",
        ROOT / "layers/shared",
        tracing_dir,
        *(Path(p) for p in site.getsitepackages()),
    ]


def test_a_handler_imported_under_the_adot_wrapper_has_the_sdk_set_up_and_its_calls_instrumented_first(
    tracing_dirs: dict[str, Path],
) -> None:
    # Given the webhook's environment as the template sets it when OpenTelemetryLayerArn is given
    env = lambda_environment(
        coldstart.TRACED_FUNCTION, extra_parameters={"OpenTelemetryLayerArn": coldstart.ADOT_LAYER_ARN}
    )["environment"]
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/otel-instrument"

    # When its handler is imported after what the layer's wrapper does (the local stand-in's start_tracing)
    result = coldstart._import_traced("webhook_handler", _webhook_paths(tracing_dirs["adot"]), env, "adot")

    # Then the setup is timed with the import, the SDK's provider is the global one, botocore and httpx are
    # instrumented, and the handler added its span processor (trace_calls)
    assert result["ms"] >= result["setup_ms"] > 0 and result["handler_ms"] > 0
    assert result["provider"] == "TracerProvider"
    assert result["instrumented"] == ["botocore", "httpx"]
    assert result["stamped"] is True
    assert "httpx" in result["lazy"]  # the httpx instrumentation imports what the handler defers
    assert Path(result["sdk_file"]).is_relative_to(tracing_dirs["adot"])  # the SDK installed apart


def test_a_handler_followed_by_powertools_tracer_patches_as_in_lambda_and_outside_lambda_is_refused(
    tracing_dirs: dict[str, Path],
) -> None:
    env = dict(lambda_environment(coldstart.TRACED_FUNCTION)["environment"])
    paths = _webhook_paths(tracing_dirs["xray"])

    # When the handler is imported, then Tracer() made, in the function's Lambda environment
    result = coldstart._import_traced("webhook_handler", paths, env, "xray")

    # Then the Tracer is on and auto-patched the SDK's clients, timed after the import
    assert result["disabled"] is False
    assert "botocore" in result["patched"]
    assert result["ms"] >= result["after_ms"] > 0
    assert Path(result["sdk_file"]).is_relative_to(tracing_dirs["xray"])  # the pinned SDK installed apart
    # ...and an environment without Lambda's LAMBDA_TASK_ROOT (Powertools then disables the Tracer) is refused,
    # rather than timing a Tracer that does nothing
    env.pop("LAMBDA_TASK_ROOT")
    with pytest.raises(RuntimeError, match="disabled itself"):
        coldstart._import_traced("webhook_handler", paths, env, "xray")


def test_the_tracing_rows_set_each_traced_import_against_boto3_and_the_same_rounds_plain_import() -> None:
    # Given two rounds of the plain and the traced imports of the webhook
    rounds = [
        {"WebhookFunction": 200.0, "adot": 300.0, "adot setup": 150.0, "adot handler": 150.0, "adot after": 0.0,
         "xray": 250.0, "xray setup": 0.0, "xray handler": 200.0, "xray after": 50.0},
        {"WebhookFunction": 220.0, "adot": 310.0, "adot setup": 160.0, "adot handler": 150.0, "adot after": 0.0,
         "xray": 260.0, "xray setup": 0.0, "xray handler": 215.0, "xray after": 45.0},
    ]  # fmt: skip
    facts = {
        "adot": {"instrumented": ["botocore", "httpx"], "lazy": ["httpx", "opentelemetry"]},
        "xray": {"patched": ["botocore", "httpx"], "lazy": ["httpx", "aws_xray_sdk"]},
    }

    # When their rows are made
    adot, xray = coldstart._tracing_figures("1. Cold start", "webhook_handler", rounds, facts, 100.0, "WebhookFunction")

    # Then each is informative, against boto3, and its note gives the paired difference and its parts
    assert (adot.value, adot.baseline, adot.repeats, adot.target) == (305.0, 100.0, 2, "")
    assert (xray.value, xray.baseline, xray.met) == (255.0, 100.0, None)
    assert "a lower bound: +95 ms over `webhook_handler` alone" in adot.note
    assert "took 155 ms, then the import 150 ms" in adot.note
    assert "distro and configurator" in adot.note and "httpx loaded too" in adot.note
    assert "+45 ms over `webhook_handler` alone" in xray.note and "`Tracer()` took 48 ms after the import" in xray.note
    assert "auto-patch: botocore, httpx" in xray.note and "2027-02-25" in xray.note


def _sections_for_snapstart(*, cold: bool = True, cost: bool = True) -> list[Section]:
    memory = {name: 512 for name in function_ids()} | {"EventsFunction": 256}
    sections = []
    if cold:
        section = Section("cold", "1. Cold start")
        section.data = {
            "import_ms": dict.fromkeys(memory, 200.0),
            "memory_mb": memory,
            "modules": {name: f"{name.removesuffix('Function').lower()}_handler" for name in memory},
            "repeats": 11,
        }
        sections.append(section)
    if cost:
        section = Section("cpu", "5. Handler CPU per task")
        section.data = {"invocations_per_task": dict.fromkeys(PER_TASK_FUNCTIONS, 2), "memory_mb": memory, "tasks": 5}
        sections.append(section)
    return sections


def test_snapstart_sets_each_restore_against_the_init_it_replaces_and_each_month_against_the_init_billing_saved() -> (
    None
):
    # Given section 1's imports (200 ms each) and section 5's invocations (2 of each per-task function per video)
    said: list[str] = []

    # When section 7 is computed from them
    section = snapstart.estimate(_sections_for_snapstart(), said.append)

    # Then each function's restore is set against its import at the duration's price, whatever its memory
    assert section is not None and said == []
    rows = {figure.measure: figure for figure in section.figures}
    webhook = rows["per cold start of webhook (512 MB): SnapStart's restore"]
    assert webhook.value == pytest.approx(0.5 * 0.0001397998)
    assert webhook.baseline == pytest.approx(0.2 * 0.5 * 0.0000133334)
    assert rows["per cold start of events (256 MB): SnapStart's restore"].ratio == pytest.approx(webhook.ratio)
    assert "break-even at an init of 10.5 s" in webhook.note
    # ...and each month: the cache of all six functions plus a restore per cold start, against the init saved
    cache = (5 * 0.5 + 0.25) * 30 * 86_400 * 0.0000015046
    cold_starts_100 = 100 * 30 * 2 * len(PER_TASK_FUNCTIONS)  # every invocation cold, the poller warm
    low = rows["SnapStart per month at 100 videos/day, all 6 functions"]
    restores = 100 * 30 * 2 * (4 * 0.5 + 0.25) * 0.0001397998
    assert low.value == pytest.approx(cache + restores)
    assert low.baseline == pytest.approx(100 * 30 * 2 * (4 * 0.5 + 0.25) * 0.2 * 0.0000133334)
    assert f"({cold_starts_100:,} cold starts a month)" in low.baseline_label
    assert "[inferred]" in low.note and "it does not pay" in low.note
    high = rows["SnapStart per month at 10,000 videos/day, all 6 functions"]
    assert f"({cold_starts_100 * 100 // 50:,} cold starts a month)" in high.baseline_label  # 2% of 100x the videos
    assert "2% of the event-driven functions' invocations" in high.note
    assert "Judgement: SnapStart does not pay at any volume" in high.note and "restore duration" in high.note


def test_snapstart_computes_what_it_can_from_the_sections_run_and_says_what_it_left_out() -> None:
    said: list[str] = []
    # Without section 1: the months' cost, no init to set it against
    only_cost = snapstart.estimate(_sections_for_snapstart(cold=False), said.append)
    assert only_cost is not None
    assert [f.measure for f in only_cost.figures] == [
        "SnapStart per month at 100 videos/day, all 6 functions",
        "SnapStart per month at 10,000 videos/day, all 6 functions",
    ]
    assert all(f.baseline is None for f in only_cost.figures)
    assert said == ["7. SnapStart: the per-cold-start rows and the init saved need section 1 (--only cold)"]
    # Without section 5: the per-cold-start rows only
    only_cold = snapstart.estimate(_sections_for_snapstart(cost=False), said.append)
    assert only_cold is not None and len(only_cold.figures) == 6
    assert "--only cost" in said[-1]
    # Without either: nothing, said
    assert snapstart.estimate([], said.append) is None
    assert "skipped" in said[-1]


def _invocation(cpu_ms: float, *calls: str, wall_ms: float | None = None) -> dict[str, object]:
    return {"cpu_ms": cpu_ms, "wall_ms": wall_ms or cpu_ms * 2, "aws_calls": dict.fromkeys(calls, 1), "ok": True}


def test_a_first_invocation_is_set_against_the_later_ones_that_went_the_same_way() -> None:
    # Given a submit worker whose first invocation recorded half a pair (reading its secret, then cached), then cut
    # a task (another path) and went on alternating; a webhook that ran once; a function that never ran
    half, pair = ("dynamodb.GetItem", "dynamodb.PutItem"), ("dynamodb.GetItem", "dynamodb.TransactWriteItems")
    every = {
        "SubmitFunction": [
            _invocation(70.0, *half, "secrets-manager.GetSecretValue"),
            _invocation(130.0, *pair),
            _invocation(6.0, *half),
            _invocation(15.0, *pair),
            _invocation(5.0, *half),
            _invocation(16.0, *pair),
        ],
        "WebhookFunction": [_invocation(140.0, "dynamodb.UpdateItem")],
        "EventsFunction": [],
    }

    # When the first invocations are picked out
    found = first_invocations(every)
    figures = {figure.measure: figure for figure in first_invocation_figures("5. Handler CPU per task", every)}

    # Then submit's first is set against its later half-pair invocations only (its secret read aside)
    assert set(found) == {"SubmitFunction", "WebhookFunction"}
    assert [i["cpu_ms"] for i in found["SubmitFunction"]["warm"]] == [6.0, 5.0]
    assert len(found["SubmitFunction"]["later"]) == 5
    submit = figures["first invocation of submit"]
    assert (submit.value, submit.baseline, submit.repeats) == (70.0, 5.5, 1)
    assert submit.target == "" and submit.met is None  # informative
    assert "1 Secrets Manager read(s)" in submit.note
    assert "adapters" in submit.note and "imports deferred" in submit.note
    assert "wall 140 ms against 11 ms warm" in submit.note
    # ...and the first run of its other path, which paid for that path's first use, is named
    assert "130 ms against 16 ms warm" in submit.note
    # A function that ran once has its row, without a baseline
    assert figures["first invocation of webhook"].baseline is None
    assert "no baseline" in figures["first invocation of webhook"].note


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
    memory = {"SubmitFunction": 512, "WebhookFunction": 512, "FinalizeFunction": 512, "EventsFunction": 256}
    costs = cost_of(usage, memory, task_item_bytes=2500)
    assert usage.cpu_ms == 60.0
    assert all(value >= 0 for value in costs.values())
    assert 0 < sum(costs.values()) < 0.01
    assert costs["Lambda duration"] == pytest.approx((80 + 30 + 200) / 1000 * 0.5 * 0.0000133334)
    # The events function's invocations count too, and the events it put on the bus: as its metric says, or, without
    # it, one per PutEvents request
    usage.invocations["EventsFunction"] = [{"wall_ms": 40.0, "cpu_ms": 4.0, "aws_calls": {"eventbridge.PutEvents": 2}}]
    assert cost_of(usage, memory, task_item_bytes=2500)["EventBridge"] == pytest.approx(2 / 1e6)
    usage.events_put = 7
    with_events = cost_of(usage, memory, task_item_bytes=2500)
    assert with_events["EventBridge"] == pytest.approx(7 / 1e6)
    assert with_events["Lambda duration"] == pytest.approx(((80 + 30 + 200) * 0.5 + 40 * 0.25) / 1000 * 0.0000133334)


def test_the_events_put_on_the_bus_are_read_from_the_events_functions_metric_in_its_log(tmp_path: Path) -> None:
    # Given the events function's log: a line before the task's, its log lines and metrics (EMF) during the task
    log = tmp_path / "EventsFunction.log"
    before = '{"_aws": {}, "EventsPublished": [9.0]}\n'
    log.write_text(
        before
        + '{"level": "INFO", "message": "published"}\n'
        + '{"_aws": {"Timestamp": 1}, "service": "avatar-pipeline", "EventsPublished": [3.0]}\n'
        + "not json\n"
        + '{"_aws": {"Timestamp": 2}, "service": "avatar-pipeline", "EventsPublished": [0.0, 2.0]}\n'
    )

    # Then the task's events are those its metrics counted after where the log stood before it
    assert events_published(log, len(before)) == 5
    assert events_published(log, log.stat().st_size) is None
    assert events_published(tmp_path / "missing.log", 0) is None


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
    # And the decisions the figures inform follow the table, before the notes
    assert text.index("## Decisions these figures inform") < text.index("## Notes per figure")
    assert "### Tracing: Lambda's own, and OpenTelemetry on request" in text and "### SnapStart: not adopted" in text


def test_a_tiny_batch_and_task_run_through_the_local_stack_meet_their_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the benchmark at its smallest: a batch of 3 pairs, 1 task measured for CPU and cost
    # When it runs those two sections through the local stack, and section 7 from what section 5 counted
    exit_code = bench_main(["--quick", "--no-write", "--only", "batch", "--only", "cost", "--only", "snapstart"])

    # Then every pair became a stored video, none was answered 429, and the per-task figures are there
    printed = capsys.readouterr().out
    assert exit_code == 0
    assert "| 4 | first upload to last stored video |" in printed
    assert "| 4 | submit requests answered 429 | 0 requests | — | — | < 5% of 3 | yes | 1 |" in printed
    assert "| 4 | pairs COMPLETED with a stored MP4 (of 3) | 3 pairs | — | — | 3 | yes | 1 |" in printed
    assert (
        "| 5 | CPU in the functions a task invokes (submit, dispatch, webhook, events, finalize), one task |" in printed
    )
    # Each function has its first invocation's row (the poller's first tick comes as the stack starts), informative
    rows = {line.split(" | ")[1]: line for line in printed.splitlines() if line.startswith("| 5 | first invocation")}
    functions = ("submit", "dispatch", "webhook", "poller", "events", "finalize")
    assert set(rows) == {f"first invocation of {function}" for function in functions}
    assert all(row.endswith("| — | — | 1 |") for row in rows.values())
    # The warm-up task and the one measured each upload a half pair first: submit's first has its baseline
    assert "its warm invocations on the same path (median of 1)" in rows["first invocation of submit"]
    assert "| 6 | AWS per 10 s video (submit, dispatch, webhook, events, finalize; " in printed
    # Section 7 without section 1: SnapStart's monthly cost from the invocations counted, no init to compare
    assert "7. SnapStart: the per-cold-start rows and the init saved need section 1 (--only cold)" in printed
    for volume in ("100", "10,000"):
        assert f"| 7 | SnapStart per month at {volume} videos/day, all 6 functions | $" in printed
    # Every target met but perhaps the batch's ratio: 3 pairs' 1-minute bound is dwarfed by the stack's start-up
    # (tests/chaos/test_batch_run.py and `make batch` hold the ratio, at sizes where it means something).
    missed = [line for line in printed.splitlines() if "**no**" in line]
    assert all(line.startswith("| 4 | first upload to last stored video |") for line in missed), missed


def test_what_every_measured_child_imports_holds_nothing_of_the_local_stack() -> None:
    # Given a measured child process imports the bench's common module (the copy child does, then copies a video)
    # When that module is imported in a fresh interpreter
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, avatar_local.bench.common; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Then neither the local stack's modules nor moto came with it: they would count in the child's memory and time
    assert "avatar_local.twin" not in loaded and "moto" not in loaded
