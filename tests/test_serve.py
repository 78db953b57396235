"""difflab serve: the checks of a request (difflab.serve.backend), the Gradio page driven in a real
headless Chromium by selenium (pick a solver and steps, Generate, an image; another seed, another
image; bad input answered in the page), the /generate API from gradio_client, the bounded queue's
"full" answer, and the command line's answers to a path that is not a run and a port in use."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_module
from difflab import images
from difflab.cli import main
from difflab.serve import Limits, ServeError, generate, load_runs
from difflab.train import Model, Trainer, load_config, load_run

TINY = [
    "data.name='digits'",
    "data.limit=64",
    "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[4], head_channels=8, "
    "groups=4, num_classes=true}",
    "train.batch_size=8",
    "train.steps=2",
    "train.warmup=1",
    "train.sample_every=0",
    "train.ckpt_every=2",
    "train.threads=1",
    "sample.solver='ddim'",
    "sample.steps=4",
    "sample.n=4",
]
LIMITS = Limits(max_n=8, max_steps=12, queue=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    Trainer(load_config(None, [*TINY, f"train.out='{out}'"]), progress=False, log=lambda s: None).fit()
    return out


@pytest.fixture(scope="module")
def runs(run_dir):
    return load_runs([run_dir])


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a.convert("L")), np.asarray(b.convert("L")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the backend: requests checked, answered by the library's own generate -------------------
def test_an_answer_is_the_runs_own_generate(runs, run_dir):
    name = str(run_dir)
    res = generate(runs, LIMITS, name, 3, "5", {"solver": "unipc", "steps": 6, "label": "7", "guidance": 1.5})
    x = load_run(run_dir).generate(3, 5, solver="unipc", steps=6, label=7, guidance=1.5)
    assert same(res.grid, images.grid_image(x, scale=12))
    assert res.nfe == 6 and res.n == 3 and res.strip is not None
    assert res.strip.size[1] == (3 * (8 + 1) + 1) * 12  # one row per image
    other = generate(runs, LIMITS, name, 3, "6", {"solver": "unipc", "steps": 6})
    assert not same(other.grid, res.grid)


@pytest.mark.parametrize(
    "n,seed,options,match",
    [
        (4, "0", {"steps": 0}, r"steps must be between 1 and 12 \(the server's --max-steps\), got 0"),
        (4, "0", {"steps": 13}, r"steps must be between 1 and 12"),
        (4, "0", {"steps": 2.5}, r"steps must be an integer, got 2.5"),
        (9, "0", {}, r"n \(number of images\) must be between 1 and 8 \(the server's --max-n\), got 9"),
        (0, "0", {}, r"n \(number of images\) must be between 1 and 8"),
        (4, "1.5", {}, r"seed must be an integer, got '1.5'"),
        (4, "abc", {}, r"seed must be an integer, got 'abc'"),
        (4, "-1", {}, r"seed must be between 0 and"),
        (4, "0", {"solver": "nope"}, r"solver 'nope' is not one of .*ddim"),
        (4, "0", {"label": "10"}, r"label must be between 0 and 9, got 10"),
        (4, "0", {"guidance": 2.0}, r"guidance needs a label or a prompt"),
        (4, "0", {"grid": "../../etc"}, r"grid '../../etc' is not one of"),
        (
            4,
            "0",
            {"temperature": 0.5},
            r"takes no temperature; its options: (\w+, )*grid, guidance, (\w+, )*label, (\w+, )*solver, steps",
        ),
    ],
)
def test_bad_requests_are_refused_by_name(runs, run_dir, n, seed, options, match):
    with pytest.raises(ServeError, match=match):
        generate(runs, LIMITS, str(run_dir), n, seed, options)


def test_only_the_runs_given_at_start_are_served(runs, run_dir, tmp_path):
    with pytest.raises(ServeError, match=r"run '/etc' is not served here; served runs: "):
        generate(runs, LIMITS, "/etc", 1, "0", {})
    # a generic option is a number, a word or a tuple -- never a path
    from difflab.serve.backend import parse_literal

    assert parse_literal("linear", "x") == "linear" and parse_literal("(0, 2)", "x") == (0, 2)
    with pytest.raises(ServeError, match="is not a number"):
        parse_literal("/etc/passwd", "x")


def test_a_path_that_is_not_a_run_lists_what_is_there(run_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ServeError, match=r"is not a difflab run .* it holds notes.txt"):
        load_runs([tmp_path])
    with pytest.raises(ServeError, match=rf"is not a run .* but holds runs: {run_dir}"):
        load_runs([run_dir.parent])
    assert main(["serve", str(run_dir.parent), "--port", str(free_port())]) == 2
    assert f"holds runs: {run_dir}" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_a_port_in_use_is_named(run_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(run_dir), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


# --- the server: gradio_client, the queue ------------------------------------------------------
@pytest.fixture(scope="module")
def server(runs):
    require_module("gradio", "ui")
    from difflab.serve.app import launch

    port = free_port()
    app = launch(runs, LIMITS, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_the_api_endpoint_answers_gradio_client(server, run_dir):
    gc = require_module("gradio_client", "ui")
    client = gc.Client(server, verbose=False)
    assert "/generate" in client.view_api(return_format="dict")["named_endpoints"]
    grid, strip, info = client.predict(
        str(run_dir), "3", 2, solver="dpmpp_2m", steps=5, label="4", api_name="/generate"
    )
    x = load_run(run_dir).generate(2, 3, solver="dpmpp_2m", steps=5, label=4)
    assert same(Image.open(grid), images.grid_image(x, scale=12))
    assert Path(strip).is_file() and "NFE 5" in info
    with pytest.raises(gc.exceptions.AppError, match=r"steps must be between 1 and 12"):
        client.predict(str(run_dir), "3", 2, solver="dpmpp_2m", steps=0, api_name="/generate")


class Gate(Model):
    """A model whose generate waits for a gate: to hold the server's one worker."""

    kind = "gate"
    options: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def generate(self, n, seed=0, *, batch_size=256, progress=False, callback=None):
        self.entered.set()
        assert self.release.wait(60)
        return torch.zeros(n, 1, 4, 4)


