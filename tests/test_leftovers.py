"""No leftovers: a killed stage's temporaries go once their owner is gone (pipeline/stores/tmp_sweep.py).

`kill -9` of prepare or train-unet at a point the test picks (a `sitecustomize` on PYTHONPATH makes
the stage SIGKILL itself at the n-th `os.replace` that touches a given path), then `dvc repro`:
DVC checks the old outputs out of its cache without running the stage, and still nothing of the
killed run is left anywhere, nor any process of it. The owner check itself, and that every stage
sweeps every output of its dvc.yaml entry at its start, are tested in-process."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.stores.tmp_sweep import Claim, sweep
from tests.helpers import REPO, dvc_interpolate, run_cli, stage_argv
from tests.test_dvc_pipeline import _env, _sh, _tiny_params

TEMPORARY = re.compile(r"\.(tmp|old|lock)-.+-[0-9a-f]{8}")
KILL_HOOK = '''\
import os, signal
_spec = os.environ.get("KILL_AT_REPLACE")          # "<path substring>:<n>:<before|after>"
if _spec:
    _what, _n, _when = _spec.rsplit(":", 2)
    _seen = [0]
    _replace = os.replace

    def _kill_at(src, dst, *a, **k):
        _seen[0] += _what in os.fspath(src) or _what in os.fspath(dst)
        now = _seen[0] == int(_n)
        if now and _when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = _replace(src, dst, *a, **k)
        if now:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    os.replace = _kill_at
'''


def temporaries(root: Path) -> list[Path]:
    """Every `.tmp-`/`.old-`/`.lock-` entry under `root` (not in .git or .dvc)."""
    found = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", ".dvc")]
        found += [Path(top) / e for e in dirs + files if TEMPORARY.fullmatch(e)]
    return found


# ------------------------------------------------------------------ the owner check

def _run_and_die(code: str) -> int:
    """Run Python `code` (with this repo importable), which leaves a child process `child` running,
    then SIGKILL it: returns the child's pid."""
    code = (f"import os, signal, subprocess, sys, time; sys.path.insert(0, {str(REPO)!r})\n{code}"
            f"print(child, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    return int(r.stdout)


def _killed_writer(final: Path) -> int:
    """A process that claims temporaries of `final`, forks a child that lives on, and is killed
    mid-write; returns the child's pid."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return _run_and_die(
        f"from pipeline.stores.tmp_sweep import Claim\n"
        f"c = Claim(__import__('pathlib').Path({str(final)!r})); (c.path('tmp') / 'train').mkdir(parents=True)\n"
        f"c.path('old').write_text('x')\n"
        f"child = os.fork()\n"
        f"if child == 0:\n"
        f"    null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1); os.dup2(null, 2)\n"
        f"    time.sleep(60); os._exit(0)\n")


def test_only_the_temporaries_of_a_gone_owner_are_swept(tmp_path):
    final = tmp_path / "slices.zarr"
    final.mkdir()
    child = _killed_writer(final)              # its forked child still runs: the lock is free all the same
    try:
        dead = sorted(p for p in tmp_path.iterdir() if p.name != final.name)
        assert [p.name[:5] for p in dead] == [".lock", ".old-", ".tmp-"]
        live = Claim(final)                    # a writer running now (this process)
        live.path("tmp").mkdir()
        legacy = tmp_path / ".tmp-slices.zarr-0123abcd"          # an older version's leftover: no lock
        legacy.mkdir()
        other = tmp_path / ".tmp-slices.zarr2-0123abcd"          # another output's
        other.mkdir()
        assert sorted(sweep(final)) == sorted(dead + [legacy])
        assert live.path("tmp").is_dir() and live.lock.is_file() and other.is_dir() and final.is_dir()
        live.release()                         # what atomic_path does once the temporary is in place
        assert not live.lock.exists()
    finally:
        os.kill(child, signal.SIGKILL)


def test_sweep_reaches_inside_an_output_directory(tmp_path):
    """train-unet's resume checkpoints: `<checkpoint dir>/<config hash>/last.pt`, written atomically."""
    ckpt = tmp_path / "checkpoints" / "baseline_s0"
    key = ckpt / "0123456789abcdef"
    os.kill(_killed_writer(key / "last.pt"), signal.SIGKILL)
    kept = ckpt / "fedcba9876543210" / "last.pt"               # another config's resume checkpoint
    kept.parent.mkdir(parents=True)
    kept.write_text("x")
    assert len(sweep(ckpt)) == 3
    assert not key.exists() and kept.is_file()                  # the emptied directory went too


def _stage_commands() -> dict[str, tuple[list[str], list[str]]]:
    """dvc.yaml's stages (one item of each foreach): (the `roirecon` arguments, the outputs)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = {}
    for name, st in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        item = None
        if "foreach" in st:
            item, st = 0, st["do"]
        outs = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots")
                for o in st.get(key, [])]
        stages[name] = (stage_argv(st["cmd"], params, item), [dvc_interpolate(o, params, item) for o in outs])
    return stages


@pytest.mark.parametrize("name", sorted(_stage_commands()))
def test_every_stage_sweeps_its_outputs_first(name, tmp_path, monkeypatch):
    """Before it reads anything (here a params file that is not there), each stage sweeps the stale
    temporaries of every output dvc.yaml gives it, and keeps those of a live writer."""
    args, outs = _stage_commands()[name]
    monkeypatch.chdir(tmp_path)
    if "train-unet" in args:   # its resume checkpoints, outside DVC's outputs
        outs = outs + [f".roirecon/checkpoints/{Path(outs[0]).stem}/0123456789abcdef/last.pt"]
    stale, live = [], []
    for out in outs:
        final = tmp_path / out
        final.parent.mkdir(parents=True, exist_ok=True)
        stale.append(final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"))
        stale[-1].mkdir()
        live.append(Claim(final))
        live[-1].path("tmp").mkdir()
    result = run_cli(*args, "--params", "missing.yaml")
    assert result.exit_code == 1 and "missing.yaml" in result.stderr
    assert [p for p in stale if p.exists()] == []
    assert all(c.path("tmp").is_dir() for c in live)
    for c in live:
        c.release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_torchrun_ends_with_a_killed_stage():
    """`unet.nproc > 1` reruns the stage under torchrun; a kill -9 of the stage sends torchrun SIGTERM
    (which ends its workers) instead of leaving it to train on. Here a plain child stands for torchrun."""
    child = _run_and_die(
        "from stages.app import _terminated_with_this_process\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                         preexec_fn=_terminated_with_this_process(), stdout=subprocess.DEVNULL,\n"
        "                         stderr=subprocess.DEVNULL).pid\n")
    deadline = time.monotonic() + 10
    while (alive := _running(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie has ended
    except OSError:
        return False


# ------------------------------------------------------------------ kill -9, then dvc repro

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """synthesize, prepare, undersample and train-baseline@0 of dvc.yaml, reproduced and committed
    (U-Net with one DataLoader worker, so that a killed training has a child process)."""
    root = tmp_path_factory.mktemp("killrepo")
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc["stages"] = {k: v for k, v in dvc["stages"].items()
                     if k in ("synthesize", "prepare", "undersample", "train-baseline")}
    dvc.pop("plots", None)
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    params = _tiny_params()
    params["unet"].update(seeds=[0], num_workers=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    (root / ".gitignore").write_text("/.roirecon/\n__pycache__/\n")
    (root / ".hook").mkdir()
    (root / ".hook" / "sitecustomize.py").write_text(KILL_HOOK)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"],
                ["dvc", "repro", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "repro"]):
        _sh(root, *cmd)
    return root


def _killed(repo: Path, kill_at: str, *cmd: str) -> str:
    """Run `cmd` in `repo` with the stage set to SIGKILL itself at `kill_at`; wait until every process
    it started has ended (none may be left: no orphans). Returns its output."""
    marker = uuid.uuid4().hex
    env = {**_env(), "PYTHONPATH": str(repo / ".hook"), "KILL_AT_REPLACE": kill_at, "ROIRECON_TEST_RUN": marker}
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    # DVC reports a killed command as "-9" where the shell execs it and "137" where a shell waits on it
    killed = r.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or \
        re.search(r"exited with (-9|137)\b", r.stdout + r.stderr) is not None
    assert killed, f"{' '.join(cmd)} was not killed:\n{r.stdout}\n{r.stderr}"
    deadline = time.monotonic() + 20          # a DataLoader worker notices its parent's end within 5 s
    while (left := _processes_of(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running after the kill: {left}"
    return r.stdout + r.stderr


def _processes_of(marker: str) -> list[str]:
    """The running processes started with ROIRECON_TEST_RUN=marker (their command lines)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"ROIRECON_TEST_RUN={marker}".encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def _repro_restores(repo: Path, stage: str) -> None:
    """`dvc repro` after the kill: the stage's outputs come back from the cache (it does not run),
    nothing of the killed run is left, the repo is as committed."""
    out = _sh(repo, "dvc", "repro")
    assert f"Stage '{stage}' is cached - skipping run" in out, out
    assert temporaries(repo) == []
    assert _sh(repo, "dvc", "status", "-q") == ""
    assert _sh(repo, "git", "status", "--porcelain") == ""


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists() or not hasattr(os, "fork"),
                                reason="needs /proc and fork")


