"""Docs that cannot go stale: every table in README.md (and docs/*.md) that restates a default or a
result is rendered from params.yaml and the committed reports (tools/render_docs.py,
pipeline/evaluation/doc_tables.py), and the committed pages must equal what they render."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.evaluation import doc_tables
from pipeline.evaluation.doc_tables import BLOCKS, MISSING, blocks_in, fill, param_value, render, stale
from tests.helpers import REPO, full_reports


def _tool():
    spec = importlib.util.spec_from_file_location("render_docs", REPO / "tools" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_docs = _tool()


def _copy_repo(tmp_path: Path) -> Path:
    """README.md, docs/, params.yaml and every report the tables read, as committed, under tmp_path."""
    for rel in [*render_docs.pages(REPO), *render_docs.SOURCE_FILES.values()]:
        if (REPO / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, tmp_path / rel)
    return tmp_path


def _page(name: str) -> str:
    """The page (relative to the root) that holds block `name`."""
    (page,) = [p for p in render_docs.pages(REPO) if name in {n for n, *_ in blocks_in((REPO / p).read_text())}]
    return page


def _block(text: str, name: str) -> str:
    (start, end), = [(s, e) for n, _, s, e in blocks_in(text) if n == name]
    return "\n".join(text.splitlines()[start:end])


def _committed() -> str | None:
    """HEAD where this checkout is a git repository (the committed files), else None (the files)."""
    ok = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True)
    return "HEAD" if ok.returncode == 0 else None


def test_committed_docs_equal_what_the_committed_files_render():
    # as committed, not as in the working tree: a local `dvc repro` (trainings differ in the last
    # digits from one CPU to another) leaves the committed README valid for the committed reports
    rev = _committed()
    problems = render_docs.check(REPO, rev)
    assert not problems, "\n".join(problems + ["run `python tools/render_docs.py --write` and commit"])
    read = render_docs.reader(REPO, rev)
    names = {n for page in render_docs.pages(REPO, rev) for n, *_ in blocks_in(read(page))}
    assert names == set(BLOCKS)        # every table is on a page


def test_the_defaults_table_says_what_params_yaml_says():
    import yaml
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1]
            for line in _block((REPO / "README.md").read_text(), "params").splitlines() if line.startswith("| `")}
    assert rows[", ".join(f"`loss.{k}`" for k in ROI_KEYS)] == ", ".join(param_value(params["loss"][k]) for k in ROI_KEYS)
    assert rows["`gradcam.method`, `gradcam.layer`, `gradcam.smooth_sigma`"] == ", ".join(
        param_value(params["gradcam"][k]) for k in ("method", "layer", "smooth_sigma"))


ROI_KEYS = ("roi_weight", "roi_norm", "roi_margin", "roi_soft", "background_weight")


def _roi_defaults() -> str:
    import yaml
    lo = yaml.safe_load((REPO / "params.yaml").read_text())["loss"]
    return "| " + ", ".join(param_value(lo[k]) for k in ROI_KEYS) + " |"


def _gradcam_defaults() -> str:
    import yaml
    g = yaml.safe_load((REPO / "params.yaml").read_text())["gradcam"]
    return "| " + ", ".join(param_value(g[k]) for k in ("method", "layer", "smooth_sigma")) + " |"


def _test_auc_cell() -> str:
    """The classifier table's test row up to its AUC cell, as the committed reports render it."""
    line, = [ln for ln in _block((REPO / _page("classifier")).read_text(), "classifier").splitlines()
             if ln.startswith("| test")]
    return " | ".join(line.split(" | ")[:3]) + " |"


