"""Tests run offline on tiny models and the real files in ../shared/data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from harness.config import compose, default_data_dir  # noqa: E402

# The suite honours HARNESS_THREADS as the CLI does (`HARNESS_THREADS=1 make test`): results must not depend on
# the thread count or the BLAS kernels, and this is how both are checked.
# Under pytest-xdist (`make test` runs one worker per core) each worker, and every process it starts, takes its
# share of the cores: torch's default of one thread per core in each worker would oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("HARNESS_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
if os.environ.get("HARNESS_THREADS"):
    torch.set_num_threads(int(os.environ["HARNESS_THREADS"]))

DATA_DIR = Path(default_data_dir())

# Tests that must not run at the same time on two xdist workers (`--dist loadgroup` keeps a group on one):
# torchrun's default rendezvous port is one per machine, and the session's serial Table 1 is computed once only
# where its users share a worker (the one-node Slurm also serves one array at a time).
XDIST_GROUPS = {"test_distributed": "torchrun", "test_sharding": "torchrun", "test_slurm": "serial_tiny_table1",
                "test_submit": "serial_tiny_table1", "test_forgetting": "serial_tiny_table1",
                "test_report": "serial_tiny_table1"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = XDIST_GROUPS.get(item.module.__name__.rsplit(".", 1)[-1])
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "commonsense").is_dir():
        pytest.fail(f"real benchmark data not found at {DATA_DIR}: clone beside ../shared or set HARNESS_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_cfg():
    return compose(["model=tiny-llama"])


@pytest.fixture(scope="session")
def tokenizer(tiny_cfg):
    from harness.models import load_tokenizer

    return load_tokenizer(tiny_cfg.model)


@pytest.fixture
def tiny_model(tiny_cfg, tokenizer):
    """A fresh tiny Llama with random weights (seeded)."""
    from harness.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_cfg.model, tokenizer).eval()


@pytest.fixture
def inputs(tokenizer):
    return tokenizer(["The answer to the question is", "Below is an instruction that describes a task"],
                     return_tensors="pt", padding=True)


@pytest.fixture(scope="session")
def serial_tiny_table1(tmp_path_factory) -> Path:
    """The results folder of one serial reproduction of tests/grids.py's tiny Table 1 (run once per session:
    the submission tests compare their arrays with it)."""
    from grids import TINY_TABLE1

    from harness.reproduce import main as reproduce

    results = tmp_path_factory.mktemp("serial_tiny_table1")
    reproduce(TINY_TABLE1 + [f"meta.run.results_dir={results}"])
    return results


@pytest.fixture
def cli_in_process(monkeypatch, capfd):
    """`call(main, argv)`: a command-line entry point's main() run in this process on `argv` as sys.argv[1:] (Hydra
    parses it as on a command line): (exit status, stdout, stderr), as a subprocess of it would give them, without
    the seconds a new process spends importing torch. An exception other than SystemExit propagates: it would
    have been a traceback. What only a real process shows (the interpreter's exit status, what it prints on the
    way out, signals, locks of a dead process) stays with the tests' subprocesses. Hydra's logging setup (root
    handlers and level) and the SIGTERM handler main() installs are undone after each call."""
    import logging
    import signal
    import sys

    def call(main, argv):
        root = logging.getLogger()
        handlers, level, sigterm = root.handlers[:], root.level, signal.getsignal(signal.SIGTERM)
        monkeypatch.setattr(sys, "argv", [sys.argv[0], *argv])
        capfd.readouterr()
        try:
            main()
            status = 0
        except SystemExit as exc:  # as the interpreter maps it to an exit status
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
            signal.signal(signal.SIGTERM, sigterm)
        out, err = capfd.readouterr()
        return status, out, err

    return call
