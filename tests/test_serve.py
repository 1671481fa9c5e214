"""`geotrainr serve`: the HTTP API on LitServe, its limits, its clean stop, and the page in a real browser.

One server (a subprocess on a free port, the tiny country checkpoint) answers the tests in file order;
the last one stops it with SIGTERM.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from geotrainr.cli import main
from test_locate import tiny_checkpoints

requests = pytest.importorskip("requests")
pytest.importorskip("litserve")

from geotrainr.serve import wait_until_healthy  # noqa: E402 - after the skip: it needs litserve

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realphotos" / "osv5m" / "images"
#: the test server's limits, small enough to refuse quickly
MAX_BYTES, MAX_PIXELS, MAX_PHOTOS = 2_000_000, 4_000_000, 3


def real_photos(n: int) -> list[Path]:
    files = sorted(REAL.glob("*.jpg"))[:n] if REAL.is_dir() else []
    if len(files) < n:
        pytest.skip(f"the real photos are not at {REAL}")
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, *extra: str, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(cwd / "server.log", "w")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "geotrainr.cli", "serve", str(model), "--port", str(port), "--device", "cpu",
         "--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS), "--max-photos", str(MAX_PHOTOS), *extra],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    proc.log = cwd / "server.log"
    url = f"http://127.0.0.1:{port}"
    if wait_until_healthy(url, 240, proc):
        return proc, url
    if proc.poll() is not None:
        raise AssertionError(f"server exited with {proc.returncode}:\n{proc.log.read_text()}")
    stop(proc)
    raise AssertionError("server did not become healthy in 240 s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoints(tmp_path_factory)["country"]


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    proc, url = start_server(ckpt, cwd=tmp_path_factory.mktemp("serve"))
    yield proc, url
    stop(proc)


def locate_json(ckpt: Path, names: list[str], folder: Path, capsys, *extra: str) -> list[dict]:
    """What ``geotrainr locate --format json`` prints for photos named relative to ``folder``."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        capsys.readouterr()
        assert main(["locate", str(ckpt), *names, "--format", "json", "--device", "cpu", *extra]) == 0
        return json.loads(capsys.readouterr().out)
    finally:
        os.chdir(cwd)


def post(url: str, files: list[tuple[str, bytes]], **kwargs) -> requests.Response:
    return requests.post(f"{url}/predict", files=[("file", (n, d, "image/jpeg")) for n, d in files], timeout=60, **kwargs)


# --- the API --------------------------------------------------------------------------------------


