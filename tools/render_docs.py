"""Render the generated tables of README.md and docs/*.md from params.yaml and the committed reports.

Usage: python tools/render_docs.py [--write | --check [--rev REV]] [--root DIR]

Every table in the docs that restates a default or a result sits between
`<!-- generated:NAME -->` and `<!-- /generated:NAME -->` and is written here, never by hand
(`pipeline/evaluation/doc_tables.py` renders each one; `BLOCKS` there names them and what they read).
`--check` (the default) prints one line per table that differs from what the files render and exits
1 if there is any; `--rev HEAD` checks the files as committed at that revision instead of the
working tree (tests/test_docs.py does: a local `dvc repro`, whose trainings differ in the last digits
from one CPU to another, leaves the committed pages valid). `--write` rewrites the working tree's
pages in place. After a `dvc repro` that changes a report, or a change of params.yaml, run `--write`
and commit the pages with the reports. A report that does not exist renders as "—".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:        # run as a script from anywhere: the library is the repo's
    sys.path.insert(0, str(REPO))

from pipeline.evaluation.doc_tables import SOURCES, fill, stale  # noqa: E402

# where each source of pipeline.evaluation.doc_tables lives, relative to the repository root
SOURCE_FILES = {
    "params": "params.yaml",
    "metrics": "reports/metrics.json", "evaluation": "reports/evaluation.json",
    "mrnet": "reports/mrnet.json", "mrnet_detail": "reports/mrnet_detail.json",
    "gradcam": "reports/gradcam.json", "gradcam_detail": "reports/gradcam_detail.json",
    "bench_gradcam_methods": "reports/bench/gradcam_methods.json",
    "bench_mrnet_seeds": "reports/bench/mrnet_seeds.json", "bench_mrnet_long": "reports/bench/mrnet_long.json",
    "bench_mrnet_tune": "reports/bench/mrnet_tune.json",
    "x8_metrics": "reports/x8/metrics.json", "x8_evaluation": "reports/x8/evaluation.json",
    "bench_undersample": "reports/bench/undersample.json",
    "bench_unet_training": "reports/bench/unet_training.json",
    "bench_stage_memory": "reports/bench/stage_memory.json",
    "bench_contention": "reports/bench/contention.json",
    "bench_gpu_training": "reports/bench/gpu_training.json",
    "bench_mrnet_device": "reports/bench/mrnet_device.json",
    "bench_roi_frontier": "reports/bench/roi_frontier.json",
    "bench_mrnet_evidence": "reports/bench/mrnet_evidence.json",
    "bench_mrnet_contrast": "reports/bench/mrnet_contrast.json",
}
assert set(SOURCE_FILES) == set(SOURCES)


Reader = Callable[[str], Optional[str]]     # a path relative to the root -> its text, None if absent


def reader(root: Path, rev: Optional[str] = None) -> Reader:
    """The files of the working tree under `root`, or with `rev` as committed at that revision."""
    if rev is None:
        return lambda rel: (root / rel).read_text(encoding="utf-8") if (root / rel).is_file() else None

    def read(rel: str) -> Optional[str]:
        r = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{rel}"], capture_output=True)
        return r.stdout.decode("utf-8") if r.returncode == 0 else None
    return read


def load_sources(read: Reader) -> dict[str, dict]:
    """Every source as a dict: params.yaml as DVC reads it (YAML 1.2), each report's JSON; {} for a
    file that does not exist."""
    from ruamel.yaml import YAML

    out = {}
    for key, rel in SOURCE_FILES.items():
        text = read(rel)
        if text is None:
            out[key] = {}
        elif rel.endswith(".yaml"):
            out[key] = YAML(typ="safe", pure=True).load(text) or {}
        else:
            out[key] = json.loads(text)
    return out


def pages(root: Path, rev: Optional[str] = None) -> list[str]:
    """README.md and every Markdown page under docs/, relative to the root (at `rev`, if given)."""
    if rev is None:
        found = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
        return [str(p.relative_to(root)) for p in found if p.is_file()]
    r = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", rev, "--", "README.md", "docs"],
                       capture_output=True, text=True)
    if r.returncode:
        raise ValueError(f"{rev}: not a revision of a git repository at {root}")
    return [p for p in r.stdout.splitlines() if p.endswith(".md")]


def _on_page(read: Reader, page: str, fn, *args):
    """fn(page's text, *args), a broken marker or unknown table named with the page."""
    try:
        return fn(read(page), *args)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{page}: {exc.args[0] if exc.args else exc}") from None


def check(root: Path, rev: Optional[str] = None) -> list[str]:
    """One line per stale table of every page, naming the page, the line and the table: the working
    tree, or the files as committed at `rev`."""
    read = reader(root, rev)
    sources = load_sources(read)
    return [f"{page}: {line}" for page in pages(root, rev) for line in _on_page(read, page, stale, sources)]


def write(root: Path) -> list[str]:
    """Rewrite every page's tables in the working tree; the pages that changed."""
    read = reader(root)
    sources, changed = load_sources(read), []
    for page in pages(root):
        new = _on_page(read, page, fill, sources)
        if new != read(page):
            (root / page).write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated tables in place")
    mode.add_argument("--check", action="store_true", help="exit 1 naming every stale table (the default)")
    ap.add_argument("--rev", help="with --check: the files as committed at this git revision (e.g. HEAD)")
    ap.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = ap.parse_args(argv)
    if args.write and args.rev:
        ap.error("--write rewrites the working tree; --rev is for --check")
    try:
        if args.write:
            print(f"render_docs: {', '.join(write(args.root)) or 'nothing'} rewritten")
            return 0
        problems = check(args.root, args.rev)
    except ValueError as exc:          # a broken marker or an unknown table: one line naming it
        print(f"render_docs: {exc}", file=sys.stderr)
        return 1
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("render_docs: run `python tools/render_docs.py --write` and commit the pages", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
