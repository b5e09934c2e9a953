"""Where a task's video goes in the bucket: an output key template (the stack's, or the job's own), rendered for the
task when its pair is checked.

A template names its parts with placeholders: `{job}`, `{task}` (its id), `{stem}` (the portrait's file name without
its extension), `{input_dir}` (the inbox folder the pair came from, without `inbox/`), `{model}` and `{date}` (the
UTC day the task began, YYYY-MM-DD). A key stays in the bucket's output area (`outputs/`, the only place the
functions may write), ends in `.mp4`, and holds the task's id, so no task's video ever replaces another's; nothing
can land under `inbox/`, where it would start the pipeline again.
"""

from __future__ import annotations

import string

from avatar_pipeline.domain.models import Task

OUTPUT_PREFIX = "outputs/"
DEFAULT_TEMPLATE = "outputs/{job}/{task}.mp4"
PLACEHOLDERS = ("job", "task", "stem", "input_dir", "model", "date")
# S3's longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def template_problems(template: str) -> list[str]:
    """Why `template` cannot be an output key template; empty when it can."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        return [f"it is not a template ({error})"]
    names = [name for _, name, _, _ in parts if name is not None]
    problems = []
    if unknown := sorted({name for name in names if name not in PLACEHOLDERS}):
        known = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
        problems.append(f"it names {', '.join(f'{{{name}}}' for name in unknown)}; the placeholders are {known}")
    if any(spec or conversion for _, name, spec, conversion in parts if name is not None):
        problems.append("its placeholders take no format")
    if "task" not in names:
        problems.append("it must hold {task}, so no task's video replaces another's")
    if not template.startswith(OUTPUT_PREFIX):
        problems.append(f"it must start with {OUTPUT_PREFIX} (the bucket's output area)")
    if not template.endswith(".mp4"):
        problems.append("it must end with .mp4")
    literal_segments = "/".join(text for text, _, _, _ in parts).split("/")
    if any(segment in (".", "..") for segment in literal_segments):
        problems.append("it may not hold . or .. segments")
    return problems


def render(template: str, task: Task) -> str:
    """The key `template` gives `task` (a checked template): empty parts dropped (a pair straight under inbox/ has no
    `{input_dir}`)."""
    image_key = task.image.key if task.image else ""
    folder, _, file_name = image_key.removeprefix("inbox/").rpartition("/")
    values = {
        "job": task.job,
        "task": task.task_id,
        "stem": file_name.rsplit(".", 1)[0] if "." in file_name else file_name,
        "input_dir": folder,
        "model": task.model,
        "date": f"{task.created_at:%Y-%m-%d}",
    }
    return "/".join(segment for segment in template.format(**values).split("/") if segment)


def key_problems(key: str) -> list[str]:
    """Why a rendered key cannot be used (a job's name or folder put it out of the output area, or made it too
    long); empty when it can."""
    problems = []
    if not key.startswith(OUTPUT_PREFIX) or any(segment in (".", "..") for segment in key.split("/")):
        problems.append(f"its video's key {key!r} would leave the bucket's output area ({OUTPUT_PREFIX})")
    if (size := len(key.encode())) > MAX_KEY_BYTES:
        problems.append(
            f"the job name is too long: its video's key would be {size:,} bytes, over S3's limit of {MAX_KEY_BYTES:,}"
        )
    return problems