def test_predict_answers_what_locate_writes(server, ckpt, capsys):
    _, url = server
    photos = real_photos(3)
    expected = locate_json(ckpt, [p.name for p in photos], REAL, capsys)
    for p, want in zip(photos, expected):
        got = post(url, [(p.name, p.read_bytes())])
        assert got.status_code == 200, got.text
        assert got.json() == want
    raw = requests.post(f"{url}/predict", params={"name": photos[0].name}, data=photos[0].read_bytes(),
                        headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200 and raw.json() == expected[0]
    top2 = post(url, [(photos[1].name, photos[1].read_bytes())], params={"top_k": 2}).json()
    assert top2["top_k"] == expected[1]["top_k"][:2] and top2["probability"] == expected[1]["probability"]


def test_views_of_one_place_combine_as_locate_group_by(server, ckpt, capsys, tmp_path):
    _, url = server
    a, b = real_photos(2)
    shutil.copy(a, tmp_path / "pano_0.jpg")
    shutil.copy(b, tmp_path / "pano_90.jpg")
    (want,) = locate_json(ckpt, ["pano_0.jpg", "pano_90.jpg"], tmp_path, capsys, "--group-by", "auto")
    got = post(url, [("pano_0.jpg", a.read_bytes()), ("pano_90.jpg", b.read_bytes())])
    assert got.status_code == 200, got.text
    assert got.json() == want and want["views"] == 2


def test_card_and_health(server, ckpt):
    _, url = server
    health = requests.get(f"{url}/health", timeout=10)
    assert health.status_code == 200
    card = requests.get(f"{url}/card", timeout=10).json()
    assert card["task"] == "country" and card["backbone"] == "test_efficientnet"
    assert card["classes"] == sorted(card["classes"]) and len(card["classes"]) == 6
    assert card["input"]["image_size"] == 64
    assert card["limits"] == {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, "max_photos": MAX_PHOTOS}
    assert card["data"]["images"]["train"] > 0  # the training data, read from the checkpoint's record
    assert "# geotrainr country classification model" in card["card"]


def test_explain_answers_a_gradcam_overlay(server):
    _, url = server
    (p,) = real_photos(1)
    r = requests.post(f"{url}/explain", files={"file": (p.name, p.read_bytes(), "image/jpeg")}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(r.content))
    assert overlay.width == Image.open(p).width  # drawn on the photo at full size, caption strip below
    bad = requests.post(f"{url}/explain", params={"target": "ZZ"}, files={"file": (p.name, p.read_bytes())}, timeout=60)
    assert bad.status_code == 422 and "ZZ" in bad.json()["error"]


def hostile_uploads(tmp_path: Path) -> dict[str, tuple[dict, int, str]]:
    """name -> (requests.post keyword arguments, status, a word the error must hold)."""
    (p,) = real_photos(1)
    good = p.read_bytes()
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")  # 400 megapixels in ~50 kB
    mid = io.BytesIO()
    Image.new("RGB", (2100, 2000), (20, 90, 160)).save(mid, "PNG")  # 4.2 MP: over this server's --max-pixels
    form = lambda name, data: {"files": {"file": (name, data, "image/jpeg")}}  # noqa: E731
    return {
        "not an image": (form("notes.jpg", b"these are not the pixels you are looking for" * 20), 415, "not an image"),
        "truncated": (form("cut.jpg", good[: len(good) // 3]), 422, "cut.jpg"),
        "bomb": (form("bomb.png", bomb.getvalue()), 413, "pixels"),
        "over max pixels": (form("big.png", mid.getvalue()), 413, "2100 x 2000"),
        "100 MB": ({"data": b"\0" * 100_000_000, "headers": {"Content-Type": "image/jpeg"}}, 413, "bytes"),
        "100 MB without length": ({"data": (b"\0" * 1_000_000 for _ in range(100)), "headers": {"Content-Type": "image/jpeg"}},
                                  413, "bytes"),
        "wrong content type": ({"data": b'{"photo": 1}', "headers": {"Content-Type": "application/json"}}, 415, "content type"),
        "empty body": ({"data": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty"),
        "empty photo": (form("zero.jpg", b""), 400, "empty"),
        "no file field": ({"files": {"note": (None, "hello")}}, 400, "file"),
        "too many photos": ({"files": [("file", (f"v{i}.jpg", good, "image/jpeg")) for i in range(MAX_PHOTOS + 1)]},
                            413, "photos"),
        "far too many photos": ({"files": [("file", (f"v{i}.jpg", b"x", "image/jpeg")) for i in range(3 * MAX_PHOTOS)]},
                                413, "photos"),
        "malformed form": ({"data": b"--xyz\r\nnonsense", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}},
                           400, "form"),
        "bad top_k": ({**form("a.jpg", good), "params": {"top_k": "many"}}, 400, "top_k"),
    }


def refused(url: str, kwargs: dict) -> tuple[int, dict | None]:
    """(status, JSON) of a hostile request; (0, None) where the server closed the connection first."""
    try:
        r = requests.post(f"{url}/predict", timeout=60, **kwargs)
    except requests.ConnectionError:
        return 0, None
    return r.status_code, r.json()


def test_bad_uploads_get_one_sentence_and_a_4xx(server, tmp_path):
    _, url = server
    for name, (kwargs, status, word) in hostile_uploads(tmp_path).items():
        code, body = refused(url, kwargs)
        assert code == status, (name, code, body)
        assert set(body) == {"error"} and word.lower() in body["error"].lower(), (name, body)
        assert body["error"].endswith(".") and "\n" not in body["error"] and "Traceback" not in body["error"], name


def test_hostile_uploads_never_disturb_other_clients(server, ckpt, capsys, tmp_path):
    """Good and hostile requests at once, batched together: every good one gets its own right answer."""
    _, url = server
    photos = real_photos(6)
    expected = {r["image"]: r for r in locate_json(ckpt, [p.name for p in photos], REAL, capsys)}
    hostile = [(kwargs, status) for name, (kwargs, status, _) in hostile_uploads(tmp_path).items() if "100 MB" not in name]
    jobs = [("good", p) for p in photos] * 3 + [("bad", h) for h in hostile]
    jobs = [jobs[i] for i in sorted(range(len(jobs)), key=lambda i: (i * 7) % len(jobs))]  # mixed, deterministic

    def send(job):
        kind, what = job
        if kind == "good":
            r = post(url, [(what.name, what.read_bytes())])
            return r.status_code == 200 and r.json() == expected[what.name]
        kwargs, status = what
        return refused(url, kwargs)[0] == status

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    assert all(results), [j[0] for j, ok in zip(jobs, results) if not ok]
    assert requests.get(f"{url}/health", timeout=10).status_code == 200


# --- the page in a real browser ------------------------------------------------------------------


def chromium():
    """A headless Chromium driven by selenium, or a skip saying why none could be started."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no Chromium and chromedriver on this machine (CI installs Debian's chromium and chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"geotrainr-chromium-{os.getpid()}-{time.monotonic_ns()}"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    except Exception as e:  # noqa: BLE001 - any failure to start the browser is a reason to skip, reported
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium could not be started: {str(e).splitlines()[0]}")
    return driver, profile


def test_page_in_a_real_browser(server, ckpt, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = server
    photo = real_photos(1)[0]
    (want,) = locate_json(ckpt, [photo.name], REAL, capsys)
    driver, profile = chromium()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "countries" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(EC.visibility_of_element_located((By.ID, "result")))
        country = driver.find_element(By.ID, "country")
        assert country.get_attribute("data-code") == want["country"]
        assert country.text.startswith(want["country"])
        assert float(driver.find_element(By.ID, "probability").text) == want["probability"]
        rows = driver.find_elements(By.CSS_SELECTOR, "#topk tbody tr")
        assert [r.get_attribute("data-country") for r in rows] == [t["country"] for t in want["top_k"]]
        assert [float(r.get_attribute("data-probability")) for r in rows] == [t["probability"] for t in want["top_k"]]
        assert want["nearest_place"] in driver.find_element(By.ID, "place").text
        assert driver.find_elements(By.CSS_SELECTOR, "#map #guess-marker")  # the point is on the map
        driver.find_element(By.ID, "explain").click()
        wait.until(EC.visibility_of_element_located((By.ID, "cam")))
        wait.until(lambda d: d.execute_script("const c = document.getElementById('cam'); return c.complete && c.naturalWidth"))
        assert driver.execute_script("return document.getElementById('cam').naturalWidth") >= 512
        failed = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] if hasattr(driver, "get_log") else []
        assert not failed, failed
        shot = os.environ.get("GEOTRAINR_SERVE_SCREENSHOT")
        if shot:  # docs/serve.png: GEOTRAINR_SERVE_SCREENSHOT=docs/serve.png pytest tests/test_serve.py -k browser
            driver.execute_script("document.getElementById('cam').hidden = true")
            time.sleep(0.5)
            driver.save_screenshot(shot)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --- stopping ------------------------------------------------------------------------------------


def test_sigterm_answers_what_is_in_flight_and_exits_0(server, ckpt, capsys):
    """Last test of the module: it stops the shared server."""
    proc, url = server
    photos = real_photos(4)
    expected = {r["image"]: r for r in locate_json(ckpt, [p.name for p in photos], REAL, capsys)}

    def send(p: Path):
        try:
            r = post(url, [(p.name, p.read_bytes())])
        except requests.ConnectionError:
            return "refused"
        return "answered" if r.status_code == 200 and r.json() == expected[p.name] else f"wrong: {r.status_code} {r.text}"

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, photos[i % 4]) for i in range(16)]
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        outcomes = [f.result() for f in futures]
    assert proc.wait(90) == 0, proc.log.read_text()
    assert set(outcomes) <= {"answered", "refused"}, outcomes
    assert "answered" in outcomes
    log = proc.log.read_text()
    assert "Traceback" not in log, log


# --- settings and start-up errors ----------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--host", "localhost"], "--host localhost"),
    (["--port", "80"], "--port 80"),
    (["--workers-per-device", "0"], "--workers-per-device"),
    (["--max-bytes", "0"], "--max-bytes"),
])
def test_bad_settings_are_one_line_and_exit_2(ckpt, capsys, args, message):
    assert main(["serve", str(ckpt), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geotrainr serve: error: ") and message in err and "\n" not in err


def test_a_model_that_does_not_load_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "nothing.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["serve", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("geotrainr serve: error: ")


def test_check_photo_reads_headers_only():
    from geotrainr.serve import Limits, Refused, check_photo

    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, "JPEG")
    assert check_photo("a.jpg", buf.getvalue(), Limits()) == (300, 200)
    with pytest.raises(Refused) as e:
        check_photo("a.jpg", buf.getvalue(), Limits(max_pixels=59_999))
    assert e.value.status == 413
