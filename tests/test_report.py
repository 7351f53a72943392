"""`make report`: the static HTML report of a tiny experiment, opened in headless Chromium (Debian's), and the
notebook run by nbclient on the same results."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from grids import TINY_TABLE1  # tests/grids.py

from harness.config import PROJECT_ROOT
from harness.methods import display
from harness.report import build
from harness.results import predictions_path

pytestmark = pytest.mark.slow  # (the tiny Table 1 reproduction the session shares)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_BROWSER = "no chromium here: `make system-packages` installs Debian's where apt-get works"


@pytest.fixture
def tiny_results(serial_tiny_table1, tmp_path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(serial_tiny_table1, results, ignore=shutil.ignore_patterns("report"))
    return results


def report(results: Path) -> Path:
    return build(TINY_TABLE1 + [f"meta.run.results_dir={results}"])


def embedded_examples(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="examples-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_the_report_has_every_table_plot_and_run(tiny_results):
    path = report(tiny_results)
    page = path.read_text()
    assert path == tiny_results / "report" / "index.html"
    assert page.count('<table class="results">') == 1 and "95% CI" in page and "paper (LLaMA2-7B)" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {Path(src).stem.split("-")[-1] for src in images} == {"params", "cost", "loss"}
    for src in images:  # relative paths: the page opens from disk
        assert (path.parent / src).is_file() and (path.parent / src).with_suffix(".svg").is_file()
    assert page.count('<details class="run">') == 5  # provenance of each of the five cells
    assert "sha256" in page and "commit" in page
    examples = embedded_examples(page)["table1"]
    assert len(examples["methods"]) == 5 and len(examples["rows"]) == 5 * 2  # five test sets, two records each


def chromium(page: Path, fragment: str = "", screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the console messages) of `page` opened from disk."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--window-size=1300,2400"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, page.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.mark.skipif(not CHROMIUM, reason=NO_BROWSER)
def test_the_console_check_sees_a_script_error(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>notDefinedAnywhere();</script></body></html>")
    _, console = chromium(broken)
    assert any("notDefinedAnywhere" in line for line in console)


@pytest.mark.skipif(not CHROMIUM, reason=NO_BROWSER)
def test_the_report_in_a_real_browser_filters_the_examples_where_two_methods_disagree(tiny_results, tmp_path):
    first = report(tiny_results)
    data = embedded_examples(first.read_text())["table1"]
    a, b = data["methods"][0], data["methods"][1]
    # the tiny models get (nearly) everything wrong alike: one answer of A's run is marked right so that the two
    # disagree on a known example, and the filter has something to find
    flipped = flip_one_answer(tiny_results, a)
    path = report(tiny_results)
    data = embedded_examples(path.read_text())["table1"]
    disagreeing = [r for r in data["rows"] if r["by"][a][1] != r["by"][b][1]]
    assert len(disagreeing) >= 1 and flipped in {(r["set"], r["index"]) for r in disagreeing}

    everything, console = chromium(path)
    assert console == []  # no script error, no message
    assert everything.count('class="example"') == len(data["rows"])
    assert '<table class="results">' in everything and everything.count("<img ") == 3

    fragment = "#" + "&".join(f"{k}={quote(v, safe='')}" for k, v in {"a": a, "b": b, "disagree": "1"}.items())
    filtered, console = chromium(path, fragment)
    assert console == []
    assert filtered.count('class="example"') == len(disagreeing) < len(data["rows"])
    assert f"{len(disagreeing)} of {len(data['rows'])} examples" in filtered

    shot = tmp_path / "report.png"
    chromium(path, fragment, screenshot=shot)
    assert shot.is_file() and shot.stat().st_size > 10_000


def flip_one_answer(results: Path, name: str) -> tuple[str, int]:
    """Marks the first wrong answer of the run the browser calls `name` right; returns its (set, index)."""
    for record_path in sorted((results / "runs").glob("*.json")):
        run = json.loads(record_path.read_text())["run"]
        label = display.label(run["method"], run["config"]["method"])
        if name.split(" ")[0] != label:
            continue
        path = predictions_path(results, run["id"])
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        target = next(r for r in rows if not r["correct"])
        target["correct"] = True
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return target["dataset"], target["index"]
    raise AssertionError(f"no run named {name}")


def test_the_notebook_runs_on_the_results_and_shows_a_table_with_intervals_and_a_plot(tiny_results, monkeypatch):
    import nbclient
    import nbformat

    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "compare_runs.ipynb", as_version=4)
    monkeypatch.setenv("HARNESS_RESULTS_DIR", str(tiny_results))
    monkeypatch.setenv("HARNESS_NOTEBOOK_OVERRIDES", " ".join(TINY_TABLE1))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html_tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("95% CI" in t for t in html_tables)
    assert any("image/png" in o.get("data", {}) for o in outputs)
