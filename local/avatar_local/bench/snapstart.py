"""SnapStart (estimate): what Lambda SnapStart for Python would cost and save here, from figures measured in the same
run — each handler's import (section 1: the init a restore would replace) and how often a task invokes each function
(section 5) — at AWS's public prices. Nothing is measured here: it needs those sections in the same run.

SnapStart restores an execution environment from a snapshot taken when a version is published, instead of running
the init (the handler's import) at each cold start. It bills a cache for every published version kept, by its memory
and time, and a restore per cold start, by its memory; the init it saves has been billed for on-demand ZIP functions
since 1 August 2025, at the duration's price.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from avatar_local.bench.common import Figure, Section
from avatar_local.bench.task_cost import LAMBDA_GB_SECOND_ARM, SECONDS_PER_MONTH, short_name

# us-east-1 (https://aws.amazon.com/lambda/pricing/): the snapshot's cache per GB-second of every published version
# kept (3 hours at least), each restore per GB restored (the function's memory).
SNAPSTART_CACHE_GB_SECOND = 0.0000015046
SNAPSTART_RESTORE_GB = 0.0001397998
CACHE_MINIMUM_HOURS = 3
# The init a restore must replace to pay for itself, whatever the memory: a restore's price per GB ÷ the duration's
# per GB-second.
BREAK_EVEN_INIT_S = SNAPSTART_RESTORE_GB / LAMBDA_GB_SECOND_ARM
DAYS_PER_MONTH = SECONDS_PER_MONTH / 86_400
# Videos a day, and the share of the event-driven functions' invocations that are cold starts [inferred]. At 100 a
# day, videos come ~15 minutes apart, longer than Lambda keeps an idle environment: every invocation is taken as a
# cold start (an upper bound). At 10,000 a day (~7 a minute) most land on a warm environment: 2% assumed.
VOLUMES: tuple[tuple[int, float], ...] = ((100, 1.0), (10_000, 0.02))
# Invoked every minute whatever the traffic: stays warm, no cold starts counted.
ALWAYS_WARM = ("PollerFunction",)

LATENCY = (
    "Latency, the one thing it could buy: a restore instead of the import (a few hundred ms here); AWS publishes no "
    "typical restore duration for Python and this machine cannot measure one, so whether a restore is faster is "
    "unknown; of these functions only the webhook has a caller waiting (the provider's callback)."
)

_VOLUME_REASONS = {
    100: "every invocation of the event-driven functions taken as one (an upper bound: videos ~15 min apart, longer "
    "than Lambda keeps an idle environment [inferred])",
    10_000: "{share:.0%} of the event-driven functions' invocations [inferred: ~7 videos a minute keep their "
    "environments warm]",
}


def _gb(memory_mb: float) -> float:
    return memory_mb / 1024


def _judgement(ratios: Sequence[float], cache_month: float) -> str:
    """Whether SnapStart pays, from each function's restore ÷ init ratio and the cache's fixed monthly charge."""
    cheapest = min(ratios)
    if cheapest > 1:
        return (
            f"does not pay at any volume: each cold start's restore costs {cheapest:.0f}\u00d7 or more the init it "
            f"saves (break-even: an init of {BREAK_EVEN_INIT_S:.1f} s), so more videos mean more restores each at a "
            f"loss, besides the cache's ${cache_month:.2f} a month"
        )
    return (
        f"a restore costs less than the init it saves for some function (ratio {cheapest:.2f}): it pays once the "
        f"saved init exceeds the cache's ${cache_month:.2f} a month"
    )


def estimate(sections: Sequence[Section], say: Callable[[str], None]) -> Section | None:
    """Section 7 from sections 1 (key "cold") and 5 ("cpu") of the same run; what it can without one of them, None
    (said) without both."""
    by_key = {section.key: section for section in sections}
    cold = by_key["cold"].data if "cold" in by_key and by_key["cold"].data else None  # section 1
    cpu = by_key["cpu"].data if "cpu" in by_key and by_key["cpu"].data else None  # section 5
    if cold is None and cpu is None:
        say("7. SnapStart: skipped — it needs section 1 (--only cold) and section 5 (--only cost) in the same run")
        return None
    section = Section("snapstart", "7. SnapStart (estimate)")
    memory: dict[str, int] = dict((cold or {}).get("memory_mb") or (cpu or {})["memory_mb"])
    cache_month = sum(_gb(mb) * SECONDS_PER_MONTH * SNAPSTART_CACHE_GB_SECOND for mb in memory.values())
    import_ms: dict[str, float] = dict(cold["import_ms"]) if cold is not None else {}
    modules: dict[str, str] = dict(cold["modules"]) if cold is not None else {}
    repeats = int(cold["repeats"]) if cold is not None else 1
    ratios = []
    for logical_id, ms in import_ms.items():
        restore = _gb(memory[logical_id]) * SNAPSTART_RESTORE_GB
        init = ms / 1000 * _gb(memory[logical_id]) * LAMBDA_GB_SECOND_ARM
        ratios.append(restore / init)
        section.figures.append(
            Figure(
                section.title,
                f"per cold start of {short_name(logical_id)} ({memory[logical_id]} MB): SnapStart's restore",
                restore,
                "USD",
                repeats,
                baseline=init,
                baseline_label=f"the init it replaces: the import of `{modules[logical_id]}` "
                f"(section 1) at arm64's duration price",
                note=f"informative: the import took {ms:.0f} ms; break-even at an init of {BREAK_EVEN_INIT_S:.1f} s, "
                "whatever the memory",
                decimals=7,
            )
        )
    skipped = []
    if cold is None:
        skipped.append("the per-cold-start rows and the init saved need section 1 (--only cold)")
    if cpu is None:
        skipped.append("the monthly rows need section 5's invocations per task (--only cost)")
    else:
        per_video: dict[str, float] = dict(cpu["invocations_per_task"])
        invoked = ", ".join(f"{short_name(name)} {count:g}" for name, count in per_video.items())
        for videos_per_day, share in VOLUMES:
            videos = videos_per_day * DAYS_PER_MONTH
            cold_starts = {name: videos * count * share for name, count in per_video.items() if name not in ALWAYS_WARM}
            restores = sum(n * _gb(memory[name]) * SNAPSTART_RESTORE_GB for name, n in cold_starts.items())
            saved = (
                sum(
                    n * import_ms[name] / 1000 * _gb(memory[name]) * LAMBDA_GB_SECOND_ARM
                    for name, n in cold_starts.items()
                )
                if cold
                else None
            )
            reason = _VOLUME_REASONS.get(videos_per_day, "{share:.0%} of the invocations [inferred]").format(
                share=share
            )
            total = sum(cold_starts.values())
            pays = "" if saved is None else ("; it pays" if saved > cache_month + restores else "; it does not pay")
            section.figures.append(
                Figure(
                    section.title,
                    f"SnapStart per month at {videos_per_day:,} videos/day, all {len(memory)} functions",
                    cache_month + restores,
                    "USD",
                    int(cpu["tasks"]),
                    baseline=saved,
                    baseline_label=f"the init billing it saves ({total:,.0f} cold starts a month)",
                    note=f"cache ${cache_month:.2f} (one published version of each function, "
                    f"{sum(_gb(mb) for mb in memory.values()):.2f} GB in all, the month round) + {total:,.0f} "
                    f"restores ${restores:.2f}; cold starts: {reason}; the poller (every minute) stays warm; a video "
                    f"invokes {invoked} (section 5){pays}"
                    + ("" if cold else "; the init saved needs section 1 (--only cold)"),
                    decimals=3,
                )
            )
    for reason in skipped:
        say(f"7. SnapStart: {reason}")
    judgement = _judgement(ratios, cache_month) if ratios else "no judgement without section 1's imports"
    if cpu is not None and cold is not None:
        section.figures[-1].note += f". Judgement: SnapStart {judgement}. {LATENCY}"
    section.method = (
        "Computed, not measured: from section 1's median import of each handler (this machine's time, standing for "
        "the init a restore would replace: Lambda's init also starts the runtime, not measured, so the init saved is "
        "somewhat more, and still far from the break-even) and section 5's median invocations of each function per "
        "task, at us-east-1's public prices (https://aws.amazon.com/lambda/pricing/): SnapStart's cache "
        f"${SNAPSTART_CACHE_GB_SECOND:.10f} per GB-second of every published version kept ({CACHE_MINIMUM_HOURS} "
        f"hours at least), its restore ${SNAPSTART_RESTORE_GB:.10f} per GB restored (the function's memory); Lambda "
        f"arm64 duration ${LAMBDA_GB_SECOND_ARM:.10f} per GB-second, at which the init phase of on-demand ZIP "
        "functions is billed since 1 August 2025. A restore costs as much as "
        f"{BREAK_EVEN_INIT_S:.1f} s of init at any memory size (restore ÷ duration price). Months of "
        f"{DAYS_PER_MONTH:g} days, memory sizes from template.yaml. Left out, all on SnapStart's side: the restore's "
        "own billed duration (loading the runtime and any after-restore hooks, Lambda's 'Billed Restore Duration'), "
        "the init run at each publish, and the cache of older versions kept. SnapStart needs published versions "
        "(AutoPublishAlias on each function; the template publishes none) and Python 3.12 or later (the functions "
        f"run 3.13). Judgement: SnapStart {judgement}. {LATENCY}"
        + (f" Not computed: {'; '.join(skipped)}." if skipped else "")
    )
    return section
