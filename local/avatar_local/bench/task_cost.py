"""Handler CPU per task, and what a video costs on AWS.

Tasks go one at a time through the local stack (template.yaml's functions, the WaveSpeed simulator rendering a real
10 s video). The local runtime records, for every invocation, its wall time, the worker's CPU time and the AWS
requests its SDK sent; a task's figures are those of the invocations it caused of every function but the poller
(PER_TASK_FUNCTIONS: submit, dispatch, webhook, events, finalize; the poller runs on a schedule whatever the traffic:
its cost is a fixed monthly one, estimated apart). The first task warms every worker up and is not counted. Each
function's first invocation in its worker, wherever it falls, is set against its warm invocations on the same path:
the work Lambda's first invocation of an execution environment does besides the cold start's imports. Its cost: those
measured durations at each function's memory size, the counted requests, the events put on the bus, the log bytes
each function wrote, at AWS's public prices (us-east-1, arm64, on-demand); next to it, the provider's price for the
same 10 s clip.
"""

from __future__ import annotations

import compileall
import json
import math
import multiprocessing
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from avatar_local.bench.common import ROOT, Figure, Section, median, run_child

CLIP_SECONDS = 10.0
# Every function a task invokes (the template's order): all but the poller, which runs on its schedule.
PER_TASK_FUNCTIONS = ("SubmitFunction", "DispatchFunction", "WebhookFunction", "EventsFunction", "FinalizeFunction")


def short_name(logical_id: str) -> str:
    return logical_id.removesuffix("Function").lower()


PER_TASK_NAMES = ", ".join(short_name(name) for name in PER_TASK_FUNCTIONS)

# Public prices, us-east-1 (checked 2025): https://aws.amazon.com/<service>/pricing/
LAMBDA_GB_SECOND_ARM = 0.0000133334
LAMBDA_REQUEST = 0.20 / 1e6
DYNAMODB_WRITE_UNIT = 0.625 / 1e6  # on-demand
DYNAMODB_READ_UNIT = 0.125 / 1e6
S3_WRITE_REQUEST = 0.005 / 1000  # PUT, COPY, POST, LIST
S3_READ_REQUEST = 0.0004 / 1000  # GET and the rest
S3_GB_MONTH = 0.023
SNS_PUBLISH = 0.50 / 1e6
EVENTBRIDGE_EVENT = 1.00 / 1e6  # custom events put on a bus, each 64 KB chunk one
SECRETS_CALL = 0.05 / 10_000
API_GATEWAY_REST_REQUEST = 3.50 / 1e6
LOGS_INGESTED_GB = 0.50
XRAY_TRACE_RECORDED = 5.00 / 1e6
SECONDS_PER_MONTH = 30 * 24 * 3600

# A path's first run is named in its function's note when it took more than this many times its warm runs' CPU.
OTHER_PATH_SHOWN = 2.0

_S3_WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "ListMultipartUploads",
              "AbortMultipartUpload", "CopyObject", "ListObjectsV2"}  # fmt: skip