@pytest.mark.parametrize("name,make", [
    # the three stale defaults the README once had
    ("params", lambda: (_roi_defaults(), "| 2, mean, 0, 0.0, 1.0 |" if "| 2, " not in _roi_defaults()
                        else "| 3, mean, 0, 0.0, 1.0 |")),
    ("params", lambda: (_gradcam_defaults(), "| hirescam, features.10, 2.0 |")),
    # a result typed over the rendered one
    ("classifier", lambda: (_test_auc_cell(), _test_auc_cell().rsplit(" | ", 1)[0] + " | 0.99 |")),
])
def test_a_planted_stale_number_is_named(tmp_path, capsys, name, make):
    old, new = make()
    root = _copy_repo(tmp_path)
    page = _page(name)
    readme = root / page
    text = readme.read_text()
    assert text.count(old) == 1, old
    readme.write_text(text.replace(old, new))
    problems = render_docs.check(root)
    assert len(problems) == 1 and f"generated:{name} is stale" in problems[0] and new.strip("| ") in problems[0]
    assert problems[0].startswith(f"{page}: line ")
    assert render_docs.main(["--check", "--root", str(root)]) == 1
    assert f"generated:{name} is stale" in capsys.readouterr().err
    # --write puts the rendered table back
    assert render_docs.main(["--write", "--root", str(root)]) == 0
    assert readme.read_text() == text and render_docs.check(root) == []


def test_a_changed_default_or_report_makes_its_table_stale(tmp_path):
    root = _copy_repo(tmp_path)
    params = root / "params.yaml"
    params.write_text(re.sub(r"roi_weight: [0-9.]+", "roi_weight: 9.5", params.read_text(), count=1))
    mrnet = json.loads((root / "reports/mrnet_detail.json").read_text())
    mrnet["test"]["auc"] = 0.987
    (root / "reports/mrnet_detail.json").write_text(json.dumps(mrnet))
    problems = render_docs.check(root)
    assert sorted(p.split("generated:")[1].split()[0] for p in problems) == ["classifier", "params"]
    render_docs.write(root)
    readme = (root / _page("params")).read_text()
    assert "| 9.5, " in _block(readme, "params")
    assert "| 0.99 |" in _block((root / _page("classifier")).read_text(), "classifier")


def test_the_committed_check_ignores_a_local_rerun(tmp_path):
    """--rev HEAD reads the committed files: a working tree whose reports a local `dvc repro` rewrote
    still passes against the committed pages, and the working-tree check names what to rewrite."""
    root = _copy_repo(tmp_path)
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", "-C", str(root), *cmd], check=True, capture_output=True)
    detail = json.loads((root / "reports/mrnet_detail.json").read_text())
    detail["tune_auc"] = 0.123
    (root / "reports/mrnet_detail.json").write_text(json.dumps(detail))
    assert render_docs.check(root, "HEAD") == []
    (problem,) = render_docs.check(root)
    assert "generated:classifier is stale" in problem and "0.12" in problem
    with pytest.raises(ValueError, match="nope: not a revision"):
        render_docs.check(root, "nope")


def test_every_table_renders_without_any_report():
    for name in BLOCKS:
        text = render(name, {})
        assert text.count("|") > 4 and (MISSING in text or name == "params"), name


