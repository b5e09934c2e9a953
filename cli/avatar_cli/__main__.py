"""`avatar` — submit a face and a voice clip, follow the job, fetch the video; or ask where a job stands.

    avatar submit FACE AUDIO [--job NAME] [--prompt TEXT] [--model NAME | --mode std|pro] [--option NAME=VALUE]...
                  [--mask FILE] [--provider NAME]... [--wait] [--out DIR]
    avatar batch DIR [--manifest FILE] [--out DIR] [--concurrency N] [job options as for submit]
    avatar status JOB [--json]

The stack is the local one (.local/stack.json, written by `make up`) unless --stack-name names a deployed
CloudFormation stack (or --stack-file another description).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console

from avatar_cli.batch import (
    REPORT_FILE,
    BatchState,
    BatchView,
    PairRecord,
    pairs_by_stem,
    pairs_from_manifest,
    run_batch,
    watch,
)
from avatar_cli.client import PipelineClient, StackTarget, describe_transition
from avatar_pipeline.domain.models import JobOptions, TaskStatus

DEFAULT_STACK_FILE = Path(".local/stack.json")


def _target(args: argparse.Namespace) -> StackTarget:
    if args.stack_name:
        return StackTarget.from_cloudformation(args.stack_name, args.region)
    path = Path(args.stack_file)
    if not path.exists():
        raise SystemExit(f"no stack description at {path}: start the local stack with `make up`, or pass --stack-name")
    return StackTarget.from_stack_file(path)


def _print_status(client: PipelineClient, job: str, as_json: bool) -> int:
    view = client.status(job)
    if as_json:
        print(
            json.dumps(
                {
                    "job": job,
                    "waiting": view.slot.model_dump(mode="json") if view.slot and view.slot.waiting_since else None,
                    # The callback token is a secret between the pipeline and the provider.
                    "tasks": [
                        task.model_dump(mode="json", by_alias=True, exclude={"callback_token"}) for task in view.tasks
                    ],
                },
                indent=2,
            )
        )
        return 0 if view.slot or view.tasks else 1
    if not view.slot and not view.tasks:
        print(f"no job called {job!r}")
        return 1
    if view.slot and view.slot.waiting_since:
        have = "image" if view.slot.image else "audio"
        missing = "audio" if view.slot.image else "image"
        print(f"{job}: has its {have}, waiting for its {missing} since {view.slot.waiting_since:%Y-%m-%d %H:%M:%S} UTC")
    for task in sorted(view.tasks, key=lambda t: t.created_at):
        print(f"task {task.task_id}  {task.status}")
        for transition in task.history:
            print(f"  {describe_transition(transition)}")
        if task.output:
            print(f"  output: {task.output.uri}")
    return 0


def _model_option(text: str) -> tuple[str, str | int | bool]:
    """NAME=VALUE as job.json holds it: whole numbers and true/false as such, anything else as text."""
    name, equals, value = text.partition("=")
    if not (name and equals and value):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    if value in ("true", "false"):
        return name, value == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value


def _job_options(args: argparse.Namespace) -> JobOptions:
    try:
        return JobOptions(
            prompt=args.prompt,
            model=args.model,
            mode=args.mode,
            options=dict(args.option or []),
            providers=tuple(args.provider) if args.provider else None,
        )
    except ValidationError as error:
        raise SystemExit(f"not a valid job: {error}") from None


def _submit(client: PipelineClient, args: argparse.Namespace) -> int:
    face, audio = Path(args.face), Path(args.audio)
    mask = Path(args.mask) if args.mask else None
    for path in (face, audio, *([mask] if mask else [])):
        if not path.is_file():
            raise SystemExit(f"{path} is not a file")
    job = args.job or f"{face.stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    for key in client.submit(face, audio, job, _job_options(args), mask):
        print(f"uploaded s3://{client.target.bucket}/{key}")
    print(f"job: {job}")
    if not args.wait:
        return 0
    # The batch's view, for one job: its state, its place in line, the time it has taken.
    state = BatchState(batch=job, pairs={job: PairRecord(job=job, uploaded=True)})
    view = BatchView(Console(), 1)
    with view.live:
        watch(client, state, Path(args.out), args.timeout, 1.0, view.update)
    record = state.pairs[job]
    if record.status != TaskStatus.COMPLETED:
        print(f"job {job} ended {record.status}: {record.reason}")
        return 1
    print(record.video)
    return 0


def _batch(client: PipelineClient, args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise SystemExit(f"{directory} is not a folder")
    out = Path(args.out) if args.out else directory / "avatar-batch"
    defaults = _job_options(args)
    if args.manifest:
        pairs, unpaired = pairs_from_manifest(Path(args.manifest), directory, defaults), []
    else:
        pairs, unpaired = pairs_by_stem(directory, defaults)
    if not pairs:
        raise SystemExit(f"no pair in {directory}: name a face and its voice alike (alice.png + alice.mp3)")
    state = BatchState.load_or_start(out, directory)
    rows = run_batch(
        client, pairs, unpaired, out, state, concurrency=args.concurrency, timeout=args.timeout, interval=args.interval
    )
    counts = Counter(row["status"] for row in rows)
    print(f"report: {out / REPORT_FILE} ({', '.join(f'{n} {status}' for status, n in sorted(counts.items()))})")
    return 0 if counts.get(TaskStatus.COMPLETED.value, 0) == len(rows) else 1


def _job_flags() -> argparse.ArgumentParser:
    """The job.json choices `submit` and `batch` both take (a batch's manifest rows may override them)."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--prompt")
    flags.add_argument("--model", help="the model (the README's model table; default: the stack's DefaultModel)")
    flags.add_argument("--mode", choices=["std", "pro"], help="Kling's standard or pro model (instead of --model)")
    flags.add_argument(
        "--option",
        action="append",
        type=_model_option,
        metavar="NAME=VALUE",
        help="one of the model's options, e.g. resolution=720p or seed=7 (repeatable)",
    )
    flags.add_argument(
        "--provider", action="append", help="a provider to use; repeat it to list several in order of preference"
    )
    return flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avatar", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--stack-file", default=str(DEFAULT_STACK_FILE), help="local stack description (stack.json)")
    parser.add_argument("--stack-name", help="a deployed CloudFormation stack to use instead")
    parser.add_argument("--region", help="AWS region of the deployed stack")
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", parents=[_job_flags()], help="upload a face and a voice clip as one job")
    submit.add_argument("face")
    submit.add_argument("audio")
    submit.add_argument("--job", help="job name (default: <face file name>-<UTC time>)")
    submit.add_argument("--mask", help="a mask image for the models that take one (InfiniteTalk on WaveSpeed)")
    submit.add_argument("--wait", action="store_true", help="follow the job and download the video")
    submit.add_argument("--timeout", type=float, default=900.0, help="seconds to wait with --wait")
    submit.add_argument("--out", default="outputs", help="where --wait saves the video")
    batch = commands.add_parser(
        "batch", parents=[_job_flags()], help="a folder of faces and voices (paired by stem, or a manifest) as jobs"
    )
    batch.add_argument("directory")
    batch.add_argument("--manifest", help="a CSV or JSONL manifest of the pairs and their options (instead of stems)")
    batch.add_argument(
        "--out", help="where the videos, the report and the batch's state go (default: DIR/avatar-batch)"
    )
    batch.add_argument("--concurrency", type=int, default=4, help="uploads at once")
    batch.add_argument("--timeout", type=float, default=3600.0, help="seconds to watch before giving up (resumable)")
    batch.add_argument("--interval", type=float, default=2.0, help="seconds between looks at the jobs")
    status = commands.add_parser("status", help="where a job stands, with its history")
    status.add_argument("job")
    status.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    client = PipelineClient(_target(args))
    if args.command == "submit":
        return _submit(client, args)
    if args.command == "batch":
        return _batch(client, args)
    return _print_status(client, args.job, args.json)


if __name__ == "__main__":
    sys.exit(main())
