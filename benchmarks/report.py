"""Helpers shared by the benchmark scripts: each script owns one section of BENCHMARKS.md,
delimited by HTML comments, and rewrites only that section."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"
HEADER = "# Benchmarks\n\nEvery number here was produced by a script in `benchmarks/`; each section names its command, machine and date.\n"


def machine() -> str:
    """One line describing where a benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp(command: str) -> str:
    """The provenance block every section starts with."""
    today = datetime.date.today().isoformat()
    return f"Command: `{command}`  \nMachine: {machine()}  \nDate: {today}, commit {git_rev()}\n"


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md with ``markdown``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def load_note(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    """A sentence on how busy the machine was (1-minute load averages at the start and the end)."""
    return (
        f"Load average of the machine: {before[0]:.1f} at the start, {after[0]:.1f} at the end (2 cores; other jobs "
        "were running, so absolute times are inflated and vary between runs)."
    )
