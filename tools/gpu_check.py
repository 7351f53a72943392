"""The one prepared device check (issue 26): what a lent GPU must verify of paper scale, in one command.

    python tools/gpu_check.py bundle               # here: .gpu-check/ (wheels, tokenizers, data) + the device command
    python3 tools/gpu_check.py device --out $OUT   # on the device: CUDA tests, 7B-shape training and evaluation
    python tools/gpu_check.py device --dry --out DIR   # here, the same steps at tiny shapes on the CPU (the suite)

`make gpu-check` builds the bundle and prints the command for the device tool; `make gpu-check DRY=1` runs the dry
check. The device (docs/scale.md, "The device check") has Python 3.12 with torch 2.11, transformers 5.17 and
accelerate 1.15 but none of hydra-core, omegaconf (and its antlr runtime) or this harness's peft pin, and nothing
can be fetched there; at most 64 MiB travel. The bundle therefore holds:
- `wheels/`: those packages, and the lock's transformers (the harness needs >= 5.24), as pure-Python wheels (pip
  download / pip wheel), installed there into /tmp/site ahead of the device's own;
- `site/`: tokenizer-only copies of the two offline model packages the tiny models take their tokenizers from
  (SmolLM2's GGUF package is 94 MB, all-MiniLM's 88 MB): the tokenizer files, each package's config, and in place
  of SmolLM2's GGUF file a note saying what it stands for (its content, not the real file's, enters provenance);
- `cache/`: the harness cache's tokenizer folder of that GGUF (HARNESS_CACHE), so no conversion runs there;
- `data/`: the first records of the local benchmark files the checks read (HARNESS_DATA_DIR), never committed.
The device step writes `gpu_check.md` and `gpu_check.json` under --out as each part finishes, so a run cut off by
its time limit still returns what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".gpu-check"
# what the device's Python lacks (KINDS.md's package list), at the versions of this harness's lock; transformers
# too: the device's 5.17 lacks the models' `cache=` keyword the harness's generation uses (pyproject.toml's floor)
CARRIED = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "peft", "transformers",
           "regex")  # (transformers checks regex's version on import; the device's is not known)
DEVICE_PYTHON = ("--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "any")
BUNDLE_LIMIT = 50 * 2**20
ALL_LINEAR = "model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
ROSA_BUDGET = "0.011872227"  # RoSA's ~80M of LLaMA-2-7B (1.19%), all seven linear layers (docs/scale.md)
DATA_RECORDS = {"commonsense/boolq/train.json": 64, "commonsense/boolq/test.json": 24,
                "commonsense/ARC-Easy/test.json": 24, "math/gsm8k/train.jsonl": 64, "math/gsm8k/test.jsonl": 24,
                "glue/RTE/train.tsv": 64, "glue/RTE/dev.tsv": 24}


# -- here: the bundle ------------------------------------------------------------------------------------------------
def locked_versions() -> dict[str, str]:
    lock = ROOT / "requirements" / "lock-cpu.txt"
    pins = dict(line.strip().split("==", 1) for line in lock.read_text().splitlines() if "==" in line)
    return {name: pins[name] for name in CARRIED}


def build_wheels(target: Path) -> list[str]:
    """The carried packages as wheels for the device's Python (antlr's 4.9.3, which hydra pins, is an sdist on
    PyPI: built into a pure-Python wheel here)."""
    target.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for name, version in locked_versions().items():
        spec = f"{name}=={version}"
        done = subprocess.run([*pip, "download", "--no-deps", *DEVICE_PYTHON, "-d", str(target), spec],
                              capture_output=True, text=True)
        if done.returncode:
            subprocess.run([*pip, "wheel", "--no-deps", "-w", str(target), spec], check=True)
    return sorted(p.name for p in target.glob("*.whl"))


def tokenizer_copies(site: Path, cache: Path) -> None:
    """Tokenizer-only stand-ins of the offline model packages, and the GGUF package's converted tokenizer folder
    in a harness cache of its own (see the module's docstring)."""
    from harness.config import compose
    from harness.models import _package_dir, load_tokenizer, pretrained_location

    smollm = compose(["model=tiny-llama"]).model.tokenizer
    converted = pretrained_location(smollm)  # the cached conversion here (made once if missing)
    target = cache / "gguf" / Path(converted).name
    target.mkdir(parents=True, exist_ok=True)
    for f in Path(converted).iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, target / f.name)
    package = site / str(smollm.path)
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / str(smollm.gguf_file)).write_text(
        f"A stand-in of {smollm.gguf_file} for the device check (tools/gpu_check.py): the real file is "
        f"{(_package_dir(str(smollm.path)) / str(smollm.gguf_file)).stat().st_size:,} bytes; only its tokenizer "
        "travels, converted, under the check's HARNESS_CACHE.\n")
    bert = compose(["model=tiny-bert"]).model.tokenizer
    source = _package_dir(str(bert.path)) / str(bert.subdir)
    package = site / str(bert.path)
    (package / str(bert.subdir)).mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for f in source.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin", ".onnx", ".h5", ".ot"):
            shutil.copy2(f, package / str(bert.subdir) / f.name)
    load_tokenizer(compose(["model=tiny-llama"]).model)  # (the copy works here too)


