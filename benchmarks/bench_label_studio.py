"""Time "label one, pre-annotate the rest" in a real Label Studio: from saving the annotation to
predictions on every other task.

Starts a Label Studio (SQLite in a temporary folder, tests/serving/label_studio_harness.py) and a
real `lfm-serve` on an export, makes a brush-labels project through Label Studio's API, imports
`--tasks` + 1 synthetic tiles, connects the backend, annotates the first tile with its mask, then
asks Label Studio for predictions ("Retrieve predictions", what a user clicks in the Data
Manager) as soon as the backend holds the set, and waits until every other task holds a
prediction of the new model version. Reported, per round (`--rounds`, a new project each): the
annotation's save plus the webhook (Label Studio posts it; the backend fetches the image, checks
and encodes the set), the retrieval (Label Studio sends the tasks to /predict, the backend
fetches each image and segments it), and the two together.

    python benchmarks/bench_label_studio.py --artifacts artifacts/deepglobe --tasks 20 --threads 2

`--screenshot docs/images/label-studio.png` also saves Label Studio's labelling page of a
pre-annotated task (headless Chromium through Selenium).

Results: `<out>.json` and `<out>.md` (default `benchmarks/results/label_studio`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ray import _machine  # noqa: E402

from tests.serving import RunningService, png_bytes  # noqa: E402
from tests.serving.label_studio_harness import (PASSWORD, USER, LabelStudio, brush_result,  # noqa: E402
                                                wait_for_support_set)


def tiles(n: int, size: int) -> list[tuple[bytes, np.ndarray]]:
    """n synthetic deepglobe-style tiles of one class (PNG bytes) and their {0, 1} masks."""
    from lfm_deploy.data.synthetic import synthetic_pair

    out = []
    for i in range(n):
        image, mask = synthetic_pair(size, 21, 0, i)
        out.append((png_bytes(image), (np.asarray(mask) > 0).astype(np.uint8)))
    return out


def one_round(studio: LabelStudio, service_url: str, data, round_index: int) -> dict:
    project = studio.project(f"bench {round_index}")
    tasks = studio.import_images(project, [image for image, _ in data])
    resp = studio.connect(project, service_url + "/label-studio")
    assert resp.status_code == 201, resp.text
    start = time.perf_counter()
    resp = studio.annotate(tasks[0], [brush_result(data[0][1])])
    assert resp.status_code == 201, resp.text
    saved = time.perf_counter()
    wait_for_support_set(service_url + "/label-studio", project)
    learned = time.perf_counter()
    studio.retrieve_predictions(project)
    waiting = set(tasks[1:])
    while waiting:
        for task in sorted(waiting):
            predictions = [p for p in studio.predictions(task) if "support" in p.get("model_version", "")]
            if predictions and predictions[-1]["result"]:
                waiting.discard(task)
        if waiting:
            time.sleep(0.2)
    done = time.perf_counter()
    return {"project": project, "tasks": len(tasks) - 1, "save_s": learned - start, "request_s": saved - start,
            "predict_s": done - learned, "total_s": done - start}


def screenshot(studio: LabelStudio, project: int, task: int, path: Path) -> None:
    """Label Studio's labelling page of `task`, logged in, in headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(studio.url + "/user/login/")
        driver.find_element(By.NAME, "email").send_keys(USER)
        driver.find_element(By.NAME, "password").send_keys(PASSWORD + "\n")
        WebDriverWait(driver, 60).until(lambda d: "/user/login" not in d.current_url)
        driver.get(f"{studio.url}/projects/{project}/data?tab=0&task={task}")
        WebDriverWait(driver, 120).until(ec.presence_of_element_located((By.CSS_SELECTOR, "canvas")))
        time.sleep(5)  # the brush layer is drawn after the image loads
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True, help="an lfm-export directory (1-shot)")
    parser.add_argument("--tasks", type=int, default=20, help="tasks to pre-annotate (one more is annotated)")
    parser.add_argument("--size", type=int, default=400, help="side of the synthetic tiles, in pixels")
    parser.add_argument("--threads", type=int, default=2, help="lfm-serve --threads")
    parser.add_argument("--rounds", type=int, default=3, help="projects timed (a new one each)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save the labelling page of a predicted task")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_studio",
                        help="results prefix (.json and .md are written)")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.rounds < 1:
        parser.error("--tasks and --rounds must be at least 1")

    data = tiles(args.tasks + 1, args.size)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-label-studio-") as tmp:
        root = Path(tmp)
        studio = LabelStudio(root)
        try:
            service = RunningService(args.artifacts, root / "serve.log", ["--threads", str(args.threads)],
                                     env={"LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token})
            try:
                rounds = []
                for i in range(args.rounds):
                    rounds.append(one_round(studio, service.url, data, i))
                    print(f"round {i + 1}: save {rounds[-1]['save_s']:.2f} s, predictions for {args.tasks} tasks "
                          f"{rounds[-1]['predict_s']:.2f} s, total {rounds[-1]['total_s']:.2f} s", flush=True)
                if args.screenshot:
                    project = rounds[-1]["project"]
                    tasks = studio.api.get("/api/tasks", params={"project": project}).json()["tasks"]
                    second = sorted(tasks, key=lambda t: t["data"]["image"].rsplit("-", 1)[-1])[1]["id"]
                    screenshot(studio, project, second, args.screenshot)
                    print(f"screenshot: {args.screenshot}")
            finally:
                service.stop()
        finally:
            studio.stop()

    def median(key):
        return statistics.median(r[key] for r in rounds)

    result = {"machine": _machine(), "artifacts": str(args.artifacts), "tasks": args.tasks, "size": args.size,
              "threads": args.threads, "load_average": [load_before, os.getloadavg()[0]], "rounds": rounds, "median_save_s": median("save_s"),
              "median_predict_s": median("predict_s"), "median_total_s": median("total_s")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cpu = result["machine"].get("cpu", "?") if isinstance(result["machine"], dict) else result["machine"]
    lines = [f"# Label Studio: annotation saved -> predictions on {args.tasks} tasks", "",
             f"CPU: {cpu} ({os.cpu_count()} CPUs, load average {load_before:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after); lfm-serve --threads {args.threads}; {args.size} px tiles; "
             f"{args.rounds} rounds (median).", "",
             "| step | median s |", "|---|---|",
             f"| save the annotation, webhook (fetch, check, encode the set) | {result['median_save_s']:.2f} |",
             f"| predictions for {args.tasks} tasks (Retrieve predictions) | {result['median_predict_s']:.2f} |",
             f"| **total** | **{result['median_total_s']:.2f}** |", "",
             f"Command: `python benchmarks/bench_label_studio.py --artifacts {args.artifacts} --tasks {args.tasks} "
             f"--threads {args.threads} --rounds {args.rounds}`", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
