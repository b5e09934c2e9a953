"""How inbox keys become jobs, and which uploads make one pair.

Two ways to name a pair (both under `inbox/`):
- folder:    inbox/<job>/<any name>.png + inbox/<job>/<any name>.mp3 (+ optional inbox/<job>/job.json)
- same stem: inbox/<job>.jpg + inbox/<job>.wav
Extensions are compared case-insensitively; the content itself is checked later by validation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from avatar_pipeline.models import S3Object

INBOX_PREFIX = "inbox/"
OPTIONS_FILE_NAME = "job.json"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
AUDIO_EXTENSIONS = frozenset({".mp3", ".wav", ".m4a", ".aac"})

EntryKind = Literal["image", "audio", "options", "unsupported"]


@dataclass(frozen=True)
class InboxEntry:
    job: str
    kind: EntryKind
    file_name: str
    in_folder: bool


def _extension(file_name: str) -> str:
    stem, dot, ext = file_name.rpartition(".")
    return f".{ext.lower()}" if dot and stem else ""


def parse_inbox_key(key: str) -> InboxEntry | None:
    """The job and role of an uploaded key; None for keys that are not uploads (folder markers, other prefixes)."""
    if not key.startswith(INBOX_PREFIX) or key.endswith("/"):
        return None
    relative = key[len(INBOX_PREFIX) :]
    folder, _, file_name = relative.rpartition("/")
    extension = _extension(file_name)
    if folder:
        job, in_folder = folder, True
    else:
        job, in_folder = (file_name[: -len(extension)] if extension else file_name), False
    if not job.strip():
        return None
    kind: EntryKind
    if in_folder and file_name.lower() == OPTIONS_FILE_NAME:
        kind = "options"
    elif extension in IMAGE_EXTENSIONS:
        kind = "image"
    elif extension in AUDIO_EXTENSIONS:
        kind = "audio"
    else:
        kind = "unsupported"
    return InboxEntry(job=job, kind=kind, file_name=file_name, in_folder=in_folder)


def options_key(job: str) -> str:
    return f"{INBOX_PREFIX}{job}/{OPTIONS_FILE_NAME}"


def content_id(job: str, *objects: S3Object, occasion: str = "") -> str:
    """A task id that is the same for the same job and the same bytes (same keys and ETags), and only then.

    A repeated S3 event or a byte-identical re-upload therefore maps onto the task that already exists.
    `occasion` tells apart tasks about the same bytes that are different events (an upload that timed out twice).
    """
    digest = hashlib.sha256(job.encode() + b"\0" + occasion.encode())
    for obj in objects:
        digest.update(b"\0" + obj.key.encode() + b"\0" + obj.etag.strip('"').encode())
    return digest.hexdigest()[:32]
