"""What every measurement shares: the figures it reports, medians, child processes, and a function's Lambda environment.

Only the standard library is imported here: child processes import this module, and whatever it imported would count
in their import time and memory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[3]
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
STACK_NAME = "avatar-bench"


@dataclass
class Figure:
    """One row of the table: a median, the baseline it is compared with, and the target it must meet (if any)."""

    section: str
    measure: str
    value: float
    unit: str
    repeats: int
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    decimals: int = 0

    @property
    def ratio(self) -> float | None:
        if not self.baseline:  # none, or zero
            return None
        return self.value / self.baseline


@dataclass
class Section:
    """The figures of one measurement, with how it was made (printed under the table)."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    method: str = ""
    seconds: float = 0.0
    # What a later section computes from this one's measurements (e.g. section 7 from sections 1 and 5): not printed.
    data: dict[str, Any] = field(default_factory=dict)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no values to take the median of")
    return float(statistics.median(values))


def run_child(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    python: str = sys.executable,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run `python *args`; the JSON object on its last line of output. Raises with its stderr if it fails."""
    result = subprocess.run(  # noqa: S603 - our own interpreter, our own arguments
        [python, *args],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        output = f"{result.stderr[-3000:]}{result.stdout[-1000:]}"
        raise RuntimeError(f"child {' '.join(args[:3])}… exited with {result.returncode}:\n{output}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def answer(values: Mapping[str, Any]) -> None:
    """A child's last line of output: what `run_child` returns to the parent."""
    print(json.dumps(dict(values)), flush=True)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (VmHWM).

    Not getrusage's ru_maxrss: that one survives exec, so a child forked from a large parent starts with the
    parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: the best there is

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def operator_environment() -> dict[str, str]:
    """The embedded AWS's operator credentials, imported here only: the twin's modules (moto and all) must not count
    in a measured child's imports and memory."""
    from avatar_local.twin.aws import OPERATOR

    return OPERATOR.environment()


def lambda_environment(logical_id: str, *, extra_parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What Lambda gives the function `logical_id` of template.yaml: its resolved environment, the variables the
    Lambda runtime sets itself, its module, code directory, layer directories and memory size.

    Resource references resolve to plausible names (nothing is created); secrets and tables are never reached.
    """
    from avatar_local.twin.template import Resolver, functions, layer_content_dirs, load_template

    template = load_template(ROOT / "template.yaml")
    resources = template.get("Resources") or {}
    refs = {}
    for name, resource in resources.items():
        kind = resource.get("Type", "")
        if kind == "AWS::SNS::Topic":
            refs[name] = f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{STACK_NAME}-{name}"
        elif kind == "AWS::SecretsManager::Secret":
            refs[name] = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:{STACK_NAME}-{name}-AbCdEf"
        elif kind == "AWS::SQS::Queue":
            # A queue's Ref is its URL (e.g. DispatchFunction's and PollerFunction's WAKEUP_QUEUE_URL).
            refs[name] = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT_ID}/{STACK_NAME}-{name}"
        else:
            refs[name] = f"{STACK_NAME}-{name}"
    resolver = Resolver(
        template,
        stack_name=STACK_NAME,
        region=REGION,
        account_id=ACCOUNT_ID,
        parameters=dict(extra_parameters or {}),
        resource_values=refs,
    )
    spec = next(spec for spec in functions(template) if spec.logical_id == logical_id)
    environment = {key: str(value) for key, value in spec.resolved_environment(resolver).items()}
    code_dir = ROOT / spec.code_uri
    environment |= {
        # Set by the Lambda runtime itself (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html).
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_LAMBDA_FUNCTION_NAME": f"{STACK_NAME}-{logical_id}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "LAMBDA_TASK_ROOT": str(code_dir),
        "_HANDLER": spec.handler,
        **operator_environment(),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    return {
        "environment": environment,
        "module": spec.module,
        "code_dir": str(code_dir),
        "layer_dirs": [str(ROOT / path) for path in layer_content_dirs(template, spec)],
        "memory_mb": spec.memory_size,
        "timeout_s": spec.timeout,
    }


def function_ids() -> tuple[str, ...]:
    """Every function of template.yaml (its logical id), in the template's order: a function added there is
    measured without a change here."""
    from avatar_local.twin.template import functions, load_template

    return tuple(spec.logical_id for spec in functions(load_template(ROOT / "template.yaml")))