def test_full_reports_render_every_number_with_its_interval():
    from pipeline.stats import projected_half_width
    s = full_reports()
    e = s["evaluation"]
    variants = render("results-variants", s)
    base = e["means"]["baseline"]["roi_psnr"], *e["means_ci95"]["baseline"]["roi_psnr"]
    assert f"| baseline | {base[0]:.2f} [{base[1]:.2f}, {base[2]:.2f}] |" in variants
    assert "| zero-filled | 17.50 [" in variants and "test split: 6 volumes (6 with boxes" in variants
    comparisons = render("results-comparisons", s)
    two, vol = s["metrics"]["oracle_vs_baseline"]["roi_psnr"], e["comparisons"]["oracle_vs_baseline"]["roi_psnr"]
    assert f"| oracle − baseline | seeds × volumes | +{two['delta']:.2f} [" in comparisons
    volume_row = next(ln for ln in comparisons.splitlines() if "volumes only" in ln and "+0.5" in ln)
    assert f"[+{vol['volume_only']['ci95_low']:.2f}, +{vol['volume_only']['ci95_high']:.2f}]" in volume_row
    assert "each seed" in comparisons and "(SD " in comparisons and "share of the oracle's ROI PSNR gain" in comparisons
    assert MISSING not in comparisons
    by_contrast = render("results-by-contrast", s)
    fs = e["comparisons_by_acquisition"]["CORPDFS_FBK"]["comparisons"]["oracle_vs_baseline"]["roi_psnr"]
    lines = by_contrast.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("| `CORPDFS_FBK` (3 volumes, 3 with boxes) |"))
    assert lines[first].startswith("| `CORPDFS_FBK` (3 volumes, 3 with boxes) | Grad-CAM weighted − baseline | ")
    assert lines[first + 1].startswith(f"|  | oracle − baseline | +{fs['delta']:.2f} [")
    assert lines[first + 2].startswith("| `CORPD_FBK` (3 volumes, 3 with boxes) | Grad-CAM weighted − baseline | ")
    assert MISSING not in by_contrast
    c = e["comparisons"]["weighted_vs_baseline"]["psnr"]
    projection = render("power-projection", s)
    assert f"{projected_half_width(c['variance_components'], 5, 2 * c['n_volumes']):.2f} |" in \
        next(ln for ln in projection.splitlines() if ln.startswith("| Grad-CAM weighted − baseline, PSNR"))
    assert MISSING not in render("power-components", s) and MISSING not in projection
    localisation = render("localisation", s)
    assert "| MRNet HiResCAM, `features.8` |" in localisation and "| location prior" in localisation
    assert "test split: 4 annotated slices in 4 volumes" in localisation
    assert MISSING not in localisation.split("\n\n", 1)[1]
    # split by MRNet's call (the odd volumes, whose maps hit, called abnormal), right after the maps' row
    lines = localisation.splitlines()
    maps_row = next(i for i, ln in enumerate(lines) if ln.startswith("| MRNet HiResCAM"))
    assert lines[maps_row + 1].startswith("| MRNet maps, volumes MRNet calls abnormal (2 volumes, 2 slices) | 1.00 [")
    assert lines[maps_row + 2].startswith("| location prior, the same volumes | 0.00 [")
    assert lines[maps_row + 3].startswith("| MRNet maps, volumes it calls normal (2 volumes, 2 slices) | 0.00 [")
    assert lines[maps_row + 4].startswith("| location prior, the same volumes | 1.00 [")
    # and by contrast (the odd volumes fat-suppressed), groups in sorted order
    assert lines[maps_row + 5].startswith("| MRNet maps, `CORPDFS_FBK` volumes (2 volumes, 2 slices) | 1.00 [")
    assert lines[maps_row + 6].startswith("| location prior, the same volumes | 0.00 [")
    assert lines[maps_row + 7].startswith("| MRNet maps, `CORPD_FBK` volumes (2 volumes, 2 slices) | 0.00 [")
    assert lines[maps_row + 8].startswith("| location prior, the same volumes | 1.00 [")
    assert "Contrast: the fastMRI files' `acquisition`" in localisation
    no_contrast = render("localisation", {**s, "gradcam_detail": {
        k: v for k, v in s["gradcam_detail"].items() if k not in ("by_acquisition", "location_prior_by_acquisition")}})
    assert "Contrast:" not in no_contrast and no_contrast.count("\n| ") == localisation.count("\n| ") - 4
    assert "abnormal at P(abnormal) ≥ 0.420" in localisation
    no_prior = render("localisation", {**s, "gradcam_detail": {k: v for k, v in s["gradcam_detail"].items()
                                                               if k != "location_prior_by_call"}})
    assert no_prior.count("the same volumes") == 2 and no_prior.count("\n| ") == localisation.count("\n| ") - 2
    without = render("localisation", {**s, "gradcam_detail": {k: v for k, v in s["gradcam_detail"].items()
                                                              if k not in ("by_call", "location_prior_by_call")}})
    assert "calls" not in without and without.count("\n| ") == localisation.count("\n| ") - 4
    classifier = render("classifier", s)
    assert "| test (`valid`; threshold 0.420, chosen on tune) | 120 (60) | 0.91 | 0.85 | 0.80 | 0.90 |" in classifier
    assert "best epoch 7" in classifier and "Trained on 1800 exams (2,469,953 parameters)" in classifier