@dataclass
class TaskUsage:
    invocations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # function -> its invocations
    log_bytes: dict[str, int] = field(default_factory=dict)
    # Events the events function put on the bus (its EventsPublished metric); None: not found in its log, and then
    # each PutEvents request is counted as one event.
    events_put: int | None = None

    @property
    def cpu_ms(self) -> float:
        return float(sum(i["cpu_ms"] for calls in self.invocations.values() for i in calls))

    def calls(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for calls in self.invocations.values():
            for invocation in calls:
                total.update(invocation["aws_calls"])
        return total


_BARE_CALLS = """
import json, sys, time, boto3
endpoint, table = sys.argv[1], sys.argv[2]
client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")
key = {"pk": {"S": "TASK#none"}}
for _ in range(20):
    client.get_item(TableName=table, Key=key, ConsistentRead=True)
cpu = []
for _ in range(200):
    started = time.process_time()
    client.get_item(TableName=table, Key=key, ConsistentRead=True)
    cpu.append((time.process_time() - started) * 1000)
cpu.sort()
print(json.dumps({"cpu_ms": cpu[len(cpu) // 2]}))
"""


def events_published(log: Path, start: int) -> int | None:
    """The events the events function put on the bus, from the `EventsPublished` metric it logs (CloudWatch's
    embedded metric format, a JSON line) in its log after byte `start`; None if it logged none."""
    if not log.exists():
        return None
    with log.open("rb") as file:
        file.seek(start)
        text = file.read().decode("utf-8", errors="replace")
    found = None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "_aws" in record and "EventsPublished" in record:
            value = record["EventsPublished"]  # a list when the invocation added the metric more than once
            found = (found or 0) + int(sum(value) if isinstance(value, list) else value)
    return found


def _code_with_bytecode(workdir: Path) -> Path:
    """A copy of what the stack runs (template.yaml, functions/, the layer's package) with its bytecode compiled.

    Lambda's layer ships its bytecode (layers/shared/bytecode-compiler); the working tree's may be stale or missing
    (PYTHONDONTWRITEBYTECODE), and then every module a first invocation imports lazily would be compiled in it.
    """
    root = workdir / "code"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    root.mkdir(parents=True)
    shutil.copy2(ROOT / "template.yaml", root / "template.yaml")
    shutil.copytree(ROOT / "functions", root / "functions", ignore=ignore)
    shutil.copytree(ROOT / "layers/shared/avatar_pipeline", root / "layers/shared/avatar_pipeline", ignore=ignore)
    if not compileall.compile_dir(root, quiet=1):
        raise RuntimeError(f"the pipeline's code in {root} does not compile")
    return root


def _run_tasks(count: int, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    import logging

    from avatar_cli.client import PipelineClient, StackTarget
    from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
    from avatar_local.twin.stack import LocalStack, LocalStackConfig

    logging.getLogger("avatar_local").setLevel(logging.ERROR)
    stack = LocalStack(
        LocalStackConfig(
            stack_name="avatar-cost",
            parameters={
                "PollAfterSeconds": "600",
                "MaxPairWaitSeconds": "600",
                "MaxProviderQueueSeconds": "3600",
                "MaxRenderSeconds": "3600",
            },
            state_dir=workdir / "cost",
            root=_code_with_bytecode(workdir),
            # One execution environment per function: its invocations are recorded in the order it ran them, so the
            # first record is its first invocation (see first_invocations).
            workers_per_function=1,
        )
    )
    others = {p.pid for p in multiprocessing.active_children()}  # not this stack's workers
    info = stack.start()
    try:
        # Every handler imported before the first upload: a first invocation's wall time is then its own, not
        # slowed by the other functions' workers still importing on the same CPUs.
        stack.wait_until_warm()
        client = PipelineClient(
            StackTarget(
                bucket=info.bucket, table=info.table, region=info.region, aws_endpoint_url=info.aws_endpoint_url
            )
        )
        samples = workdir / "cost" / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        face, voice = samples / "face.png", samples / "voice.mp3"
        face.write_bytes(make_sample_portrait())
        voice.write_bytes(make_sample_speech(CLIP_SECONDS))
        logs = {name: stack.config.local_dir / "logs" / f"{name}.log" for name in stack.pools}
        tasks: list[TaskUsage] = []
        final_item: dict[str, Any] = {}
        for number in range(count + 1):
            seen = {name: len(pool.usage) for name, pool in stack.pools.items()}
            sizes = {name: path.stat().st_size if path.exists() else 0 for name, path in logs.items()}
            job = f"cost-{number:03d}"
            client.submit(face, voice, job)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                latest = client.status(job).latest
                if latest is not None and latest.status.is_terminal and latest.notified_at is not None:
                    break
                time.sleep(0.2)
            else:
                raise TimeoutError(f"{job} did not complete within 120 s")
            if latest.status.value != "COMPLETED":
                raise AssertionError(f"{job} ended {latest.status}: {latest.reason}")
            stack.wait_until_quiet(30)
            time.sleep(0.5)
            usage = TaskUsage()
            for name in PER_TASK_FUNCTIONS:
                records = list(stack.pools[name].usage)[seen[name] :]
                usage.invocations[name] = [
                    {"wall_ms": r.wall_ms, "cpu_ms": r.cpu_ms, "aws_calls": r.aws_calls, "ok": r.ok} for r in records
                ]
                usage.log_bytes[name] = (logs[name].stat().st_size if logs[name].exists() else 0) - sizes[name]
            usage.events_put = events_published(logs["EventsFunction"], sizes["EventsFunction"])
            if number == 0:
                say(f"  warm-up task: {usage.cpu_ms:.0f} ms CPU (not counted)")
                continue
            tasks.append(usage)
            say(f"  task {number}/{count}: {usage.cpu_ms:.0f} ms CPU in {PER_TASK_NAMES}")
            assert latest.output is not None
            video_bytes = latest.output.size
            raw = stack.aws.client("dynamodb").get_item(
                TableName=info.table, Key={"pk": {"S": f"TASK#{latest.task_id}"}}
            )
            final_item = raw["Item"]
        bare = run_child(["-c", _BARE_CALLS, info.aws_endpoint_url, info.table])
        # Every invocation of the run, per function, in the order its one worker ran them (the warm-up task's too):
        # a worker runs one invocation at a time and the pool records each as it ends.
        every = {
            name: [{"wall_ms": r.wall_ms, "cpu_ms": r.cpu_ms, "aws_calls": r.aws_calls, "ok": r.ok} for r in pool.usage]
            for name, pool in stack.pools.items()
        }
        _check_one_worker_each(list(stack.pools), others)
        poller = [r for r in stack.pools["PollerFunction"].usage if r.ok]
        memory = {name: pool.runtime.memory_mb for name, pool in stack.pools.items()}
    finally:
        stack.stop()
    return {
        "tasks": tasks,
        "bare_get_item_cpu_ms": float(bare["cpu_ms"]),
        "video_bytes": video_bytes,
        "input_bytes": face.stat().st_size + voice.stat().st_size,
        "task_item_bytes": len(json.dumps(final_item)),
        "idle_poll_ms": median([r.wall_ms for r in poller[1:]]) if len(poller) > 1 else 0.0,
        "memory_mb": memory,
        "every_invocation": every,
    }


def _check_one_worker_each(functions: list[str], others: set[int | None]) -> None:
    """Each function ran in one worker, its first (number 0): the pool numbers the worker that replaces a dead one
    next, and a replacement's invocations would follow the first worker's in the records, cold again. `others`: the
    child processes there were before the stack started."""
    children = multiprocessing.active_children()
    alive = sorted(p.name for p in children if p.pid not in others and p.name.startswith("lambda-"))
    expected = sorted(f"lambda-{name}-0" for name in functions)
    if alive != expected:
        raise AssertionError(f"one worker per function, never replaced, expected: {expected}, not {alive}")


def _path(invocation: dict[str, Any]) -> frozenset[str]:
    """Which way through the handler an invocation went, told by the kinds of AWS request it sent. Secrets Manager
    reads are left out: a secret is read on first use and then served from its cache."""
    return frozenset(call for call in invocation["aws_calls"] if not call.startswith("secrets-manager."))


def first_invocations(every: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """For each function that ran (`every`: its invocations in the order its one worker ran them), its first
    invocation, the later ones that went the same way through the handler (its warm baseline: a submit that records
    half a pair is not set against one that cuts a task), every later one, and the first run of each other path with
    that path's later runs (those pay for what their path builds on first use too)."""
    answer: dict[str, dict[str, Any]] = {}
    for name, invocations in every.items():
        if not invocations:
            continue
        first, later = invocations[0], invocations[1:]
        by_path: dict[frozenset[str], list[dict[str, Any]]] = {}
        for invocation in later:
            by_path.setdefault(_path(invocation), []).append(invocation)
        answer[name] = {
            "first": first,
            "warm": by_path.pop(_path(first), []),
            "later": later,
            "other_paths": [(runs[0], runs[1:]) for runs in by_path.values()],
        }
    return answer


def first_invocation_figures(title: str, every: dict[str, list[dict[str, Any]]]) -> list[Figure]:
    """Informative rows: the CPU of each function's first invocation in its worker against its warm ones."""
    figures = []
    for name, found in first_invocations(every).items():
        first, warm, later = found["first"], found["warm"], found["later"]
        short = name.removesuffix("Function").lower()
        secrets = sum(n for call, n in first["aws_calls"].items() if call.startswith("secrets-manager."))
        parts = [
            f"wall {first['wall_ms']:.0f} ms"
            + (f" against {median([i['wall_ms'] for i in warm]):.0f} ms warm" if warm else ""),
            "the excess is what the worker does once: the adapters it uses built on first use (SDK clients, "
            "provider clients, settings) and the imports deferred to the paths that need them"
            + (f", and {secrets} Secrets Manager read(s), cached afterwards" if secrets else ""),
        ]
        if not warm:
            parts.append("no later invocation went the same way: no baseline")
        if later:
            parts.append(f"against all {len(later)} later ones: {median([i['cpu_ms'] for i in later]):.0f} ms")
        # Another path's first run pays for what that path builds on first use: named where that shows.
        others = []
        for run, runs in found["other_paths"]:
            warm_ms = median([i["cpu_ms"] for i in runs]) if runs else None
            if warm_ms is not None and run["cpu_ms"] > OTHER_PATH_SHOWN * warm_ms:
                others.append(f"{run['cpu_ms']:.0f} ms against {warm_ms:.0f} ms warm")
        if others:
            parts.append(f"the first run of another path costs more too: {'; '.join(others)}")
        figures.append(
            Figure(
                title,
                f"first invocation of {short}",
                first["cpu_ms"],
                "ms",
                1,
                baseline=median([i["cpu_ms"] for i in warm]) if warm else None,
                baseline_label=f"its warm invocations on the same path (median of {len(warm)})",
                note="informative: CPU time; " + "; ".join(parts),
            )
        )
    return figures


def cost_of(task: TaskUsage, memory_mb: dict[str, int], task_item_bytes: int) -> dict[str, float]:
    """USD for one task, by service, from what it used."""
    calls = task.calls()
    lambda_gb_s = sum(
        math.ceil(i["wall_ms"]) / 1000 * memory_mb[name] / 1024
        for name, calls_ in task.invocations.items()
        for i in calls_
    )
    invocations = sum(len(calls_) for calls_ in task.invocations.values())
    # A task item's write costs 1 WRU per started KB, in the table and in each GSI it is in (by-job always, in-flight
    # while in flight: counted for every write, an upper bound); reads 1 RRU per started 4 KB (strongly consistent).
    item_wru = math.ceil(task_item_bytes / 1024) * 3
    item_rru = math.ceil(task_item_bytes / 4096)
    dynamodb_writes = (
        calls["dynamodb.PutItem"] + calls["dynamodb.UpdateItem"] + calls["dynamodb.DeleteItem"]
    ) * item_wru
    dynamodb_writes += calls["dynamodb.TransactWriteItems"] * 2 * 2 * item_wru  # two items, at twice the price
    dynamodb_reads = (calls["dynamodb.GetItem"] + calls["dynamodb.Query"]) * item_rru
    s3_writes = sum(n for op, n in calls.items() if op.split(".")[-1] in _S3_WRITES and op.startswith("s3."))
    s3_reads = sum(n for op, n in calls.items() if op.startswith("s3.")) - s3_writes
    # Besides the functions' requests: the user's two uploads, the provider's two input downloads, one video download.
    s3_writes += 2
    s3_reads += 3
    webhooks = len(task.invocations.get("WebhookFunction", []))
    events_put = task.events_put if task.events_put is not None else calls["eventbridge.PutEvents"]
    return {
        "Lambda duration": lambda_gb_s * LAMBDA_GB_SECOND_ARM,
        "Lambda requests": invocations * LAMBDA_REQUEST,
        "DynamoDB": dynamodb_writes * DYNAMODB_WRITE_UNIT + dynamodb_reads * DYNAMODB_READ_UNIT,
        "S3 requests": s3_writes * S3_WRITE_REQUEST + s3_reads * S3_READ_REQUEST,
        "SNS": calls["sns.Publish"] * SNS_PUBLISH,
        "EventBridge": events_put * EVENTBRIDGE_EVENT,
        "Secrets Manager": calls["secrets-manager.GetSecretValue"] * SECRETS_CALL,
        "API Gateway": webhooks * API_GATEWAY_REST_REQUEST,
        "CloudWatch Logs": sum(task.log_bytes.values()) / 1024**3 * LOGS_INGESTED_GB,
        "X-Ray (every invocation traced)": (invocations + webhooks) * XRAY_TRACE_RECORDED,
    }


def measure(count: int, workdir: Path, say: Callable[[str], None]) -> tuple[Section, Section]:
    from avatar_pipeline.config import Settings
    from avatar_pipeline.domain.pricing import estimate_cost

    started = time.monotonic()
    run = _run_tasks(count, workdir, say)
    tasks: list[TaskUsage] = run["tasks"]
    cpu = Section("cpu", "5. Handler CPU per task")
    per_function = {
        name: median([sum(i["cpu_ms"] for i in t.invocations[name]) for t in tasks]) for name in PER_TASK_FUNCTIONS
    }
    calls_per_task = median([sum(t.calls().values()) for t in tasks])
    bare_ms = run["bare_get_item_cpu_ms"] * calls_per_task
    invocations = {name: median([len(t.invocations[name]) for t in tasks]) for name in PER_TASK_FUNCTIONS}
    cpu.figures.append(
        Figure(
            cpu.title,
            f"CPU in the functions a task invokes ({PER_TASK_NAMES}), one task",
            median([t.cpu_ms for t in tasks]),
            "ms",
            len(tasks),
            baseline=bare_ms,
            baseline_label=f"the same number of bare boto3 calls ({calls_per_task:.0f} \u00d7 a GetItem's "
            f"{run['bare_get_item_cpu_ms']:.2f} ms)",
            note="; ".join(
                f"{short_name(name)} {per_function[name]:.0f} ms in {invocations[name]:g} invocation(s)"
                for name in PER_TASK_FUNCTIONS
            )
            + f"; video {run['video_bytes'] / 1024:.0f} KiB (its bytes cost well under a millisecond)",
        )
    )
    cpu.figures += first_invocation_figures(cpu.title, run["every_invocation"])
    # For section 7 (SnapStart): how often a task invokes each function, and each one's memory.
    cpu.data = {"invocations_per_task": invocations, "memory_mb": dict(run["memory_mb"]), "tasks": len(tasks)}
    cpu.method = (
        f"{len(tasks)} tasks one after another through the local stack (one worker per function, no faults), each "
        f"a 480\u00d7640 PNG and a {CLIP_SECONDS:g} s MP3 rendered by the simulator into a {CLIP_SECONDS:g} s MP4, "
        f"after a warm-up task that is not counted; a task's figures are the invocations of {PER_TASK_NAMES} it "
        f"caused (the poller's are a fixed cost, section 6). The local runtime measures each invocation's CPU time "
        f"(`time.process_time` of its worker) and counts the AWS requests its SDK sent; the baseline's GetItem CPU is "
        f"measured in a fresh process against the same embedded AWS (median of 200, after 20 warm-up calls). "
        f"First invocations: each function's worker imports its handler when it starts (section 1 measures that), "
        f"before the first upload; its first invocation, whenever it came (the warm-up task's, or the poller's first "
        f"tick as the stack starts), is set against the median of its later invocations in the run that went the "
        f"same way through the handler (the same kinds of AWS request, Secrets Manager reads aside); the stack runs "
        f"a copy of the code with its bytecode compiled, as the layer ships it."
    )
    cost = Section("cost", "6. AWS cost per video")
    costs = [cost_of(t, run["memory_mb"], run["task_item_bytes"]) for t in tasks]
    per_service = {service: median([c[service] for c in costs]) for service in costs[0]}
    total = median([sum(c.values()) for c in costs])
    settings = Settings.from_env(
        {"TASK_TABLE_NAME": "t", "MEDIA_BUCKET": "b", "TOPIC_ARN": "arn:aws:sns:x:1:t", "WAVESPEED_SECRET_ID": "s"}
    )
    provider = float(estimate_cost("wavespeed", "kling-v1-std", CLIP_SECONDS, settings, {}))
    cost.figures.append(
        Figure(
            cost.title,
            f"AWS per {CLIP_SECONDS:g} s video ({PER_TASK_NAMES}; storage requests, notification, bus events)",
            total,
            "USD",
            len(tasks),
            baseline=provider,
            baseline_label=f"WaveSpeed's price for a {CLIP_SECONDS:g} s std clip (${Decimal(str(provider))})",
            note="; ".join(f"{service} ${value:.7f}" for service, value in per_service.items() if value > 0),
            decimals=6,
        )
    )
    stored_gb = (run["video_bytes"] + run["input_bytes"]) / 1024**3
    poller_month = (
        SECONDS_PER_MONTH
        / 60
        * (
            math.ceil(run["idle_poll_ms"]) / 1000 * run["memory_mb"]["PollerFunction"] / 1024 * LAMBDA_GB_SECOND_ARM
            + LAMBDA_REQUEST
        )
    )
    cost.figures.append(
        Figure(
            cost.title,
            "fixed: the poller, every minute, per month",
            poller_month,
            "USD",
            1,
            note=f"an idle poll measured at {run['idle_poll_ms']:.0f} ms; storage is extra: "
            f"${stored_gb * S3_GB_MONTH:.7f} per video-month here ({stored_gb * 1024**2:.0f} KiB), "
            f"${0.01 * S3_GB_MONTH:.5f} per 10 MB video-month",
            decimals=4,
        )
    )
    cost.method = (
        f"From the tasks of section 5, the invocations of {PER_TASK_NAMES} each caused: each invocation's measured "
        "wall time (rounded up to the ms) \u00d7 its function's MemorySize from template.yaml at Lambda's arm64 price, "
        "one request each; DynamoDB on-demand units from the counted requests (the task item is "
        f"{run['task_item_bytes']:,} bytes: 1 WRU per started KB in the table and each of 2 GSIs, an upper bound; "
        "transactions twice); S3 requests counted, plus the user's 2 uploads, the provider's 2 input downloads and 1 "
        "download of the video; SNS publishes; the events put on the bus (the events function's EventsPublished "
        "metric in its log); Secrets Manager calls (cached 5 min); one API Gateway REST request per webhook; "
        "CloudWatch Logs ingestion of the bytes each function logged; X-Ray as if every invocation were traced. "
        "us-east-1 public prices (2025), free tiers ignored. Durations are local (embedded AWS, simulator on "
        "loopback): real DynamoDB, S3 and provider round trips differ."
    )
    cpu.seconds = cost.seconds = (time.monotonic() - started) / 2
    return cpu, cost