def data_subset(target: Path) -> None:
    from harness.config import compose

    source = Path(compose([]).meta.data_dir)
    for relative, records in DATA_RECORDS.items():
        src, dst = source / relative, target / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".json":
            dst.write_text(json.dumps(json.loads(src.read_text())[:records]))
        else:  # jsonl, tsv (the tsv's header line kept)
            lines = src.read_text().splitlines(keepends=True)
            dst.write_text("".join(lines[:records + (src.suffix == ".tsv")]))


def device_command(timeout_s: int = 480) -> str:
    return ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
            ".gpu-check/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD/.gpu-check/site:$PWD PYTHONUNBUFFERED=1 && "
            f"timeout {timeout_s} python3 tools/gpu_check.py device --out $OUT")


def bundle(target: Path = BUNDLE) -> dict:
    if target.exists():
        shutil.rmtree(target)
    wheels = build_wheels(target / "wheels")
    tokenizer_copies(target / "site", target / "cache")
    data_subset(target / "data")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    if size > BUNDLE_LIMIT:
        raise SystemExit(f"gpu_check: the bundle is {size / 2**20:.1f} MiB, over {BUNDLE_LIMIT / 2**20:.0f} MiB")
    return {"bundle": str(target), "wheels": wheels, "mib": round(size / 2**20, 2), "command": device_command(),
            "carry": [".gpu-check"]}


# -- on the device (or here, dry) ----------------------------------------------------------------------------------
class Report:
    """The check's findings, written out after every part (markdown and JSON)."""

    def __init__(self, out: Path, dry: bool):
        self.out, self.data = out, {"dry": dry, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, part: str, value) -> None:
        self.data["parts"][part] = value
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def environment() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__, "peft": peft.__version__}


def run_step(argv: list[str], timeout_s: int) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        code, text = proc.returncode, proc.stdout[-6000:] + proc.stderr[-4000:]
    except subprocess.TimeoutExpired as exc:
        code, text = 124, f"timed out after {timeout_s} s\n{(exc.stdout or b'')[-4000:]!r}"
    return code, text, round(time.perf_counter() - start, 1)


