"""Load on ``geotrainr serve``: concurrent clients, real photos mixed with hostile uploads, batching on and off, torch and onnxruntime.

Each arm starts ``geotrainr serve MODEL --device cpu --max-batch-size B [--runtime onnx]`` (a fresh server
process on a free port) and sends ``--requests`` (200) requests from ``--clients`` (16) threads, each with its own
HTTP session. Every ``--hostile-every``-th request (10th) is a hostile upload, in turn: not an image, a
truncated JPEG, a decompression bomb, a 100 MB body, an empty body. The rest are the real photos, one per
request. Every good answer is compared with what ``Locator.locate`` (the code behind ``geotrainr
locate``) gives for that photo in this process with the arm's runtime, and every hostile one must be its 4xx. Reported per arm:
requests answered, wrong answers, crashes (a server that stopped answering), p50/p95 latency of the
photo requests, and their throughput (photos located per second of wall time). Arms alternate per
round, the first arm rotating (batched, unbatched, onnx; unbatched, onnx, batched; ...). Arms: torch with
``--max-batch-size 1`` (unbatched), torch with ``--batch`` (8, batched), and onnxruntime with the same
``--batch`` serving the model exported with ``geotrainr export --format onnx`` (same weights). The ratios
batched / unbatched and onnx / batched are per round, then the median.

    python benchmarks/serve_load.py --photos ../shared/realphotos/osv5m/images
    python benchmarks/serve_load.py --quick
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, append_result, base_parser, interleave, median, photo_files, print_table, rounds, verdict, workdir  # noqa: E402

GOAL = 1.5  # torch batched / torch unbatched photos/s
DEFAULT_PHOTOS = REPO.parent / "shared" / "realphotos" / "osv5m" / "images"


def hostile_kinds(good: bytes) -> list[tuple[str, dict, int]]:
    """(name, requests.post keyword arguments, the 4xx it must get)."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")
    form = lambda name, data: {"files": {"file": (name, data, "image/jpeg")}}  # noqa: E731
    return [
        ("not an image", form("notes.jpg", b"not a photo at all " * 50), 415),
        ("truncated", form("cut.jpg", good[: len(good) // 3]), 422),
        ("bomb", form("bomb.png", bomb.getvalue()), 413),
        ("100 MB", {"data": b"\0" * 100_000_000, "headers": {"Content-Type": "image/jpeg"}}, 413),
        ("empty", {"data": b"", "headers": {"Content-Type": "image/jpeg"}}, 400),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, batch: int, timeout_s: float, extra: list[str]) -> tuple[subprocess.Popen, str]:
    from geotrainr.serve import wait_until_healthy

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # a file, not a pipe that could fill up
    proc = subprocess.Popen([sys.executable, "-m", "geotrainr.cli", "serve", str(model), "--port", str(port), "--device", "cpu",
                             "--max-batch-size", str(batch), *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    if wait_until_healthy(url, timeout_s, proc):
        return proc, url
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"server not healthy after {timeout_s} s")


def load(url: str, jobs: list, expected: dict, clients: int) -> dict:
    """Send the jobs from ``clients`` threads; latency, status and correctness of each."""
    import requests

    local = threading.local()

    def send(job):
        kind, name, payload, want = job
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        t0 = time.perf_counter()
        try:
            if kind == "photo":
                r = session.post(f"{url}/predict", files={"file": (name, payload, "image/jpeg")}, timeout=120)
            else:
                r = session.post(f"{url}/predict", timeout=120, **payload)
        except requests.ConnectionError as e:
            local.s = None
            return kind, name, time.perf_counter() - t0, 0, f"connection error: {e}"
        dt = time.perf_counter() - t0
        if kind == "photo":
            ok = r.status_code == 200 and r.json() == expected[name]
            return kind, name, dt, r.status_code, None if ok else f"wrong answer ({r.status_code}): {r.text[:200]}"
        ok = r.status_code == want and set(r.json()) == {"error"}
        return kind, name, dt, r.status_code, None if ok else f"{name}: got {r.status_code} {r.text[:200]}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(send, jobs))
    wall = time.perf_counter() - t0
    photo = [o for o in out if o[0] == "photo"]
    lat = sorted(o[2] for o in photo)
    pct = lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] if lat else float("nan")  # noqa: E731
    problems = [o[4] for o in out if o[4]]
    return {"requests": len(out), "answered": sum(1 for o in out if o[3] > 0), "photos": len(photo),
            "hostile": len(out) - len(photo), "wrong": len(problems), "problems": problems[:5],
            "p50_ms": 1000 * pct(0.5), "p95_ms": 1000 * pct(0.95), "wall_s": wall, "photos_per_s": len(photo) / wall}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="a model geotrainr serve takes (default: an untrained "
                   "country model with the country config's backbone and input, tf_efficientnet_lite0 at 128 px); "
                   "the onnx arm serves it exported with --format onnx (or as it is, a folder with model.onnx)")
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="real photos to send")
    p.add_argument("--requests", type=int, default=None, help="requests per arm and round (default 200, 40 with --quick)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--hostile-every", type=int, default=10, help="every Nth request is a hostile upload")
    p.add_argument("--batch", type=int, default=8, help="--max-batch-size of the batched arm (the other has 1)")
    p.add_argument("--serve-arg", action="append", default=[], help="one more option for both servers, e.g. --serve-arg=--batch-timeout=0.02")
    args = p.parse_args()
    q = args.quick
    n = args.requests or (40 if q else 200)
    files = photo_files(args.photos)
    scratch = workdir(args, "serve_load")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from locate import demo_files, write_checkpoint

    from geotrainr.hub import export_model
    from geotrainr.locator import Locator

    ckpt = args.checkpoint
    if ckpt is None:
        _, countries = demo_files(1)
        backbone = "test_efficientnet" if q else "tf_efficientnet_lite0"
        ckpt = write_checkpoint(scratch / "model.ckpt", backbone, "lite0-pypi" if not q else None, 64 if q else 128, countries)
    exported = ckpt if (Path(ckpt) / "model.onnx").is_file() else scratch / "export"
    if exported != ckpt:
        t0 = time.perf_counter()
        export_model(ckpt, exported, force=True, format="onnx")
        print(f"exported {exported} (--format onnx) in {time.perf_counter() - t0:.0f} s")
    expected: dict[str, dict[str, dict]] = {}  # runtime -> photo name -> the record locate gives
    for runtime, source in (("torch", ckpt), ("onnx", exported)):
        locator = Locator.load(source, device="cpu", runtime=runtime)
        expected[runtime] = {}
        for f, g in zip(files, locator.locate(files, num_workers=0)):
            g.image = f.name
            expected[runtime][f.name] = g.to_dict()
        del locator
    data = {f.name: f.read_bytes() for f in files}
    hostile = hostile_kinds(data[files[0].name])
    jobs, h = [], 0
    for i in range(n):
        if args.hostile_every and i % args.hostile_every == args.hostile_every - 1:
            name, payload, want = hostile[h % len(hostile)]
            jobs.append(("hostile", name, payload, want))
            h += 1
        else:
            f = files[i % len(files)]
            jobs.append(("photo", f.name, data[f.name], None))
    print(f"{len(jobs)} requests ({h} hostile) from {args.clients} clients; model {ckpt}; {os.cpu_count()} cores")

    arms = {"batched": (ckpt, args.batch, "torch"), "unbatched": (ckpt, 1, "torch"), "onnx": (exported, args.batch, "onnx")}
    results: dict[str, list[dict]] = {name: [] for name in arms}

    def arm(name: str):
        model, batch, runtime = arms[name]

        def run(r: int) -> float:
            proc, url = start(model, batch, 300, [*args.serve_arg, "--runtime", runtime])
            try:
                load(url, jobs[: min(len(jobs), 2 * args.clients)], expected[runtime], args.clients)  # warm-up
                res = load(url, jobs, expected[runtime], args.clients)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    res_exit = proc.wait(120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    res_exit = "killed"
            res["exit_code"] = res_exit
            res["crashes"] = int(res["answered"] < res["requests"]) + int(res_exit != 0)
            results[name].append(res)
            print(f"  round {r + 1} {name}: {res['photos_per_s']:.1f} photos/s, p50 {res['p50_ms']:.0f} ms, "
                  f"p95 {res['p95_ms']:.0f} ms, wrong {res['wrong']}, exit {res_exit}", flush=True)
            return res["photos_per_s"]

        return run

    rates = interleave({name: arm(name) for name in arms}, rounds(args))
    ratios = [a / b for a, b in zip(rates["batched"], rates["unbatched"])]
    ratio = median(ratios)
    onnx_ratios = [a / b for a, b in zip(rates["onnx"], rates["batched"])]
    onnx_ratio = median(onnx_ratios)
    rows = []
    figures: dict = {"ratio": ratio, "ratios": ratios, "goal": GOAL, "goal_met": ratio >= GOAL,
                     "onnx_ratio": onnx_ratio, "onnx_ratios": onnx_ratios}
    label = {"batched": f"torch, max-batch-size {args.batch}", "unbatched": "torch, max-batch-size 1",
             "onnx": f"onnx, max-batch-size {args.batch}"}
    versus = {"batched": f"{ratio:.2f}x unbatched", "unbatched": "1", "onnx": f"{onnx_ratio:.2f}x torch batched"}
    for name in ("unbatched", "batched", "onnx"):
        runs = results[name]
        fig = {k: median([r[k] for r in runs]) for k in ("photos_per_s", "p50_ms", "p95_ms")}
        fig.update(wrong=sum(r["wrong"] for r in runs), crashes=sum(r["crashes"] for r in runs),
                   answered=sum(r["answered"] for r in runs), requests=sum(r["requests"] for r in runs),
                   problems=[p for r in runs for p in r["problems"]][:5], runs=runs)
        figures[name] = fig
        rows.append([label[name], f"{fig['answered']}/{fig['requests']}", fig["wrong"], fig["crashes"],
                     fig["p50_ms"], fig["p95_ms"], fig["photos_per_s"], versus[name]])
    print_table(["server", "answered", "wrong", "crashes", "p50 ms", "p95 ms", "photos/s", "ratio"], rows,
                title=f"geotrainr serve under load: {n} requests, {args.clients} clients, every {args.hostile_every}th hostile; "
                f"goal batched >= {GOAL}x: {verdict(ratio, GOAL)}")
    settings = {"checkpoint": str(args.checkpoint) if args.checkpoint else "untrained country model (Lite0, 128 px)",
                "photos": str(args.photos), "n_photos": len(files), "requests": n, "clients": args.clients,
                "hostile_every": args.hostile_every, "batch": args.batch, "serve_args": args.serve_arg,
                "onnx_model": "the same model, geotrainr export --format onnx" if exported != ckpt else str(exported),
                "rounds": rounds(args), "quick": q}
    append_result(args.results, "serve_load", settings, figures)


if __name__ == "__main__":
    main()
