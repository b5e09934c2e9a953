"""`python -m avatar_local up` runs the local stack until Ctrl-C; `demo` runs one sample job through it; `chaos` runs
many pairs through it under injected faults and counts the harm done."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from avatar_cli.client import PipelineClient, StackTarget, describe_transition
from avatar_local import batch, chaos
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
from avatar_local.twin.stack import LocalStack, LocalStackConfig, StackInfo
from avatar_pipeline.domain.models import JobOptions, TaskStatus


def _target(info: StackInfo) -> StackTarget:
    return StackTarget(bucket=info.bucket, table=info.table, region=info.region, aws_endpoint_url=info.aws_endpoint_url)


def _say(message: str) -> None:
    print(message, flush=True)


def up(stack: LocalStack) -> int:
    info = stack.start()
    traces = stack.config.local_dir / "traces"
    traced = f"\nspans: {traces}/" if stack.config.parameters.get("OpenTelemetryLayerArn") else ""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a service manager's stop
        signal.signal(signum, lambda *_: stopping.set())
    _say(f"local stack running; its description is in {stack.config.local_dir / 'stack.json'}:")
    _say(info.model_dump_json(indent=2))
    _say(
        "\ndrop a pair into the inbox, for example:\n"
        f"  AWS_ENDPOINT_URL={info.aws_endpoint_url} aws s3 cp face.png s3://{info.bucket}/inbox/me/face.png\n"
        "or use the CLI:  .venv/bin/avatar submit face.png voice.mp3 --wait\n"
        f"function logs: {stack.config.local_dir / 'logs'}/{traced}\nCtrl-C stops it."
    )
    while not stopping.wait(0.5):
        pass
    _say("stopping…")
    stack.stop()
    _say("stopped.")
    return 0


def demo(stack: LocalStack) -> int:
    started = time.monotonic()
    _say("starting the local stack (embedded AWS, the provider simulators, the template's functions)…")
    info = stack.start()
    try:
        samples = stack.config.local_dir / "samples"
        samples.mkdir(exist_ok=True)
        face, voice = samples / "face.png", samples / "voice.mp3"
        face.write_bytes(make_sample_portrait())
        voice.write_bytes(make_sample_speech(4.0))
        client = PipelineClient(_target(info))
        job = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        for key in client.submit(face, voice, job, JobOptions(prompt="a friendly presenter, looking at the camera")):
            _say(f"uploaded s3://{info.bucket}/{key}")
        task = client.wait(job, 75, interval=0.5, on_transition=lambda step: _say(describe_transition(step)))
        notification = _next_notification(stack, info, timeout=30)
        _say("notification:")
        _say(json.dumps(notification, indent=2))
        if task.status is not TaskStatus.COMPLETED:
            _say(f"the demo job ended {task.status}: {task.reason}")
            return 1
        video = client.download(task, stack.config.local_dir / "outputs")
        _say(f"done in {time.monotonic() - started:.1f} s; the video:")
        _say(str(video.resolve()))
        return 0
    finally:
        stack.stop()


def _next_notification(stack: LocalStack, info: StackInfo, timeout: float) -> dict[str, object]:
    sqs = stack.aws.client("sqs")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sqs.receive_message(QueueUrl=info.notifications_queue_url, WaitTimeSeconds=1)
        for message in batch.get("Messages", []):
            envelope = json.loads(message["Body"])
            sqs.delete_message(QueueUrl=info.notifications_queue_url, ReceiptHandle=message["ReceiptHandle"])
            return {
                "subject": envelope.get("Subject"),
                "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                "message": json.loads(envelope["Message"]),
            }
    raise TimeoutError("no notification arrived")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar_local")
    parser.add_argument("command", choices=["up", "demo", "chaos", "batch"])
    parser.add_argument("--state-dir", type=Path, help="where stack.json, logs and outputs go (default .local/)")
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template parameter for up and demo (repeatable), e.g. OpenTelemetryLayerArn=<ADOT layer ARN>",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "chaos":
        return chaos.main(rest, state_dir=args.state_dir)
    if args.command == "batch":
        return batch.main(rest, state_dir=args.state_dir)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if malformed := [given for given in args.parameter if "=" not in given]:
        parser.error(f"--parameter takes NAME=VALUE, got {', '.join(malformed)}")
    config = LocalStackConfig(state_dir=args.state_dir)
    config.parameters.update(given.split("=", 1) for given in args.parameter)
    stack = LocalStack(config)
    return up(stack) if args.command == "up" else demo(stack)


if __name__ == "__main__":
    sys.exit(main())
