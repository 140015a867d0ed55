"""`dvc plots show/diff` pages render offline: the repo's plots.html_template inlines vega-embed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "tools" / "offline_plots.py"
EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=", re.IGNORECASE)


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               DVC_NO_ANALYTICS="1")
    return env


def _sh(cwd: Path, *cmd: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _generate(out: Path) -> bytes:
    _sh(REPO, sys.executable, str(SCRIPT), str(out))
    return out.read_bytes()


@pytest.fixture(scope="module")
def template_setting() -> str:
    """The committed .dvc/config's plots.html_template (relative to .dvc/)."""
    return _sh(REPO, "dvc", "config", "--project", "plots.html_template").strip()


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory, template_setting) -> Path:
    root = tmp_path_factory.mktemp("plotsrepo")
    _sh(root, "git", "init", "-q")
    _sh(root, "dvc", "init", "-q")
    _sh(root, "dvc", "config", "plots.html_template", template_setting)
    _generate(root / ".dvc" / template_setting)
    (root / "loss.csv").write_text("step,loss\n0,1.0\n1,0.5\n2,0.25\n")
    (root / "dvc.yaml").write_text("plots:\n  - loss.csv:\n      x: step\n      y: loss\n")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "commit", "-qm", "plot")
    (root / "loss.csv").write_text("step,loss\n0,0.9\n1,0.4\n2,0.2\n")
    return root


def test_repo_config_points_at_gitignored_template(template_setting):
    assert template_setting == "plots/offline.html"
    generated = Path(".dvc") / template_setting
    # the ~0.9 MB generated file must never be committed
    r = subprocess.run(["git", "check-ignore", "-q", str(generated)], cwd=REPO)
    assert r.returncode == 0, f"{generated} is not gitignored"
    assert str(generated) in (REPO / "Makefile").read_text()


def test_generation_is_deterministic_and_idempotent(tmp_path):
    a = _generate(tmp_path / "a.html")
    b = _generate(tmp_path / "b.html")
    assert a == b
    mtime = (tmp_path / "a.html").stat().st_mtime_ns
    assert _generate(tmp_path / "a.html") == a
    assert (tmp_path / "a.html").stat().st_mtime_ns == mtime  # unchanged content is not rewritten
    text = a.decode()
    assert "{plot_divs}" in text and "{scripts}" not in text  # DVC's CDN <script src> tags never get in
    assert "window.vegaEmbed=" in text
    assert not EXTERNAL_SCRIPT.search(text)


@pytest.mark.parametrize("command", [("show",), ("diff", "HEAD")])
def test_plots_page_has_no_external_scripts(plots_repo, tmp_path, command):
    out = tmp_path / "out"
    _sh(plots_repo, "dvc", "plots", *command, "--out", str(out))
    page = (out / "index.html").read_text(encoding="utf-8")
    assert not EXTERNAL_SCRIPT.search(page), EXTERNAL_SCRIPT.search(page)
    assert "cdn.jsdelivr.net" not in page
    assert "window.vegaEmbed=" in page  # the inlined bundle
    assert '<div id = "loss_csv">' in page and "vegaEmbed('#loss_csv', spec);" in page
    # the bundle comes before the inline vegaEmbed(...) call that needs it
    assert page.index("window.vegaEmbed=") < page.index("vegaEmbed('#loss_csv'")
    if command[0] == "diff":
        assert '"rev": "HEAD"' in page and '"rev": "workspace"' in page


# Runs the page's <script> blocks in document order in one global context, as a browser would;
# each vegaEmbed('#id', spec) call is passed on to the inlined vegaEmbed with a stub element and
# renderer 'none', and the resulting view is rendered to SVG (vega's headless path, no DOM).
NODE_CHECK = r"""
const fs = require('fs'), vm = require('vm');
const html = fs.readFileSync(process.argv[2], 'utf8');
const scripts = [...html.matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)];
const stub = () => new Proxy(function () {}, {
  get: (t, k) => (k === Symbol.toPrimitive ? () => '' : k === 'then' ? undefined : stub()),
  set: () => true, apply: () => stub(), construct: () => stub(),
});
const ctx = vm.createContext({console, setTimeout, clearTimeout, setInterval, clearInterval,
  queueMicrotask, URL, TextEncoder, TextDecoder, structuredClone});
ctx.window = ctx; ctx.addEventListener = ctx.removeEventListener = () => {}; ctx.document = stub();
const pending = [];
let embed = null;
scripts.forEach(([, attrs, code], i) => {
  if (/\bsrc\s*=/i.test(attrs)) throw new Error('external script: ' + attrs);
  vm.runInContext(code, ctx, {filename: 'script' + i});
  if (embed === null && typeof ctx.vegaEmbed === 'function') {
    embed = ctx.vegaEmbed;
    ctx.vegaEmbed = (id, spec) => pending.push(
      embed(stub(), spec, {renderer: 'none', actions: false, defaultStyle: false, tooltip: false,
                           width: 400, height: 300})
        .then(r => r.view.toSVG()).then(svg => ({id, svg})));
  }
});
if (!embed) throw new Error('no script defined window.vegaEmbed');
Promise.all(pending).then(res => {
  for (const {id, svg} of res) console.log(id, (svg.match(/<path/g) || []).length);
}).catch(e => { console.error(e); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node for the headless check")
def test_plots_page_renders_headless(plots_repo, tmp_path):
    out = tmp_path / "out"
    _sh(plots_repo, "dvc", "plots", "show", "--out", str(out))
    check = tmp_path / "check.js"
    check.write_text(NODE_CHECK)
    r = subprocess.run(["node", str(check), str(out / "index.html")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    rendered = dict(line.split() for line in r.stdout.splitlines() if line.startswith("#"))
    assert set(rendered) == {"#loss_csv"}
    assert int(rendered["#loss_csv"]) > 10  # axes, grid and the line were drawn
