"""The data stages give the same bytes whatever SIMD level numpy, OpenBLAS, glibc and torch
dispatch to (design contract: a fresh clone on any x86-64 CPU reproduces dvc.lock's hashes).

`synthesize`, `prepare` and `undersample` (single- and multi-coil) run in two subprocesses: one
in the normal environment, one with every CPU feature above the baseline switched off at
runtime, as on an older CPU:
- numpy: `NPY_DISABLE_CPU_FEATURES` = every dispatch target this CPU supports (the names
  depend on the numpy version, so they are read from numpy itself),
- OpenBLAS: `OPENBLAS_CORETYPE=Prescott` (its generic x86-64 kernels),
- glibc libm (`math.exp`, scalar `np.exp`, ...): `GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,...`
  (no FMA / AVX2 variants),
- torch: `ATEN_CPU_CAPABILITY=default`.
Every output file must be byte-identical.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import REPO, write_params

_DRIVER = r"""
import json, sys
from typer.testing import CliRunner
from stages.cli import app
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    if r.exit_code != 0:
        sys.exit(f"roirecon {' '.join(args)} failed: {r.output}")
"""

_STRIP = ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "OPENBLAS_CORETYPE",
          "GLIBC_TUNABLES", "ATEN_CPU_CAPABILITY")


def _numpy_features() -> list[str]:
    """numpy's dispatch targets that this CPU has (and so would use)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:                         # numpy < 2
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]


def _envs() -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if k not in _STRIP}
    base["ROIRECON_PROGRESS"] = "0"
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    reduced = dict(base, OPENBLAS_CORETYPE="Prescott", ATEN_CPU_CAPABILITY="default",
                   GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX_Usable,-AVX2_Usable,-FMA_Usable,"
                                  "-AVX512F_Usable,-AVX,-AVX2,-FMA,-FMA4,-AVX512F")
    feats = _numpy_features()
    if feats:
        reduced["NPY_DISABLE_CPU_FEATURES"] = " ".join(feats)
    return {"native": base, "baseline": reduced}


def _commands() -> list[list[str]]:
    cmds = []
    for name in ("single", "multi"):
        params = f"{name}.yaml"
        cmds += [
            ["synthesize", "--out", f"{name}/raw", "--params", params],
            ["prepare", "--raw-dir", f"{name}/raw/fastmri", "--out", f"{name}/slices.zarr",
             "--params", params],
            ["undersample", "--raw-dir", f"{name}/raw/fastmri", "--out",
             f"{name}/undersampled.zarr", "--params", params],
        ]
    return cmds


def _write_params(root: Path) -> None:
    for name, coils, challenge in (("single", 1, "singlecoil"), ("multi", 3, "multicoil")):
        write_params(root / f"{name}.yaml",
                     synthetic={"volumes": {"train": 2, "val": 1, "test": 1}, "slices": 3,
                                "recon_size": 48, "coils": coils, "lesion_rate": 0.5,
                                "eval_lesion_rate": 1.0, "exams": {"train": 2, "valid": 1},
                                "exam_slices": 3},
                     data={"crop": 48, "workers": 1, "challenge": challenge})


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".yaml")}


def _describe(root_a: Path, root_b: Path, rel: str) -> str:
    """Which arrays of a differing file differ, for the failure message."""
    a, b = root_a / rel, root_b / rel
    try:
        if rel.endswith(".h5"):
            import h5py
            with h5py.File(a) as fa, h5py.File(b) as fb:
                bad = [k for k in fa if not np.array_equal(fa[k][()], fb[k][()])]
                bad += [f"attrs[{k}]" for k in fa.attrs if np.any(fa.attrs[k] != fb.attrs[k])]
            return f"{rel}: {', '.join(bad) or 'bytes'}"
        if rel.endswith(".npy"):
            return f"{rel}: {int(np.sum(np.load(a) != np.load(b)))} voxels"
    except Exception as exc:  # pragma: no cover - diagnostics only
        return f"{rel}: ({exc})"
    return rel


def test_data_stages_identical_at_every_simd_level(tmp_path):
    outs = {}
    for label, env in _envs().items():
        work = tmp_path / label
        work.mkdir()
        _write_params(work)
        r = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(_commands())], cwd=work,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{label}: {r.stdout}\n{r.stderr}"
        outs[label] = _files(work)
    a, b = outs["native"], outs["baseline"]
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".h5") for k in a) and any("undersampled.zarr" in k for k in a)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, (f"{len(differ)} of {len(a)} output files depend on the CPU's SIMD level:\n"
                        + "\n".join(_describe(tmp_path / "native", tmp_path / "baseline", k)
                                    for k in differ))
