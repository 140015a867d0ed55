"""Intra-op threads (pipeline/threads.py): the choice from injected CPUs, quota and load, the
re-checks while a stage runs, the user's override, and that every torch stage goes through it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pipeline import threads as th
from pipeline.errors import InputError
from tests.helpers import REPO

TORCH_STAGES = ("stages/mrnet.py", "stages/gradcam.py", "stages/unet.py", "stages/evaluate.py",
                "stages/reconstruct.py")


@pytest.mark.parametrize("cpus, quota, others, want", [
    (2, None, 0.0, 2),      # alone: every core
    (2, None, 0.3, 2),      # an editor, a shell: still every core
    (2, None, 1.0, 1),      # beside one busy process
    (2, None, 0.67, 1),     # beside a busy process that our two spinning threads held to 2/3 of a core
    (2, None, 3.0, 1),      # never fewer than one
    (8, None, 2.2, 6),
    (64, 4.0, 10.0, 4),     # a container's quota caps a big host
    (64, 2.5, 0.0, 2),      # a fractional quota is floored
    (4, 0.5, 0.0, 1),
    (16, 8.0, 12.0, 4),     # the host's load leaves fewer free CPUs than the quota
])
def test_choose_threads(cpus, quota, others, want):
    assert th.choose_threads(cpus, quota, others) == want


def test_user_override_wins():
    assert th.requested_threads({}) is None
    assert th.requested_threads({"ROIRECON_THREADS": "3", "OMP_NUM_THREADS": "5"}) == 3
    assert th.requested_threads({"OMP_NUM_THREADS": "4,2"}) == 4
    with pytest.raises(InputError, match="ROIRECON_THREADS"):
        th.requested_threads({"ROIRECON_THREADS": "many"})
    with pytest.raises(InputError, match="OMP_NUM_THREADS"):
        th.requested_threads({"OMP_NUM_THREADS": "0"})


def test_openmp_environment_keeps_the_users_choice():
    env: dict[str, str] = {}
    th.openmp_environment(env)
    assert env == {"GOMP_SPINCOUNT": str(th.SPIN_COUNT)}
    for mine in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(mine)
        th.openmp_environment(env)
        assert env == mine


def test_cgroup_quota(tmp_path):
    assert th.cgroup_quota(tmp_path) is None                       # nothing to read: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert th.cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert th.cgroup_quota(tmp_path) == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert th.cgroup_quota(v1) is None
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("300000\n")
    assert th.cgroup_quota(v1) == 3.0


def test_sample_counts_only_the_usable_cpus(tmp_path):
    stat = tmp_path / "stat"
    #            user nice system idle iowait irq softirq steal
    stat.write_text("cpu  900 0 90 900 90 0 0 0 0 0\n"
                    "cpu0 100 0 10 500 50 0 0 0 0 0\n"
                    "cpu1 200 0 20 400 40 0 0 5 0 0\n"
                    "cpu2 600 0 60 0 0 0 0 0 0 0\n")
    s = th.read_sample([0, 1], stat)
    assert s.busy == pytest.approx((110 + 225) / th._TICK)   # idle and iowait are not busy; steal is


def test_others_is_the_busy_time_less_our_own():
    a = th.CpuSample(wall=10.0, busy=100.0, own=5.0)
    b = th.CpuSample(wall=12.0, busy=104.0, own=7.0)        # 4 CPU-s busy in 2 s, 2 of them ours
    assert th.others_between(a, b) == pytest.approx(1.0)
    assert th.others_between(a, th.CpuSample(12.0, 101.0, 7.0)) == 0.0   # clock granularity: never negative
    assert th.others_between(a, a) == 0.0


def _share(loads: list[float], threads: int = 2):
    """A ThreadShare on 2 CPUs whose windows see `loads` (others' CPUs) in turn, 2 s each."""
    samples = iter([th.CpuSample(2.0 * (i + 1), sum(loads[:i + 1]) * 2.0, 0.0) for i in range(len(loads))])
    applied: list[int] = []
    share = th.ThreadShare(2, None, threads, th.CpuSample(0.0, 0.0, 0.0), lambda: next(samples), applied.append)
    return share, applied


def test_a_change_needs_two_windows_in_a_row():
    share, applied = _share([1.0, 0.0, 1.0, 1.0, 0.1, 0.0])
    for _ in range(6):
        share.recheck()
    # one busy window alone changes nothing; two in a row go to 1 thread; two idle ones back to 2
    assert applied == [1, 2] and share.threads == 2
    assert [n for _, n, _ in share.changes] == [1, 2]


def test_first_decision_measures_a_window_of_its_own():
    samples = iter([th.CpuSample(100.0, 50.0, 1.0), th.CpuSample(100.25, 50.5, 1.25)])
    slept: list[float] = []
    n, others, _ = th.first_decision([0, 1], None, None, sample=lambda: next(samples), sleep=slept.append,
                                     clock=lambda: 100.0)
    assert slept == [th.MIN_WINDOW_S] and others == pytest.approx(1.0) and n == 1


def test_share_cpus_sets_and_restores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("ROIRECON_THREADS", "1")
    with th.share_cpus("cpu") as share:
        assert share is None and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.delenv("ROIRECON_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "first_decision", lambda *a, **k: (1, 1.0, th.CpuSample(0.0, 0.0, 0.0)))
    ticks = []
    with th.share_cpus("cpu") as share:
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(share, "tick", lambda: ticks.append(1))
        torch.nn.Sequential(torch.nn.Linear(2, 2))(torch.zeros(1, 2))   # every module's forward re-checks
        assert len(ticks) == 2
    torch.nn.Linear(2, 2)(torch.zeros(1, 2))
    assert len(ticks) == 2 and torch.get_num_threads() == before     # the hook is gone, the count restored


def _calls(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    return {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
            for n in ast.walk(tree) if isinstance(n, ast.Call)}


@pytest.mark.parametrize("module", TORCH_STAGES)
def test_every_torch_stage_shares_the_cpus(module):
    assert "share_cpus" in _calls(module), f"{module}: runs torch without pipeline.threads.share_cpus"


def test_one_home_for_the_thread_count():
    """Only pipeline/threads.py chooses the intra-op threads: elsewhere torch.set_num_threads is a
    DataLoader worker's 1 or a count a caller passed in."""
    allowed = {"pipeline/threads.py": None, "pipeline/stores/unet_data.py": "torch.set_num_threads(1)",
               "pipeline/training/mrnet.py": "torch.set_num_threads(cfg.threads)"}
    for path in sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "stages").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        text = path.read_text()
        if "set_num_threads" not in text:
            continue
        assert rel in allowed, f"{rel} sets torch threads: use pipeline.threads"
        if allowed[rel]:
            assert text.count("set_num_threads") == 1 and allowed[rel] in text, rel


def test_the_entry_point_sets_the_wait_before_torch_loads():
    src = (REPO / "stages/cli.py").read_text()
    main = src[src.index("def main"):]
    assert main.index("openmp_environment()") < main.index("app()")
    assert "import torch" not in src