def test_a_full_queue_answers_at_once():
    require_module("gradio", "ui")
    gc = require_module("gradio_client", "ui")
    from difflab.serve.app import launch

    gate = Gate()
    port = free_port()
    app = launch(load_runs([("gate", gate)]), Limits(queue=1, concurrency=1), port=port, block=False, quiet=True)
    try:
        client = gc.Client(f"http://127.0.0.1:{port}/", verbose=False)
        running = client.submit("gate", "0", 1, api_name="/generate")
        assert gate.entered.wait(60)  # the worker is busy
        waiting = client.submit("gate", "1", 1, api_name="/generate")  # the queue's one place
        time.sleep(1.0)
        t0 = time.perf_counter()
        with pytest.raises(Exception, match="Queue is full"):
            client.predict("gate", "2", 1, api_name="/generate")
        assert time.perf_counter() - t0 < 10  # answered, not kept waiting
        gate.release.set()
        assert Path(running.result(timeout=60)[0]).is_file() and Path(waiting.result(timeout=60)[0]).is_file()
    finally:
        gate.release.set()
        app.close()


# --- a real browser ------------------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    webdriver = require_module("selenium.webdriver", "dev")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromium-driver are missing under CI (.ci/run installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="difflab-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1500",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _set(driver, elem_id: str, value: str, enter: bool = False) -> None:
    """Type ``value`` into the field of the widget ``elem_id`` (as a person would: select all, type)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    el = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    el.click()
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.BACKSPACE)
    el.send_keys(value)
    el.send_keys(Keys.ENTER if enter else Keys.TAB)


def _grid_bytes(driver, after: str | None, timeout: float = 120) -> tuple[str, bytes]:
    """The src of the samples image once it differs from ``after``, and its PNG bytes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def src(d):
        imgs = d.find_elements(By.CSS_SELECTOR, "#grid img")
        s = imgs[0].get_attribute("src") if imgs else None
        return s if s and s != after else False

    s = WebDriverWait(driver, timeout, poll_frequency=0.25).until(src)
    with urllib.request.urlopen(s, timeout=30) as r:
        return s, r.read()


def test_the_page_in_a_headless_browser(server, browser, run_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(server)
    WebDriverWait(d, 120).until(lambda d: d.find_elements(By.ID, "generate"))
    assert d.find_element(By.ID, "generate").text == "Generate"
    _set(d, "opt-solver", "unipc", enter=True)
    _set(d, "opt-steps", "6")
    _set(d, "n", "4")
    d.find_element(By.ID, "generate").click()
    src1, png1 = _grid_bytes(d, None)
    img1 = Image.open(io.BytesIO(png1))
    assert img1.size[0] > 100
    WebDriverWait(d, 30).until(lambda d: "NFE 6" in d.find_element(By.ID, "info").text)
    assert "solver unipc" in d.find_element(By.ID, "info").text
    # the page's image is the library's own samples for these settings
    x = load_run(run_dir).generate(4, 0, solver="unipc", steps=6)
    assert same(img1, images.grid_image(x, scale=12))
    shot = tmp_path / "difflab_serve.png"
    d.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    if os.environ.get("DIFFLAB_SCREENSHOT"):
        shutil.copy(shot, os.environ["DIFFLAB_SCREENSHOT"])

    _set(d, "seed", "1")
    d.find_element(By.ID, "generate").click()
    src2, png2 = _grid_bytes(d, src1)
    assert png2 != png1  # another seed, other images

    # bad input is answered in the page, and the page keeps working
    _set(d, "opt-steps", "0")
    d.find_element(By.ID, "generate").click()
    WebDriverWait(d, 60).until(lambda d: "steps must be between 1 and 12" in d.find_element(By.TAG_NAME, "body").text)
    _set(d, "seed", "x1")
    _set(d, "opt-steps", "6")
    d.find_element(By.ID, "generate").click()
    WebDriverWait(d, 60).until(
        lambda d: "seed must be an integer, got 'x1'" in d.find_element(By.TAG_NAME, "body").text
    )
    _set(d, "seed", "0")
    d.find_element(By.ID, "generate").click()
    _, png3 = _grid_bytes(d, src2)
    assert png3 == png1  # the same settings as the first request: the same images
