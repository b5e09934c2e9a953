"""The benchmark's one table: for the terminal, and as docs/performance.md."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from avatar_local.bench.common import Figure, Section

HEADER = ("#", "measure", "median", "baseline (same run)", "ratio", "target", "met", "n")
# What the figures decided, written by hand (it names rows, not numbers, so it holds from run to run).
DECISIONS = Path(__file__).with_name("decisions.md")


def _number(value: float, figure: Figure) -> str:
    if figure.unit == "USD":
        return f"${value:.{max(figure.decimals, 2)}f}"
    text = f"{value:,.{figure.decimals}f}"
    return f"{text} {figure.unit}"


def _ratio(figure: Figure) -> str:
    ratio = figure.ratio
    if ratio is None:
        return "—"
    return f"{ratio:.2f}\u00d7" if ratio >= 0.01 else f"{ratio:.1e}\u00d7"


def _met(figure: Figure) -> str:
    return "—" if figure.met is None else ("yes" if figure.met else "**no**")


def rows(sections: Sequence[Section]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for section in sections:
        number = section.title.split(".")[0]
        for figure in section.figures:
            baseline = (
                f"{_number(figure.baseline, figure)}: {figure.baseline_label}" if figure.baseline is not None else "—"
            )
            out.append(
                (
                    number,
                    figure.measure,
                    _number(figure.value, figure),
                    baseline,
                    _ratio(figure),
                    figure.target or "—",
                    _met(figure),
                    str(figure.repeats),
                )
            )
    return out


def table(sections: Sequence[Section]) -> str:
    """A Markdown table (readable as it is in a terminal)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(sections)]
    return "\n".join(lines)


def markdown(sections: Sequence[Section], *, command: str, seconds: float, machine: str, when: datetime) -> str:
    missed = [(s, f) for s in sections for f in s.figures if f.met is False]
    parts = [
        "# Performance",
        "",
        "Measured by the benchmark in `local/avatar_local/bench/`; reproduce with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Run {when:%Y-%m-%d %H:%M} UTC on {machine}, in {seconds / 60:.1f} min. Each figure is the median of `n` "
        "runs; the ratio is figure ÷ baseline, the baseline measured in the same run (other work on the machine "
        "slows both alike). This machine is shared, so absolute times are noisy; the ratios are what to compare.",
        "",
        table(sections),
        "",
        f"**Targets missed: {len(missed)}**" + (":" if missed else "."),
    ]
    parts += [f"- {s.title.split('.')[0]}. {f.measure}: {_number(f.value, f)} (target {f.target})" for s, f in missed]
    parts += ["", DECISIONS.read_text(encoding="utf-8").rstrip()]
    parts += ["", "## Notes per figure", ""]
    for section in sections:
        for figure in section.figures:
            if figure.note:
                parts.append(f"- **{section.title.split('.')[0]}. {figure.measure}**: {figure.note}")
    parts += ["", "## How each was measured", ""]
    for section in sections:
        parts += [f"### {section.title}", "", section.method, "", f"({section.seconds:.0f} s)", ""]
    return "\n".join(parts).rstrip() + "\n"
