"""The locked environment (requirements/lock.txt) covers everything the project imports and declares:
every third-party module imported anywhere in the code maps to a distribution that the lock pins (with
hashes) or that the Makefile installs itself (torch, fastmri); the lock pins no CUDA build and none of
fastmri's unused declared dependencies."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO

LOCK = REPO / "requirements" / "lock.txt"
SOURCE_DIRS = ("pipeline", "stages", "tools", "benchmarks", "tests")
OWN_PACKAGES = set(SOURCE_DIRS)
# a CUDA torch build or fastmri's declared-but-unused dependencies must never come in through the lock
FORBIDDEN = re.compile(r"^(nvidia-cublas.*|nvidia-cudnn.*|nvidia-cuda-.*|triton|torchvision|pytorch-lightning)$")


def normalise(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(dirs=SOURCE_DIRS, root: Path = REPO) -> dict[str, set[str]]:
    """Top-level names of every absolute import (module level or inside functions) -> files importing it."""
    found: dict[str, set[str]] = {}
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(root)))
    return found


def third_party_modules() -> dict[str, set[str]]:
    return {m: files for m, files in imported_modules().items()
            if m not in sys.stdlib_module_names and m not in OWN_PACKAGES}


def lock_pins(lock: Path) -> dict[str, str]:
    """{normalised name: version} of every `name==version` requirement line of a hashed pip lock."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s\\;]+)", line)
        if m:
            pins[normalise(m.group(1))] = m.group(3)
    return pins


def lock_entries(lock: Path) -> list[tuple[str, str]]:
    """(requirement line, its continuation block) for every requirement of the lock, in order."""
    entries: list[tuple[str, list[str]]] = []
    for line in lock.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1][1].append(stripped)
        else:
            entries.append((stripped, []))
    return [(req, "\n".join(block)) for req, block in entries]


def lock_format_problems(lock: Path) -> list[str]:
    """Entries of the lock that are not an exact `name==version` pin with sha256 hashes, or that pin a
    CUDA package / one of fastmri's unused dependencies."""
    problems = []
    for req, block in lock_entries(lock):
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==\S+( \\)?$", req)
        if not m:
            problems.append(f"not an exact pin: {req}")
            continue
        if not re.search(r"--hash=sha256:[0-9a-f]{64}", block):
            problems.append(f"no sha256 hash: {req}")
        if FORBIDDEN.match(normalise(m.group(1))):
            problems.append(f"forbidden: {req}")
    return problems


def makefile_installs() -> dict[str, str]:
    """Distributions the Makefile installs itself, before the lock: {name: version} (TORCH :=, FASTMRI :=)."""
    text = (REPO / "Makefile").read_text()
    out = {}
    for var, dist in (("TORCH", "torch"), ("FASTMRI", "fastmri")):
        m = re.search(rf"^{var}\s*:=\s*(\S+)\s*$", text, re.M)
        assert m, f"Makefile has no `{var} :=` line"
        assert re.search(rf"pip install .*{dist}==\$\({var}\)", text), f"Makefile does not install {dist}==$({var})"
        out[dist] = m.group(1)
    return out


def missing_from_lock(lock: Path) -> dict[str, list[str]]:
    """Distributions imported by the project that neither the lock pins nor the Makefile installs,
    {distribution (or unmapped module): importing files}."""
    pinned = set(lock_pins(lock)) | {normalise(d) for d in makefile_installs()}
    dists = importlib.metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for module, files in sorted(third_party_modules().items()):
        for dist in dists.get(module, [f"<module {module}: no installed distribution>"]):
            if normalise(dist) not in pinned:
                missing.setdefault(dist, []).extend(sorted(files))
    return missing


def undeclared_in_lock(lock: Path) -> list[str]:
    """pyproject.toml dependencies (and the test extra) that neither the lock nor the Makefile provides."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    provided = set(lock_pins(lock)) | {normalise(d) for d in makefile_installs()}
    names = [normalise(re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)) for r in requirements]
    return [n for n in names if n not in provided]


def test_lock_covers_every_imported_distribution():
    assert third_party_modules(), "found no third-party imports: the walk is broken"
    assert missing_from_lock(LOCK) == {}


def test_lock_covers_pyproject_dependencies():
    assert undeclared_in_lock(LOCK) == []


def test_makefile_installs_torch_and_fastmri_outside_the_lock():
    pins = lock_pins(LOCK)
    installs = makefile_installs()
    assert set(installs) == {"torch", "fastmri"}
    assert not set(installs) & set(pins), "torch/fastmri are the Makefile's, not the lock's"
    header = "\n".join(line for line in LOCK.read_text().splitlines()[:5] if line.startswith("#"))
    for dist, version in installs.items():
        assert f"{dist} {version}" in header, f"lock header does not name {dist} {version}"


def test_lock_pins_no_cuda_nor_unused_fastmri_dependencies():
    assert len(lock_pins(LOCK)) > 50
    assert [name for name in lock_pins(LOCK) if FORBIDDEN.match(name)] == []


def test_every_lock_entry_is_exactly_pinned_and_hashed():
    assert len(lock_entries(LOCK)) == len(lock_pins(LOCK))
    assert lock_format_problems(LOCK) == []


@pytest.mark.parametrize("dropped", ["zarr", "pyyaml", "networkx", "ruamel-yaml"])
def test_checks_fail_when_a_pin_is_deleted(tmp_path, dropped):
    """The checkers really read the given lock: delete one pin (and its hashes) from a copy."""
    lines = LOCK.read_text().splitlines(keepends=True)
    out, skipping = [], False
    for line in lines:
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            skipping = normalise(m.group(1)) == dropped
        elif not line[:1].isspace():
            skipping = False
        if not skipping:
            out.append(line)
    copy = tmp_path / "lock.txt"
    copy.write_text("".join(out))
    assert len(out) < len(lines)
    assert dropped not in lock_pins(copy)
    assert missing_from_lock(LOCK) == {}
    assert {normalise(d) for d in missing_from_lock(copy)} == {dropped}
    declared = dropped != "networkx"        # networkx is imported (tests) but only a transitive dependency
    assert undeclared_in_lock(copy) == ([dropped] if declared else [])


@pytest.mark.parametrize("extra,problem", [
    ("nvidia-cudnn-cu12==9.1.0.70 \\\n    --hash=sha256:" + "0" * 64 + "\n", "forbidden: nvidia-cudnn-cu12"),
    ("triton==3.1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n", "forbidden: triton"),
    ("torchvision==0.28.0 \\\n    --hash=sha256:" + "0" * 64 + "\n", "forbidden: torchvision"),
    ("tabulate2==1.0\n", "no sha256 hash: tabulate2"),
    ("tabulate2>=1.0\n", "not an exact pin: tabulate2"),
])
def test_format_check_fails_on_a_bad_entry(tmp_path, extra, problem):
    copy = tmp_path / "lock.txt"
    copy.write_text(LOCK.read_text() + extra)
    problems = lock_format_problems(copy)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
