"""Lambda functions on one machine: each function runs in processes of its own, like Lambda's execution environments.

A worker process gets the function's environment (resolved from template.yaml) before it imports the handler, so
module-level state — Powertools objects, cached clients, settings — is per function exactly as in Lambda, and one
function's environment never leaks into another's. Invocations go through a queue; a worker handles one at a time.
A worker that dies mid-invocation fails that invocation (Lambda's "Runtime exited with error") and is replaced.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from avatar_local.twin.aws_faults import AwsFaultPlan, install
from avatar_local.twin.otel_layer import start_tracing


class InvocationError(Exception):
    """The handler raised (or its process died): Lambda would report a function error."""


@dataclass(frozen=True)
class FunctionRuntime:
    """What a worker needs to run one function."""

    name: str
    module: str
    attribute: str
    code_paths: tuple[str, ...]  # the function's CodeUri, then its layers' content directories
    environment: dict[str, str]
    timeout_seconds: int
    memory_mb: int
    log_path: str | None = None  # the function's "CloudWatch log group": its stdout and stderr
    spans_path: str | None = None  # where its spans go when it runs under the ADOT layer's wrapper (otel_layer.py)
    faults: AwsFaultPlan = field(default_factory=AwsFaultPlan)


@dataclass
class _LambdaContext:
    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    deadline: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    client_context: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class InvocationUsage:
    """What one invocation used, as Lambda would bill and trace it: wall time, the worker's CPU time, and the AWS
    API requests its SDK clients sent (by ``service.Operation``, retries included)."""

    function: str
    request_id: str
    ok: bool
    wall_ms: float
    cpu_ms: float
    aws_calls: dict[str, int]


def _count_aws_calls(calls: Counter[str]) -> None:
    """Count every request any botocore session of this process sends from now on."""
    import botocore.session

    def count(event_name: str, **_: Any) -> None:
        calls[".".join(event_name.split(".")[1:3])] += 1

    original_init = botocore.session.Session.__init__

    def init_counting(self: botocore.session.Session, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.register("before-send", count)

    botocore.session.Session.__init__ = init_counting  # type: ignore[method-assign]


def _worker_main(runtime: FunctionRuntime, number: int, requests: Any, responses: Any) -> None:
    if runtime.log_path:
        log = open(runtime.log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the worker
        sys.stdout = sys.stderr = log
    os.environ.update(runtime.environment)
    # As Lambda's Python runtime does for a function that logs JSON: the root logger at AWS_LAMBDA_LOG_LEVEL (INFO by
    # default) writes to the function's log, so what libraries log at INFO is in it, as it would be in CloudWatch.
    logging.basicConfig(level=os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO"), stream=sys.stdout, force=True)
    install(runtime.faults, runtime.name, number)
    calls: Counter[str] = Counter()
    _count_aws_calls(calls)
    in_invocation_span = start_tracing(Path(runtime.spans_path), runtime.environment) if runtime.spans_path else None
    for path in reversed(runtime.code_paths):
        sys.path.insert(0, path)
    handler = getattr(__import__(runtime.module, fromlist=[runtime.attribute]), runtime.attribute)
    if in_invocation_span:
        handler = in_invocation_span(handler)
    responses.put(("ready", os.getpid()))
    while True:
        message = requests.get()
        if message is None:
            return
        request_id, event = message
        responses.put(("started", request_id, os.getpid()))
        context = _LambdaContext(
            function_name=runtime.name,
            memory_limit_in_mb=runtime.memory_mb,
            invoked_function_arn=f"arn:aws:lambda:{os.environ.get('AWS_REGION', 'us-east-1')}:000000000000:function:"
            f"{runtime.name}",
            aws_request_id=request_id,
            deadline=time.monotonic() + runtime.timeout_seconds,
        )
        calls.clear()
        started, started_cpu = time.perf_counter(), time.process_time()
        try:
            ok, payload = True, handler(event, context)
        except Exception:
            ok, payload = False, traceback.format_exc()
        usage = InvocationUsage(
            runtime.name,
            request_id,
            ok,
            wall_ms=(time.perf_counter() - started) * 1000,
            cpu_ms=(time.process_time() - started_cpu) * 1000,
            aws_calls=dict(calls),
        )
        responses.put(("done", request_id, ok, payload, usage))


# How often the pool looks for dead workers.
WATCH_INTERVAL_SECONDS = 0.25


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    payload: Any = None


class FunctionPool:
    """Worker processes for one function; `invoke` blocks until a worker has run the event."""

    _ids = itertools.count(1)

    def __init__(self, runtime: FunctionRuntime, workers: int = 1) -> None:
        self.runtime = runtime
        self._spawn = multiprocessing.get_context("spawn")
        self._requests = self._spawn.Queue()
        # Written synchronously (no feeder thread), so what a worker said before it died has reached the pipe.
        self._responses = self._spawn.SimpleQueue()
        self._pending: dict[str, _Pending] = {}
        self._running: dict[int, str] = {}  # worker pid -> the request it is handling
        self._ready: set[int] = set()  # workers whose handler imported
        self._broken: str | None = None
        # What the latest invocations used (benchmarks read it); bounded, for a stack that runs for days.
        self.usage: collections.deque[InvocationUsage] = collections.deque(maxlen=100_000)
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._stopping = False
        self._processes: list[SpawnProcess] = [self._start_worker() for _ in range(workers)]
        self._collector = threading.Thread(target=self._collect, name=f"results-{runtime.name}", daemon=True)
        self._collector.start()
        self._watcher = threading.Thread(target=self._watch, name=f"workers-{runtime.name}", daemon=True)
        self._watcher.start()

    @property
    def workers(self) -> int:
        """How many execution environments (worker processes) the function has."""
        return len(self._processes)

    @property
    def warm(self) -> bool:
        """Every worker has imported its handler (Lambda's init phase is over for each environment)."""
        return len(self._ready) >= len(self._processes)

    def _start_worker(self) -> SpawnProcess:
        number = next(self._numbers)
        process = self._spawn.Process(
            target=_worker_main,
            args=(self.runtime, number, self._requests, self._responses),
            name=f"lambda-{self.runtime.name}-{number}",
            daemon=True,
        )
        process.start()
        return process

    def _collect(self) -> None:
        while True:
            try:
                message = self._responses.get()
            except (EOFError, OSError):
                return
            if message is None:
                return
            if message[0] == "ready":
                self._ready.add(message[1])
                continue
            if message[0] == "started":
                _, request_id, pid = message
                with self._lock:
                    self._running[pid] = request_id
                continue
            _, request_id, ok, payload, usage = message
            with self._lock:
                self._running = {pid: rid for pid, rid in self._running.items() if rid != request_id}
                self.usage.append(usage)
            self._settle(request_id, ok, payload)

    def _watch(self) -> None:
        """A worker that died takes its invocation with it; Lambda reports that invocation as failed.

        A dead worker is dealt with at the look after the one that found it dead, so the collector has read what the
        worker wrote before dying (which request it had started, whether its handler had imported).
        """
        found_dead: set[int] = set()
        while not self._stopping and not self._broken:
            time.sleep(WATCH_INTERVAL_SECONDS)
            for index, process in enumerate(self._processes):
                pid = process.pid or -1
                if process.is_alive():
                    continue
                if pid not in found_dead:
                    found_dead.add(pid)
                    continue
                if self._stopping:
                    return
                if pid not in self._ready:
                    # It died importing the handler: so would every replacement (Lambda's init error).
                    reason = f"{self.runtime.name} could not start: its worker exited with status {process.exitcode}"
                    with self._lock:
                        self._broken = reason
                    self._fail_all(reason)
                    return
                with self._lock:
                    request_id = self._running.pop(pid, None)
                if request_id is not None:
                    self._settle(request_id, False, f"Runtime exited with error: exit status {process.exitcode}")
                self._processes[index] = self._start_worker()

    def _settle(self, request_id: str, ok: bool, payload: Any) -> None:
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.ok, pending.payload = ok, payload
            pending.done.set()

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            waiting, self._pending = self._pending, {}
        for pending in waiting.values():
            pending.ok, pending.payload = False, reason
            pending.done.set()

    def invoke(self, event: Any) -> Any:
        """Run the handler on `event` and return its result; raises InvocationError when the handler fails."""
        request_id = f"{self.runtime.name}-{next(self._ids):08d}"
        pending = _Pending()
        with self._lock:
            # Checked where the invocation is registered: `stop` and a broken pool fail what is registered by then.
            if self._broken or self._stopping:
                raise InvocationError(self._broken or f"{self.runtime.name} is stopped")
            self._pending[request_id] = pending
        self._requests.put((request_id, event))
        # Lambda stops an invocation at its timeout; a little slack covers queueing behind other invocations.
        if not pending.done.wait(self.runtime.timeout_seconds * 4 + 30):
            with self._lock:
                self._pending.pop(request_id, None)
            raise InvocationError(f"{self.runtime.name} did not answer within its timeout")
        if not pending.ok:
            raise InvocationError(f"{self.runtime.name} failed:\n{pending.payload}")
        return pending.payload

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        for _ in self._processes:
            self._requests.put(None)
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
        self._responses.put(None)
        self._fail_all("the local stack stopped")
