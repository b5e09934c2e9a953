"""Batch: more pairs than WaveSpeed's quota dropped at once through the local stack, at its documented limits with
simulated time sped up — `make batch`'s run, reported in the benchmark's table.

The time from the first upload to the last stored video is compared with the bound the quota itself sets (the
submissions at its rate, the renders at its renders-at-once), measured in the same run; the provider's 429 answers
are counted against every submit request it got.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from avatar_local.batch import MAX_429_SHARE, MAX_RATIO, BatchConfig, run_batch, scaled_parameters
from avatar_local.bench.common import Figure, Section


def measure(config: BatchConfig, workdir: Path, say: Callable[[str], None]) -> Section:
    section = Section("batch", "4. Batch larger than the quota")
    say(f"  {config.pairs} pairs at once, time {config.time_factor:g}x…")
    report = run_batch(config, workdir / "batch", say=lambda line: say(f"  {line}"))
    values = {row.label: row.value for row in report.rows}
    harms = {row.label: int(row.value) for row in report.rows if row.harm}
    submits = sum(report.submit_answers.values())
    rejected_429 = report.submit_answers.get(429, 0)
    section.figures += [
        Figure(
            section.title,
            "first upload to last stored video",
            float(values["first upload to last video (simulated min)"]),
            "sim min",
            1,
            baseline=config.bound_seconds / 60,
            baseline_label="the quota's bound",
            target=f"\u2264 {MAX_RATIO:g}",
            met=report.ratio <= MAX_RATIO,
            note=f"bound: max({config.pairs} submissions \u00f7 {config.submissions_per_minute}/min, "
            f"\u2308{config.pairs} \u00f7 {config.renders_at_once}\u2309 rounds \u00d7 "
            f"{config.render_seconds / 60:g} min render)",
            decimals=1,
        ),
        Figure(
            section.title,
            "submit requests answered 429",
            rejected_429,
            "requests",
            1,
            target=f"< {MAX_429_SHARE:.0%} of {submits}",
            met=report.share_429 < MAX_429_SHARE,
            note=f"{report.share_429:.1%} of the {submits} submit requests WaveSpeed got",
        ),
        Figure(
            section.title,
            f"pairs COMPLETED with a stored MP4 (of {config.pairs})",
            int(values["tasks COMPLETED with a stored MP4"]),
            "pairs",
            1,
            target=f"{config.pairs}",
            met=not any(harms.values()),
            note="; ".join(f"{label}: {count}" for label, count in harms.items()),
        ),
    ]
    path = " \u2192 ".join(report.path)
    parameters = ", ".join(f"{name}={value}" for name, value in scaled_parameters(config.time_factor).items())
    section.method = (
        f"`make batch`'s run: the local stack (template.yaml's functions, {config.workers_per_function} workers each)"
        f" with the WaveSpeed simulator held to its documented default level — {config.submissions_per_minute}"
        f" submissions per minute, {config.renders_at_once} renders at once — each render"
        f" {config.render_seconds / 60:g} simulated minutes, simulated time {config.time_factor:g}\u00d7 real time and"
        f" the template's own durations scaled alike ({parameters}). {config.pairs} folder pairs (a 480\u00d7640 PNG"
        f" and a 2.5 s MP3) written at once straight into the embedded S3's store (its notifications go out as for"
        f" any upload); the run ends when every task has ended and been announced. A pair's states:"
        f" {path}."
    )
    section.seconds = report.seconds
    return section