def test_markers():
    text = "a\n  <!-- generated:params -->\n  old\n  <!-- /generated:params -->\nb\n"
    mask = {"params": {"mask": {"type": "random", "acceleration": 4, "center_fraction": 0.08}}}
    out = fill(text, mask)
    assert out.startswith("a\n  <!-- generated:params -->\n\n  | key |")     # indented as the marker is
    assert out.endswith("\n\n  <!-- /generated:params -->\nb\n")
    assert "| random, 4, 0.08 |" in out and stale(out, mask) == []
    assert fill(out, mask) == out
    with pytest.raises(ValueError, match="line 2: generated:params is not closed"):
        blocks_in("a\n<!-- generated:params -->\nb\n")
    with pytest.raises(ValueError, match="closes no open block"):
        blocks_in("a\n<!-- /generated:params -->\n")
    with pytest.raises(KeyError, match="generated:nope: no such table"):
        fill("<!-- generated:nope -->\n<!-- /generated:nope -->\n", {})


@pytest.mark.parametrize("value,text", [(4.0, "4.0"), (3.0e-3, "3e-3"), (1.0e-4, "1e-4"), (0.08, "0.08"), (2, "2"),
                                        (None, "none"), (False, "false"), ([0, 1, 2], "[0, 1, 2]"),
                                        ({"train": 22, "val": 8}, "train 22, val 8"), ("features.8", "features.8")])
def test_param_values_read_as_typed(value, text):
    assert param_value(value) == text


def test_numbers():
    assert doc_tables.estimate(-0.1384, -0.166, -0.104, 9e-9, "{:+.2f}") == "−0.14 [−0.17, −0.10] p<0.001"
    assert doc_tables.estimate(0.19, None, None, None) == "0.19"
    assert doc_tables.estimate(None, 0.1, 0.2) == MISSING and doc_tables.num(float("nan")) == MISSING
    assert doc_tables.p_value(0.0192) == "p=0.02" and doc_tables.p_value(0.0049) == "p=0.005"
    assert doc_tables.num(40.0, "{:d}") == "40"


def test_mrnet_tune_table_marks_the_chosen_setting():
    rows = [{"setting": {"norm": n, "lr": 1e-3, "epochs": 1, "schedule": "cosine"}, "runs": {"0": {"fit_auc_last_epoch": f}},
             "exam_passes": 1800, "tune_auc_mean": a, "seconds_mean": 100.0}
            for n, a, f in (("batch", 0.82, 0.64), ("group", 0.45, 0.47))]
    text = render("mrnet-tune", {"bench_mrnet_tune": {"rows": rows, "chosen": rows[0]["setting"], "n_train_exams": 2000,
                                                      "rule": "largest tune AUC"}})
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[1] == "| **batch** | **0.001** | **cosine** | **1** | **1,800** | **0.82** | **0.64** | **100** |"
    assert lines[2] == "| group | 0.001 | cosine | 1 | 1,800 | 0.45 | 0.47 | 100 |"
    assert "2,000 training exams" in text and "seeds 0;" in text


def test_every_benchmark_json_has_a_row():
    """docs/benchmarks.md lists every reports/bench/*.json: a new benchmark needs a row in
    doc_tables.BENCHMARKS (and its file in render_docs.SOURCE_FILES)."""
    stems = {stem for _, stem, *_ in doc_tables.BENCHMARKS}
    assert {p.stem for p in (REPO / "reports" / "bench").glob("*.json")} <= stems
    for key, stem, *_ in doc_tables.BENCHMARKS:
        assert render_docs.SOURCE_FILES[key] == f"reports/bench/{stem}.json"
    text = render("benchmarks", {"bench_undersample": {"slices_per_s": {"ours": 217.1}, "ratio_vs_fastmri": 2.04}})
    assert "217 slices/s: 2.04× fastMRI's loop" in text and text.count(MISSING) >= len(stems) - 1


def test_pages_link_back_and_every_link_resolves():
    """Every docs/ page opens with a title and a summary that links back to the README; every
    relative link of the README and docs/ names a file that exists (and, with #anchor, a heading of it)."""
    import re

    def anchors(path: Path) -> set[str]:
        heads = [ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}

    pages = render_docs.pages(REPO)
    assert len([p for p in pages if p.startswith("docs/")]) >= 8
    for page in pages:
        path = REPO / page
        text = path.read_text()
        if page.startswith("docs/"):
            head = text.split("\n\n")
            assert head[0].startswith("# ") and "](../README.md)" in head[1], page
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.is_file(), f"{page}: link to {target}: no such file"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{page}: link to {target}: no such heading"