@needs_proc
def test_kill_prepare_mid_write_then_repro(tiny):
    """Killed after its third file into the new store, under `dvc repro -f` (DVC removed the old
    store first): the next `dvc repro` restores the store from the cache without running prepare."""
    _killed(tiny, "/.tmp-slices.zarr-:3:before", "dvc", "repro", "-f", "-s", "prepare")
    _repro_restores(tiny, "prepare")


@needs_proc
def test_kill_prepare_while_replacing_the_old_store(tiny):
    """Run by hand over a complete store and killed between moving the old store aside and moving
    the new one into place: no store, an `.old-` and a `.tmp-`; both go, and `dvc repro` restores it."""
    _killed(tiny, "/.old-slices.zarr-:1:after", sys.executable, "-m", "stages.cli", "prepare",
            "--raw-dir", "data/synthetic/fastmri", "--out", "data/slices.zarr")
    assert not (tiny / "data" / "slices.zarr").exists()
    _repro_restores(tiny, "prepare")


@needs_proc
def test_kill_train_unet_mid_epoch_then_repro(tiny):
    """Killed as its first resume checkpoint lands, with the dvclive directory half written and a
    DataLoader worker running: no temporary, checkpoint or worker is left."""
    _killed(tiny, "/.tmp-last.pt-:1:before", "dvc", "repro", "-f", "-s", "train-baseline@0")
    assert not any((tiny / ".roirecon" / "checkpoints" / "baseline_s0").iterdir())
    _repro_restores(tiny, "train-baseline@0")
