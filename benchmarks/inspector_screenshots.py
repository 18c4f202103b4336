"""Screenshots of the replay inspector (notebook 03) over a real trained run, for the README.

    .venv/bin/python benchmarks/inspector_screenshots.py            # the method-table C2GR run, seed 0

Makes a temporary copy of notebooks/03_replay_inspector.ipynb with its parameters set by papermill
(`prepare_only`: nothing runs there) so that it opens the given finished run and its JointTrain
reference instead of training a small run of its own, starts JupyterLab over that copy and runs
all its cells in headless Chromium at a 1,280 px wide window (the harness of
tests/browser/test_lab.py, imported from there), then:

1. stored replay: the last round, past task `--task`, pair `--sample`  -> inspector_stored_replay.png
2. live sampling: `--pairs` pairs of `--task`, DDIM, `--steps` steps, seed `--seed`, drawn by a
   click on *draw*                                                     -> inspector_live_sampling.png

Needs Chromium, chromedriver and selenium, like the browser test. Prints the quality lines that the
screenshots show.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "results" / "method_table" / "runs"
NOTEBOOK = "03_replay_inspector.ipynb"


def _harness():
    """tests/browser/test_lab.py as a module (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("c2gr_browser_harness", ROOT / "tests" / "browser" / "test_lab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def prepare_notebook(dest: Path, run_dir: Path, reference_run_dir: Path) -> Path:
    """notebook 03 with run_dir / reference_run_dir injected (papermill, nothing executed)."""
    import papermill

    out = dest / NOTEBOOK
    papermill.execute_notebook(str(ROOT / "notebooks" / NOTEBOOK), str(out), prepare_only=True, progress_bar=False,
                               parameters={"run_dir": str(run_dir), "reference_run_dir": str(reference_run_dir),
                                           "progress": False})
    return out


def run_all(driver, url: str, token: str, name: str, timeout: float):
    """Open `name` and run all its cells; fail on any error output (the test's _open_and_run, without
    its "opens clean" assertion: papermill's copy is not the committed file)."""
    h = _harness()
    driver.get(f"{url}/lab/tree/{name}?token={token}&reset")
    h._wait(driver, lambda d: d.execute_script("return !!window.jupyterapp"), 90, "JupyterLab to load")
    h._wait(driver, lambda d: d.execute_script(h.JS_KERNEL_IDLE), 90, f"the kernel of {name} to be ready")
    time.sleep(2)
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    h._wait(driver, lambda d: d.execute_script(h.JS_ALL_RUN), timeout, f"{name} to run")
    failed = driver.find_elements("css selector", ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
    if failed:
        raise RuntimeError(f"{name} failed in the browser: " + "\n".join(e.text[:2000] for e in failed))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=RUNS / "c2gr-s0", help="a finished generative-replay run")
    p.add_argument("--reference", type=Path, default=RUNS / "joint-s0", help="its JointTrain reference run")
    p.add_argument("--task", default="brats-flair", help="the task shown on both tabs")
    p.add_argument("--sample", type=int, default=1, help="stored replay: the pair shown (from 1)")
    p.add_argument("--seed", type=int, default=0, help="live sampling: the seed")
    p.add_argument("--steps", type=int, default=25, help="live sampling: DDIM steps")
    p.add_argument("--pairs", type=int, default=4, help="live sampling: pairs drawn")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder of the two PNGs")
    p.add_argument("--timeout", type=float, default=900, help="s for the notebook to run in the browser")
    a = p.parse_args(argv)

    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    h = _harness()
    root = Path(tempfile.mkdtemp(prefix="c2gr-shots-"))
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        prepare_notebook(root, a.run.resolve(), a.reference.resolve())
        with h.lab_server(root) as (url, token), h.chromium() as driver:
            t0 = time.time()
            run_all(driver, url, token, NOTEBOOK, a.timeout)
            print(f"notebook ran in the browser in {time.time() - t0:.0f} s")
            inspector = h._wait(driver, lambda d: d.find_elements("css selector", ".widget-tab"), 60,
                                "the inspector")[0]
            driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", inspector)
            shown = lambda: [i for i in inspector.find_elements("css selector", "img") if i.is_displayed()]
            h._wait(driver, lambda d: len(shown()) >= 4 and all(h._src(i) for i in shown()[:4]), 60,
                    "the inspector's pictures")

            # 1. stored replay: last round (the notebook leaves it there), the task, the pair
            dropdown = lambda label: Select(next(s for s in inspector.find_elements("css selector", ".widget-dropdown")
                                                 if label in s.text and s.is_displayed())
                                            .find_element("css selector", "select"))
            rounds = dropdown("round")
            rounds.select_by_index(len(rounds.options) - 1)
            time.sleep(1)
            task = dropdown("past task")
            task.select_by_visible_text(next(o.text for o in task.options if o.text.endswith(f": {a.task}")))
            h._wait(driver, lambda d: f"task {a.task}" in inspector.text, 30, "the stored replay of the task")
            handle = next(s for s in inspector.find_elements("css selector", ".widget-slider")
                          if "sample" in s.text).find_element("css selector", ".noUi-handle")
            handle.click()
            now = int(handle.get_attribute("aria-valuenow").split(".")[0])
            for _ in range(abs(a.sample - now)):   # the check cell leaves the slider anywhere
                handle.send_keys(Keys.ARROW_RIGHT if a.sample > now else Keys.ARROW_LEFT)
                time.sleep(0.3)
            h._wait(driver, lambda d: f"pair {a.sample}/" in inspector.text, 30, f"pair {a.sample}")
            time.sleep(2)
            inspector.screenshot(str(a.out / "inspector_stored_replay.png"))
            stored_text = inspector.text

            # 2. live sampling: task, DDIM, steps, seed, pairs; then a click on draw
            next(t for t in inspector.find_elements("css selector", ".lm-TabBar-tab") if "live" in t.text).click()
            time.sleep(1)
            live_task = dropdown("task")
            live_task.select_by_visible_text(next(o.text for o in live_task.options if o.text.endswith(f": {a.task}")))
            dropdown("sampler").select_by_visible_text("ddim")
            for label, value in (("steps", a.steps), ("seed", a.seed), ("pairs", a.pairs)):
                box = next(s for s in inspector.find_elements("css selector", ".widget-text")
                           if label in s.text and s.is_displayed()).find_element("css selector", "input")
                box.send_keys(Keys.CONTROL, "a")
                box.send_keys(str(value), Keys.ENTER)
            time.sleep(1)
            next(b for b in inspector.find_elements("css selector", "button") if b.text.strip() == "draw").click()
            want = f"drawn for {a.task} (ddim, {a.steps} steps, seed {a.seed})"
            h._wait(driver, lambda d: want in inspector.text.replace("\n", " ") and "correspondence DSC" in inspector.text
                    and f"over the {a.pairs} pairs" in inspector.text, 300, "the live draw")
            time.sleep(2)
            inspector.screenshot(str(a.out / "inspector_live_sampling.png"))
            live_text = inspector.text
        print("stored replay tab:\n  " + "\n  ".join(l for l in stored_text.splitlines() if "round" in l or "DSC" in l))
        print("live sampling tab:\n  " + "\n  ".join(l for l in live_text.splitlines() if "drawn for" in l or "DSC" in l))
        print(f"wrote {a.out / 'inspector_stored_replay.png'} and {a.out / 'inspector_live_sampling.png'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
