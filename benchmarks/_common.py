"""Helpers the benchmark scripts share: machine description, results file, tables, test photos.

Every benchmark compares against a baseline measured in the same run, with the
arms interleaved (A, B, A, B, ...), so that a change in machine load hits both
arms alike and the ratio stays meaningful on a shared or busy machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results.jsonl"
#: the result line marker a child process prints, so that log noise around it does not matter
MARK = "BENCHMARK-RESULT "


# --- command line and results ---------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every script has: --quick, --rounds, --results, --workdir."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, one round, finishes in seconds")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per arm (default: 3, 1 with --quick)")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON lines file the result is appended to")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder for generated data (default: a temp dir)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads in every arm (default: torch's own, one per core); see docs/performance.md")
    return p


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count here and, through OMP_NUM_THREADS, in the child processes."""
    if args.threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)


def rounds(args: argparse.Namespace) -> int:
    return args.rounds if args.rounds else (1 if args.quick else 3)


def workdir(args: argparse.Namespace, name: str) -> Path:
    """The scratch folder: ``--workdir`` or a fresh temp dir (generated data never lands in the repository)."""
    if args.workdir is not None:
        path = Path(args.workdir).resolve() / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"geotrainr-bench-{name}-"))


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_model() -> str | None:
    """The CPU's model name (Linux), since ``platform.processor()`` is often empty there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def append_result(path: Path, benchmark: str, settings: dict, figures: dict) -> dict:
    """Append one JSON line ``{benchmark, machine..., settings, figures}`` to ``path``; returns it."""
    record = {"benchmark": benchmark, **machine(), "settings": settings, "figures": figures}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False, default=str) + "\n")
    print(f"\nresult appended to {path}")
    if settings.get("quick"):
        print("(--quick: a smoke test on tiny inputs; its figures say nothing about performance)")
    return record


def print_table(headers: Sequence[str], rows: Iterable[Sequence], title: str | None = None) -> None:
    """A plain fixed-width table (also valid Markdown)."""
    rows = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print(line(r))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 10 else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}"
    return str(x)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    return "met" if ok else "MISSED"


def interleave(arms: dict[str, Callable[[int], float]], n_rounds: int) -> dict[str, list[float]]:
    """Run every arm once per round, in turn (A, B, A, B...), rotating the start so no arm always goes first."""
    names = list(arms)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(n_rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            out[name].append(arms[name](r))
    return out


# --- child processes ------------------------------------------------------------------------------


def run_child(script: Path, args: Sequence[str], timeout: float = 1800, env: dict | None = None) -> dict:
    """Run ``python script args`` in a fresh process and return the JSON it prints after :data:`MARK`."""
    cmd = [sys.executable, str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")


def emit(result: dict) -> None:
    """Child side of :func:`run_child`."""
    sys.stdout.flush()
    print(MARK + json.dumps(result), flush=True)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class RssSampler:
    """Peak resident memory of this process plus all its descendants, sampled from /proc."""

    def __init__(self, every: float = 0.02):
        import threading

        self.every, self.peak, self.peak_pss, self._stop = every, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def tree_rss() -> tuple[int, int]:
        """(RSS, PSS) in bytes summed over this process and its descendants; PSS shares pages fairly between them."""
        import os

        me = os.getpid()
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(d.name)] = int(fields[1])
                rss[int(d.name)] = int(fields[21]) * 4096
            except (OSError, IndexError, ValueError):
                continue
        tree, total = {me}, 0
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        pss = 0
        for pid in tree:
            total += rss.get(pid, 0)
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
            except OSError:
                pass
        return total, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def _sample(self) -> None:
        rss, pss = self.tree_rss()
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --- test photos ----------------------------------------------------------------------------------


def usage_error(message: str) -> None:
    """One line on standard error and exit code 2, as argparse does for a bad argument."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def photo_files(photos: Path) -> list[Path]:
    """The image files under ``photos``, sorted."""
    files = sorted(p for p in Path(photos).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        usage_error(f"--photos {photos}: no photos found")
    return files


def source_images(photos: Path | None) -> tuple[list, str]:
    """PIL images to re-encode: the photos in ``photos``, else the demo patches (aerial, 32 px)."""
    from PIL import Image

    if photos is not None:
        return [Image.open(p) for p in photo_files(photos)], f"photos from {photos}"
    from geotrainr.data.demo import ensure_demo
    from geotrainr.data.index import read_index

    index = ensure_demo()
    df = read_index(index, columns=["image_path"])
    files = [index.parent / p for p in df["image_path"].head(256)]
    return [Image.open(p) for p in files], "demo patches (aerial, 32 px) upscaled"


def make_jpegs(out: Path, n: int, size: int = 640, photos: Path | None = None, quality: int = 90, seed: int = 0) -> tuple[list[Path], str]:
    """``n`` distinct ``size`` x ``size`` JPEGs: random square crops of the sources, resized and re-encoded.

    Reuses the files when ``out`` already holds them (same n, size and source).
    """
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "made.json"
    key = {"n": n, "size": size, "photos": str(photos), "quality": quality, "seed": seed}
    files = [out / f"{i:05d}.jpg" for i in range(n)]
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and all(f.is_file() for f in files):
        return files, json.loads(stamp.read_text())["what"]
    sources, what = source_images(photos)
    rng = np.random.default_rng(seed)
    for i, f in enumerate(files):
        im = sources[i % len(sources)].convert("RGB")
        w, h = im.size
        side = int(min(w, h) * (1.0 if i < len(sources) else rng.uniform(0.7, 1.0)))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        im = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        f.write_bytes(buf.getvalue())
    stamp.write_text(json.dumps({"key": key, "what": what}))
    return files, what


def environment_note() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def loader_rate(loader, batches: int, warmup: int) -> float:
    """Images per second a loader yields over ``batches`` batches after ``warmup`` (epoch after epoch)."""
    import time

    def forever():
        while True:
            yield from loader

    it = forever()
    for _ in range(warmup):
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += len(next(it)["image"])
    rate = n / (time.perf_counter() - t0)
    del it
    return rate
