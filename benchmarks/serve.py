"""Time from `difflab serve` to the first image, and a screenshot of the page (issue #18, "web UI").

    python benchmarks/serve.py                       # serves /work/runs/demo and /work/runs/fashion_ddpm_cond
    python benchmarks/serve.py --runs runs/a runs/b --no-write

Starts ``python -m difflab serve RUN ...`` as a user would (a fresh process: Python, torch, gradio and
the runs are loaded), then measures

- the time until the page answers (HTTP 200 on ``/``);
- the time until the first image arrives through the API (``gradio_client``, the run's defaults,
  16 images), and a second, warm request;
- the same first request from a real headless Chromium (selenium): Generate clicked, the grid shown;
  the page is then photographed into ``docs/serve.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, load_note, stamp, write_section

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1300",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc.poll() is not None:
            raise SystemExit(f"difflab serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def browser_first_image(url: str, shot: Path) -> float:
    """Seconds from clicking Generate to the grid on the page; the page is photographed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="difflab-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(f)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(url)
        WebDriverWait(d, 120).until(lambda d: d.find_elements(By.ID, "generate"))
        for elem_id, value in (("opt-label", "7"), ("opt-guidance", "3")):  # a class and guidance, for the picture
            fields = d.find_elements(By.CSS_SELECTOR, f"#{elem_id} input")
            if fields and fields[0].is_displayed():
                fields[0].click()
                fields[0].send_keys(Keys.CONTROL, "a")  # one call per chord: send_keys holds CONTROL to its end
                fields[0].send_keys(Keys.BACKSPACE)
                fields[0].send_keys(value)
                fields[0].send_keys(Keys.ENTER)
                fields[0].send_keys(Keys.TAB)
        t0 = time.perf_counter()
        d.find_element(By.ID, "generate").click()
        WebDriverWait(d, 300, poll_frequency=0.1).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid img"))
        WebDriverWait(d, 60).until(lambda d: "NFE" in d.find_element(By.ID, "info").text)
        seconds = time.perf_counter() - t0
        time.sleep(0.5)
        shot.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(shot))
        return seconds
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=["/work/runs/fashion_ddpm_cond", "/work/runs/demo"])
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md or docs/")
    args = ap.parse_args()
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "difflab", "serve", *args.runs, "--port", str(port)], env=env)
    try:
        wait_http(url, proc)
        t_page = time.perf_counter() - t0
        client = Client(url, verbose=False)
        client.predict(args.runs[0], "0", 16, api_name="/generate")
        t_first = time.perf_counter() - t0
        t1 = time.perf_counter()
        client.predict(args.runs[0], "1", 16, api_name="/generate")
        t_warm = time.perf_counter() - t1
        shot = ROOT / "docs" / "serve.png" if not args.no_write else Path(tempfile.mkdtemp()) / "serve.png"
        t_browser = browser_first_image(url, shot)
    finally:
        proc.terminate()
        proc.wait(30)
    rows = [
        ("`difflab serve` started -> page answers (HTTP 200)", t_page),
        ("`difflab serve` started -> first image through the API (16 images, the run's defaults)", t_first),
        ("a second API request (warm)", t_warm),
        ("page loaded, label 7 and guidance 3 set, Generate clicked -> grid shown in headless Chromium", t_browser),
    ]
    md = "\n".join(
        [
            f"Runs served: {', '.join(f'`{Path(r).name}`' for r in args.runs)} (the shared trained runs of "
            "configs/fashion_ddpm_cond.toml and the digits demo); the first is sampled with its [sample] solver and "
            "steps (DPM-Solver++(2M), 20 steps), 16 images. The server is a fresh `python -m difflab serve` process: "
            "the times include starting Python, importing torch and gradio and loading the runs' checkpoints. The "
            "browser's request is guided (two network evaluations per step, batched), the API's are not.",
            "",
            "| what | seconds |",
            "| --- | --- |",
            *(f"| {name} | {s:.1f} |" for name, s in rows),
            "",
            load_note(load0, os.getloadavg()),
            "",
            "![the difflab serve page](docs/serve.png)",
        ]
    )
    print(md)
    print(f"screenshot: {shot}")
    if not args.no_write:
        write_section(
            "serve",
            "## Web UI: time from `difflab serve` to the first image\n\n"
            + stamp("python benchmarks/serve.py")
            + "\n"
            + md,
        )


if __name__ == "__main__":
    main()
