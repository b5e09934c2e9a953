"""What a user does with the pipeline — drop a pair, follow it, fetch the video — against any stack.

The same code talks to the local stack (an endpoint URL from .local/stack.json) and to a deployed one (its
CloudFormation outputs): only where the AWS calls go differs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from pydantic import BaseModel

from avatar_pipeline.adapters.dynamodb import DynamoTaskRepository
from avatar_pipeline.domain.models import JobOptions, PairSlot, Task, Transition
from avatar_pipeline.domain.pairing import INBOX_PREFIX, MASK_SUFFIXES, OPTIONS_FILE_NAME


class StackTarget(BaseModel):
    """Where the pipeline lives: its bucket and task table, and (locally) the AWS endpoint."""

    bucket: str
    table: str
    region: str | None = None
    aws_endpoint_url: str | None = None

    @classmethod
    def from_stack_file(cls, path: Path) -> StackTarget:
        return cls.model_validate(json.loads(path.read_text()))

    @classmethod
    def from_cloudformation(cls, stack_name: str, region: str | None = None) -> StackTarget:
        stack = boto3.client("cloudformation", region_name=region).describe_stacks(StackName=stack_name)["Stacks"][0]
        outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
        return cls(bucket=outputs["MediaBucketName"], table=outputs["TaskTableName"], region=region)

    def _connection(self) -> dict[str, Any]:
        if self.aws_endpoint_url is None:
            return {"region_name": self.region}  # real AWS: the usual credential chain
        # The local stack's operator key (its embedded AWS's root user); never send real credentials there.
        return {
            "region_name": self.region,
            "endpoint_url": self.aws_endpoint_url,
            "aws_access_key_id": "local",
            "aws_secret_access_key": "local",
        }

    def client(self, service: str) -> Any:
        return boto3.client(service, **self._connection())

    def resource(self, service: str) -> Any:
        return boto3.resource(service, **self._connection())


@dataclass
class JobView:
    """Where a job stands: the half pair still waiting (if any) and its tasks, newest last."""

    job: str
    slot: PairSlot | None
    tasks: list[Task]

    @property
    def latest(self) -> Task | None:
        return max(self.tasks, key=lambda task: task.created_at) if self.tasks else None


class PipelineClient:
    def __init__(self, target: StackTarget) -> None:
        self.target = target
        self._s3 = target.client("s3")
        table = target.resource("dynamodb").Table(target.table)
        # Read-only use of the pipeline's own repository: one definition of how tasks are stored.
        self._tasks = DynamoTaskRepository(table, task_ttl=timedelta(days=1))

    def submit(
        self, face: Path, audio: Path, job: str, options: JobOptions | None = None, mask: Path | None = None
    ) -> list[str]:
        """Upload a pair as a folder job (options and a mask first, so they are there when the pair completes). A
        mask is uploaded under a mask's name (`<stem>.mask.png`) and named in the options as `mask_image`."""
        keys = []
        if mask is not None:
            name = mask.name if mask.name.lower().endswith(MASK_SUFFIXES) else f"{mask.stem}.mask{mask.suffix.lower()}"
            key = f"{INBOX_PREFIX}{job}/{name}"
            self._s3.upload_file(str(mask), self.target.bucket, key)
            keys.append(key)
            options = options or JobOptions()
            options = options.model_copy(update={"options": {**options.options, "mask_image": name}})
        if options is not None and options.model_dump(exclude_defaults=True):
            key = f"{INBOX_PREFIX}{job}/{OPTIONS_FILE_NAME}"
            self._s3.put_object(Bucket=self.target.bucket, Key=key, Body=options.model_dump_json(exclude_defaults=True))
            keys.append(key)
        for path in (face, audio):
            key = f"{INBOX_PREFIX}{job}/{path.name}"
            self._s3.upload_file(str(path), self.target.bucket, key)
            keys.append(key)
        return keys

    def status(self, job: str) -> JobView:
        slot, tasks = self._tasks.list_job(job)
        return JobView(job, slot, tasks)

    def wait(
        self,
        job: str,
        timeout: float,
        *,
        interval: float = 1.0,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> Task:
        """Wait until the job's latest task has ended and return it; `on_transition` sees each step once."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            task = self.status(job).latest
            history = task.history if task else []
            for transition in history[seen:]:
                if on_transition is not None:
                    on_transition(transition)
            seen = max(seen, len(history))
            if task is not None and task.status.is_terminal:
                return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} did not finish within {timeout:.0f} s")
            time.sleep(interval)

    def download(self, task: Task, directory: Path) -> Path:
        assert task.output is not None
        target = directory / task.job / task.output.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        self._s3.download_file(task.output.bucket, task.output.key, str(target))
        return target


def describe_transition(transition: Transition) -> str:
    moved = f"{transition.from_status or '':>16} → {transition.to_status:<16}"
    return f"{transition.at:%H:%M:%S}  {moved}  {transition.reason}"
