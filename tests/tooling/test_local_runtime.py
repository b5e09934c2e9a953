"""The local stack's Lambda runtime: `FunctionPool` runs a handler module in spawned worker processes.

Each test writes a tiny handler module into its tmp_path and runs it in a pool of one worker. Invocations that might
hang run in a thread with a short deadline, so a broken runtime fails the test quickly instead of waiting for the
pool's own (much longer) timeout. Every pool is stopped at the end of its test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar_local.twin.aws_faults import CRASH_EXIT_STATUS, AwsFaultPlan
from avatar_local.twin.runtime import FunctionPool, FunctionRuntime, InvocationError

HANDLER = """
import os
import time

GREETING_AT_IMPORT = os.environ.get("GREETING")


def handler(event, context):
    if event.get("raise"):
        raise ValueError(f"handler refused: {event.get('why')}")
    if event.get("die"):
        if event.get("after"):
            time.sleep(event["after"])  # part-way through its work
        os._exit(3)
    if event.get("put_object"):
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=event["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.put_object(Bucket="media", Key="out.mp4", Body=b"video")
        return {"put": True}
    return {
        "event": event,
        "pid": os.getpid(),
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "greeting_at_import": GREETING_AT_IMPORT,
    }
"""

# The same handler in a worker whose other threads get no turn unless the main thread waits for something: so a
# handler that exits at once does so before the worker's queue feeder thread has sent anything it was given.
HANDLER_KEEPING_THE_GIL = (
    HANDLER
    + """
import sys

sys.setswitchinterval(60)
"""
)

BROKEN_HANDLER = """
import a_module_that_does_not_exist_anywhere  # noqa: F401


def handler(event, context):
    return event
"""

# Far below the pool's own deadline for an unanswered invocation (timeout_seconds x 4 + 30 s).
PROMPT_SECONDS = 6.0


@pytest.fixture
def make_pool(tmp_path: Path) -> Iterator[Callable[..., FunctionPool]]:
    """Build pools of one worker around a handler module written into tmp_path; stop them all afterwards."""
    pools: list[FunctionPool] = []

    def make(source: str = HANDLER, *, module: str = "tiny_handler", **overrides: Any) -> FunctionPool:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        settings: dict[str, Any] = {
            "name": "tiny",
            "module": module,
            "attribute": "handler",
            "code_paths": (str(tmp_path),),
            "environment": {"GREETING": "hello"},
            "timeout_seconds": 5,
            "memory_mb": 128,
            **overrides,
        }
        pool = FunctionPool(FunctionRuntime(**settings))
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.stop()


def invoke_within(pool: FunctionPool, event: Any, seconds: float = PROMPT_SECONDS) -> tuple[Any, float]:
    """`pool.invoke(event)` in a thread: (its result or its InvocationError, seconds taken). Fails the test when
    it has not returned within `seconds`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = pool.invoke(event)
        except InvocationError as exc:
            outcome["value"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, name="test-invoke", daemon=True)
    thread.start()
    thread.join(seconds)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"invoke({event!r}) did not return within {seconds} s"
    return outcome["value"], elapsed


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    """An http://127.0.0.1 endpoint whose port is bound but not listening: every connection is refused."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{reserved.getsockname()[1]}"


# ------------------------------------------------------------------------------------------------ normal runs


def test_invoke_returns_the_handlers_result_with_the_functions_environment_and_context(
    make_pool: Callable[..., FunctionPool],
) -> None:
    # Given a pool running the tiny handler with GREETING=hello in its environment
    pool = make_pool()

    # When it is invoked with an event
    result, _ = invoke_within(pool, {"hello": "world", "n": 1})

    # Then the handler's return value comes back, computed in the worker with the function's context
    assert result["event"] == {"hello": "world", "n": 1}
    assert result["function_name"] == "tiny"
    assert result["request_id"].startswith("tiny-")
    assert 0 < result["remaining_ms"] <= 5000
    # And the environment was set before the module was imported
    assert result["greeting_at_import"] == "hello"


def test_handler_exception_is_an_invocation_error_with_the_traceback_and_the_worker_stays(
    make_pool: Callable[..., FunctionPool],
) -> None:
    # Given a pool whose worker has already served one invocation
    pool = make_pool()
    before, _ = invoke_within(pool, {})

    # When the handler raises
    error, _ = invoke_within(pool, {"raise": True, "why": "bad input"})

    # Then the invocation fails with the handler's traceback
    assert isinstance(error, InvocationError)
    message = str(error)
    assert "Traceback (most recent call last)" in message
    assert "ValueError: handler refused: bad input" in message
    # And the same worker process serves the next invocation (an exception does not kill it)
    after, _ = invoke_within(pool, {})
    assert after["pid"] == before["pid"]


# ------------------------------------------------------------------------------------------------ dying workers


def test_worker_dying_mid_invocation_fails_it_with_its_exit_status_and_is_replaced(
    make_pool: Callable[..., FunctionPool],
) -> None:
    # Given a pool whose worker has already served one invocation
    pool = make_pool(timeout_seconds=5)
    before, _ = invoke_within(pool, {})

    # When the handler's process exits with status 3 in the middle of an invocation
    error, elapsed = invoke_within(pool, {"die": True, "after": 0.2})

    # Then that invocation fails as Lambda reports it, well before the function's timeout
    assert isinstance(error, InvocationError)
    assert "Runtime exited with error: exit status 3" in str(error)
    assert elapsed < 5
    # And a fresh worker serves the next invocation
    after, _ = invoke_within(pool, {"again": True})
    assert after["event"] == {"again": True}
    assert after["pid"] != before["pid"]


# Runs a pool in a child Python process and prints, as JSON, how three invocations went: a warm-up, one whose handler
# exits at once, and the next. A worker that dies abruptly can leave the pool's shared response queue locked, which
# would hang any process holding that pool at exit: the child kills its workers and leaves with os._exit.
DYING_AT_ONCE_CHILD = r"""
import json, multiprocessing, os, sys, threading

from avatar_local.twin.runtime import FunctionPool, FunctionRuntime, InvocationError


def invoke_within(pool, event, seconds):
    outcome = {}

    def run():
        try:
            outcome["result"] = pool.invoke(event)
        except InvocationError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome or {"hung": seconds}


code_path, module = sys.argv[1:3]
runtime = FunctionRuntime(
    name="tiny", module=module, attribute="handler", code_paths=(code_path,), environment={},
    timeout_seconds=1, memory_mb=128,
)
pool = FunctionPool(runtime)
report = {"warm_up": invoke_within(pool, {}, 10)}
report["dies"] = invoke_within(pool, {"die": True}, 2.0)
report["next"] = invoke_within(pool, {"again": True}, 2.0)
print(json.dumps(report), flush=True)
for worker in multiprocessing.active_children():
    worker.kill()
os._exit(0)
"""


def test_worker_dying_at_once_fails_its_invocation_promptly_and_the_pool_keeps_serving(tmp_path: Path) -> None:
    # Given a pool (in a child process) whose handler runs before the worker's other threads get a turn
    (tmp_path / "gil_handler.py").write_text(HANDLER_KEEPING_THE_GIL, encoding="utf-8")

    # When the handler exits with status 3 as soon as it is called, and then the pool is invoked again
    child = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", DYING_AT_ONCE_CHILD, str(tmp_path), "gil_handler"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.splitlines()[-1])
    assert report["warm_up"]["result"]["event"] == {}

    # Then that invocation fails with the exit status within 2 s
    assert "Runtime exited with error: exit status 3" in report["dies"].get("error", ""), report["dies"]
    # And a fresh worker serves the next invocation
    assert report["next"].get("result", {}).get("event") == {"again": True}, report["next"]


def test_handler_module_that_fails_to_import_breaks_the_pool_and_invoke_fails_fast(
    make_pool: Callable[..., FunctionPool],
) -> None:
    # Given a pool around a module whose import raises
    pool = make_pool(BROKEN_HANDLER, module="broken_handler", timeout_seconds=5)

    # When it is invoked, and invoked again
    first, first_elapsed = invoke_within(pool, {})
    second, second_elapsed = invoke_within(pool, {})

    # Then the first invocation fails as soon as the worker's death is noticed, saying the function could not start
    assert isinstance(first, InvocationError)
    assert "could not start" in str(first)
    assert first_elapsed < 5
    # And the pool is broken: the next invocation fails at once, without waiting for a worker
    assert isinstance(second, InvocationError)
    assert "could not start" in str(second)
    assert second_elapsed < 0.5


def test_crash_injected_by_the_fault_plan_fails_the_invocation_with_the_crash_status(
    make_pool: Callable[..., FunctionPool], tmp_path: Path, refusing_endpoint: str
) -> None:
    # Given a pool whose fault plan kills the worker during every S3 PutObject, logging to a file
    log = tmp_path / "tiny.log"
    pool = make_pool(
        faults=AwsFaultPlan(crash_rate=1.0, crash_operations=("s3.PutObject",)),
        log_path=str(log),
        environment={"AWS_EC2_METADATA_DISABLED": "true"},
    )

    # When the handler calls S3 PutObject
    error, elapsed = invoke_within(pool, {"put_object": True, "endpoint": refusing_endpoint})

    # Then the invocation fails with the crash's exit status, promptly: the worker's "started" message reached the
    # pool before it died, so the pool knew which invocation it took down
    assert isinstance(error, InvocationError)
    assert f"Runtime exited with error: exit status {CRASH_EXIT_STATUS}" in str(error)
    assert elapsed < 5
    # And the function's log names the call it died in
    notes = [line for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("chaos:")]
    assert len(notes) == 1 and "s3.PutObject" in notes[0]
    # And a replacement worker serves an invocation that makes no S3 call
    after, _ = invoke_within(pool, {"plain": True})
    assert after["event"] == {"plain": True}


def test_invoke_after_stop_fails_at_once(make_pool: Callable[..., FunctionPool]) -> None:
    # Given a pool that served an invocation and was then stopped (as the local stack does when it shuts down)
    pool = make_pool(timeout_seconds=1)
    invoke_within(pool, {})
    pool.stop()

    # When something invokes it afterwards (e.g. an S3 event still being delivered)
    error, elapsed = invoke_within(pool, {"late": True}, seconds=3)

    # Then the invocation fails at once, saying the stack stopped
    assert isinstance(error, InvocationError)
    assert elapsed < 1
