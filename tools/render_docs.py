"""Render the generated tables of README.md and docs/*.md from params.yaml and the committed reports.

Usage: python tools/render_docs.py [--write | --check] [--root DIR]

Every table in the docs that restates a default or a result sits between
`<!-- generated:NAME -->` and `<!-- /generated:NAME -->` and is written here, never by hand
(`pipeline/doc_tables.py` renders each one; `BLOCKS` there names them and what they read).
`--check` (the default) prints one line per table that differs from what the committed files render
and exits 1 if there is any; `--write` rewrites them in place. After a `dvc repro` that changes a
report, or a change of params.yaml, run `--write` and commit the pages with the reports
(tests/test_docs.py fails until then). A report that does not exist renders as "—".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:        # run as a script from anywhere: the library is the repo's
    sys.path.insert(0, str(REPO))

from pipeline.doc_tables import SOURCES, fill, stale  # noqa: E402

# where each source of pipeline.doc_tables lives, relative to the repository root
SOURCE_FILES = {
    "params": "params.yaml",
    "metrics": "reports/metrics.json", "evaluation": "reports/evaluation.json",
    "mrnet": "reports/mrnet.json", "mrnet_detail": "reports/mrnet_detail.json",
    "gradcam": "reports/gradcam.json", "gradcam_detail": "reports/gradcam_detail.json",
    "bench_gradcam_methods": "reports/bench/gradcam_methods.json",
    "bench_mrnet_seeds": "reports/bench/mrnet_seeds.json", "bench_mrnet_long": "reports/bench/mrnet_long.json",
}
assert set(SOURCE_FILES) == set(SOURCES)


def load_sources(root: Path) -> dict[str, dict]:
    """Every source as a dict: params.yaml as DVC reads it (YAML 1.2), each report's JSON; {} for a
    file that does not exist."""
    from ruamel.yaml import YAML

    out = {}
    for key, rel in SOURCE_FILES.items():
        path = root / rel
        if not path.is_file():
            out[key] = {}
        elif path.suffix == ".yaml":
            out[key] = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8")) or {}
        else:
            out[key] = json.loads(path.read_text(encoding="utf-8"))
    return out


def pages(root: Path) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def _on_page(page: Path, root: Path, fn, *args):
    """fn(page's text, *args), a broken marker or unknown table named with the page."""
    try:
        return fn(page.read_text(encoding="utf-8"), *args)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{page.relative_to(root)}: {exc.args[0] if exc.args else exc}") from None


def check(root: Path) -> list[str]:
    """One line per stale table of every page, naming the page, the line and the table."""
    sources = load_sources(root)
    return [f"{page.relative_to(root)}: {line}" for page in pages(root) for line in _on_page(page, root, stale, sources)]


def write(root: Path) -> list[Path]:
    """Rewrite every page's tables; the pages that changed."""
    sources, changed = load_sources(root), []
    for page in pages(root):
        new = _on_page(page, root, fill, sources)
        if new != page.read_text(encoding="utf-8"):
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated tables in place")
    mode.add_argument("--check", action="store_true", help="exit 1 naming every stale table (the default)")
    ap.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = ap.parse_args(argv)
    try:
        if args.write:
            changed = write(args.root)
            print(f"render_docs: {', '.join(str(p.relative_to(args.root)) for p in changed) or 'nothing'} rewritten")
            return 0
        problems = check(args.root)
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