def cuda_tests(out: Path, timeout_s: int) -> dict:
    import xml.etree.ElementTree as ElementTree

    junit = out / "cuda_tests.xml"
    code, text, seconds = run_step(["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                                    f"--junitxml={junit}", "-rs"], timeout_s)
    cases = []
    if junit.is_file():
        for case in ElementTree.parse(junit).iter("testcase"):
            state = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            message = next((child.get("message", "")[:300] for child in case if child.tag != "system-out"), "")
            cases.append({"test": case.get("name"), "state": state, "message": message})
    return {"exit": code, "seconds": seconds, "cases": cases, "tail": text[-1500:]}


def training(out: Path, dry: bool, limits: dict[str, int], dry_limit: int | None) -> dict:
    """Step time, useful tokens/s, MFU and peak memory per method as ratios to LoRA in one invocation
    (experiments/step_time.py), at LLaMA-2-7B shapes at RoSA's ~80M budget, LoRA also padded; then full FT with
    gradient checkpointing beside LoRA (its fp32 weights, gradients and moments: ~108 GB)."""
    model = "model=tiny-llama" if dry else "model=llama2-7b-random"
    steps = ["--steps", "1" if dry else "3", "--warmup", "1", "--micro-batch", "4" if dry else "16"]
    budget = ["--methods", "lora,dora,pissa,milora,neat,rosa,spa", "--also-padded", "lora",
              "--budget-fraction", ROSA_BUDGET, "--set", "rosa:method.r=2" if dry else "rosa:method.r=16", ALL_LINEAR]
    parts = {}
    for name, extra in (("equal_budget", budget),
                        ("full_ft", ["--methods", "lora,full", "training.gradient_checkpointing=true"])):
        target = out / f"step_time_{name}.json"
        code, text, seconds = run_step(["experiments/step_time.py", model, *steps, *extra, "--json", str(target)],
                                       dry_limit or limits[name])
        parts[name] = {"exit": code, "seconds": seconds, "tail": text[-1500:],
                       **(json.loads(target.read_text()) if target.is_file() else {})}
    return parts


def evaluation(out: Path, dry: bool, timeout_s: int) -> dict:
    """Commonsense 4-beam prompts/s and greedy math new tokens/s of the harness against the batch-1 loop."""
    target = out / "eval_throughput.json"
    args = (["model=tiny-llama", "--per-set", "4", "--math", "4", "--math-tokens", "16"] if dry else
            ["model=llama2-7b-random", "--per-set", "16", "--batch-size", "16", "--math", "8", "--math-tokens", "128"])
    code, text, seconds = run_step(["experiments/eval_throughput.py", *args, "--json", str(target)], timeout_s)
    return {"exit": code, "seconds": seconds, "tail": text[-1500:],
            **(json.loads(target.read_text()) if target.is_file() else {})}


def device(out: Path, dry: bool, carried: Path = BUNDLE) -> dict:
    if carried.is_dir():  # the carried data and tokenizers (on the device; here only after `bundle`)
        os.environ.setdefault("HARNESS_DATA_DIR", str(carried / "data"))
        os.environ.setdefault("HARNESS_CACHE", str(carried / "cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = Report(out, dry)
    report.add("environment", environment())
    # on the device, within its 8 minutes: the tests 120 s, the equal-budget table 200 s, full FT 70 s, evaluation 70 s
    report.add("cuda_tests", cuda_tests(out, 300 if dry else 120))
    report.add("training", training(out, dry, {"equal_budget": 200, "full_ft": 70}, 600 if dry else None))
    report.add("evaluation", evaluation(out, dry, 300 if dry else 70))
    return report.data


def _ratio_rows(rows: list[dict]) -> list[str]:
    lines = ["| method | batching | knob | trainable | step s | x LoRA | tokens/s | MFU | peak MB | x LoRA | planned MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        lines.append(f"| {r['method']} | {r.get('batching', '')} | {r.get('knob', '')} | {r['trainable']:,} | "
                     f"{r['step_s']:.3f} | {r.get('step_x_lora', 0):.2f} | {r.get('tokens_per_s', 0):,.0f} | {mfu} | "
                     f"{r['peak_mb']:,.0f} | {r.get('peak_x_lora', 0):.2f} | {r.get('predicted_mb') or 0:,.0f} |")
    return lines


def markdown(data: dict) -> str:
    parts = data["parts"]
    lines = [f"# Device check{' (dry run, CPU, tiny shapes)' if data['dry'] else ''}, {data['started']}", ""]
    env = parts.get("environment")
    if env:
        lines += [", ".join(f"{k} {v}" for k, v in env.items()), ""]
    tests = parts.get("cuda_tests")
    if tests:
        counts: dict[str, int] = {}
        for case in tests["cases"]:
            counts[case["state"]] = counts.get(case["state"], 0) + 1
        lines += ["## CUDA tests", "", f"exit {tests['exit']}, {tests['seconds']} s: "
                  + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no test ran"), ""]
        lines += [f"- {c['test']}: {c['state']} {c['message']}" for c in tests["cases"] if c["state"] != "passed"]
        lines.append("")
    for name, part in (parts.get("training") or {}).items():
        lines += [f"## Training: {name.replace('_', ' ')}", "", f"exit {part['exit']}, {part['seconds']} s", ""]
        lines += _ratio_rows(part.get("rows", [])) + [""]
    ev = parts.get("evaluation")
    if ev:
        lines += ["## Evaluation", "", f"exit {ev['exit']}, {ev['seconds']} s", ""]
        cs, mg = ev.get("commonsense"), ev.get("math_greedy")
        if cs:
            per_s = cs["records_per_s"]
            lines.append(f"- commonsense, {cs['beams']} beams, {cs['new_tokens']} new tokens, {cs['records']} prompts: "
                         + ", ".join(f"{k} {v:.2f} prompts/s" for k, v in per_s.items())
                         + f"; harness / batch-1 loop {per_s['harness'] / per_s['batch-1 loop']:.2f}x; "
                         f"answers agree {cs['answers_agree']}/{cs['records']}")
        if mg:
            lines.append(f"- math greedy, {mg['problems']} problems, at most {mg['max_new_tokens']} new tokens: "
                         + ", ".join(f"{k} {v:.1f} new tokens/s" for k, v in mg["new_tokens_per_s"].items())
                         + f"; {mg['ratio']:.2f}x; outputs identical {mg['identical']}/{mg['problems']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    made = sub.add_parser("bundle", help="build .gpu-check/ here and print the device command")
    made.add_argument("--into", default=str(BUNDLE), help=argparse.SUPPRESS)
    run = sub.add_parser("device", help="the check itself (on the device; --dry: here at tiny shapes)")
    run.add_argument("--out", default=os.environ.get("OUT", "results/gpu-check"))
    run.add_argument("--dry", action="store_true", help="tiny shapes on this machine's CPU")
    run.add_argument("--bundle", default=str(BUNDLE), help="the carried folder (default .gpu-check)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.step == "bundle":
        made = bundle(Path(args.into))
        print(f"gpu_check: {made['bundle']} ({made['mib']} MiB): {', '.join(made['wheels'])}")
        print("gpu_check: on a lent GPU, call the device tool's `run` with carry=[\".gpu-check\"] and the command:")
        print(made["command"])
        return
    data = device(Path(args.out), args.dry, Path(args.bundle))
    print(markdown(data))


if __name__ == "__main__":
    main()
