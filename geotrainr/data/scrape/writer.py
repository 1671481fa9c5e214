"""The output folder of a scrape: atomic images, a journal, parquet shards, the final index.

Layout of ``--out DIR``::

    images/<pano>_<heading>.jpg     one file per view, written to a temporary name then renamed
    shards/part-000001.parquet      rows of collected views (a valid index folder by itself)
    state/places-000001.parquet     what each finished place gave: hit, miss, duplicate, excluded
    state/journal-<session>.jsonl   rows and place outcomes since the last shard, one JSON per line
    state/settings.json             image settings the folder was started with
    index.parquet                   every row, with a split column: what ``geotrainr fit`` reads

Why it survives ``kill -9`` at any moment: an image is renamed into place
before its row is journaled, so no row ever points at a partial file; a line
is appended to the journal only when its work is complete, and a torn last
line is ignored on reading; shards are written atomically and the journal is
deleted only after its shard exists. Reading merges shards and journals and
drops repeats by (pano_id, heading) and by place id, so every crash point
between those steps reads back as the same set of rows, none lost or doubled.

Why it survives a power cut: every image, journal line, shard and the
settings file is flushed to the disk (fsync, then the folder) before the
step that depends on it, so the order above also holds on the disk. As a
second line of defence, a resume checks every recorded image (present, not
empty, whole, of the folder's size) and fetches a bad one again, and every
journal line is validated again on reading: a line that fails is skipped,
counted, and its place is collected again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geotrainr.data.schema import SCHEMA
from geotrainr.data.splits import assign_splits
from geotrainr.data.index import validate_index, write_index, write_parquet_atomic
from geotrainr.data.scrape.exceptions import InvalidAnswer, ScrapeError
from geotrainr.data.scrape.records import stored_image_ok, validate_place, validate_row
from geotrainr.files import fsync_dir, write_bytes_atomic, write_text_atomic

ROW_COLUMNS = (
    "image_path", "lat", "lon", "country", "pano_id", "heading", "pitch", "fov", "capture_date", "place_id", "source",
    "sequence", "creator", "licence",
)
PLACE_COLUMNS = ("place_id", "outcome", "pano_id", "country")
#: Outcomes that finish a place; anything else (failed, budget, stopped) leaves it to the next run.
FINAL_OUTCOMES = ("hit", "miss", "duplicate", "excluded")
INDEX_NAME = "index.parquet"

_ROW_SCHEMA = pa.schema([pa.field(c, SCHEMA.get(c, pa.string())) for c in ROW_COLUMNS])
_PLACE_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in PLACE_COLUMNS])
_SEQ = re.compile(r"^(?:part|places)-(\d+)\.parquet$")


#: Longest pano_id kept readable in a file name; longer ones are shortened and hashed.
MAX_NAME_ID = 80


def image_name(pano_id: str, heading: float) -> str:
    """File name of one view: ``<pano>_<heading>.jpg`` (other characters hashed away, at most ~110 characters).

    Every stored image is a JPEG (see ``records.normalise_image``). An id with
    other characters, or longer than :data:`MAX_NAME_ID`, keeps a readable
    prefix and gets a hash of the whole id, so that no id can exceed the
    file system's name limit.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", pano_id)
    if safe != pano_id or len(safe) > MAX_NAME_ID:
        digest = hashlib.sha1(pano_id.encode()).hexdigest()
        safe = safe[:MAX_NAME_ID] + "-" + (digest[:8] if len(safe) <= MAX_NAME_ID else digest)
    return f"{safe}_{heading:g}.jpg"


@dataclass
class Loaded:
    """What earlier runs left in the folder."""

    rows: pd.DataFrame
    places: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # place_id -> (outcome, pano_id)
    torn_lines: int = 0
    invalid_lines: int = 0
    missing_images: int = 0
    bad_images: int = 0

    def done_keys(self) -> set[tuple[str, float]]:
        return set(zip(self.rows["pano_id"], self.rows["heading"].astype(float)))

    def owners(self) -> dict[str, str]:
        """pano_id -> place id that collected it (the first one)."""
        return dict(self.rows.drop_duplicates("pano_id")[["pano_id", "place_id"]].itertuples(index=False, name=None))


class DatasetStore:
    """Reads and writes one output folder; one writer process at a time (a lock file enforces it)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.images = self.out / "images"
        self.shards = self.out / "shards"
        self.state = self.out / "state"
        self.index_path = self.out / INDEX_NAME
        self._journal = None
        self._journal_path: Path | None = None
        self._pending_rows: list[dict] = []
        self._pending_places: list[dict] = []
        self._old_journals: list[Path] = []
        self._carry_rows: list[dict] = []
        self._carry_places: list[dict] = []
        self._lock_file = None
        self._write_lock = threading.Lock()
        self._checked: dict[str, tuple[int, int]] = {}  # image path -> (size, mtime) found whole in this process
        self.last_flush = time.monotonic()

    # --- opening -------------------------------------------------------------

    def open_for_writing(self) -> None:
        """Create the folders, take the lock and remove leftovers of an interrupted run."""
        if self.out.exists() and not self.out.is_dir():
            raise ScrapeError(f"--out {self.out}: exists and is not a folder")
        if self.out.is_dir() and not (self.state / "settings.json").exists() and not self._has_work():
            foreign = sorted(p.name for p in self.out.iterdir() if p.name not in ("images", "shards", "state"))
            if foreign:
                # Never overwrite another dataset's index.parquet or mix with unrelated files.
                raise ScrapeError(
                    f"--out {self.out}: the folder holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''} "
                    "and no earlier scrape: give a new or empty folder"
                )
        try:
            for d in (self.images, self.shards, self.state):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ScrapeError(f"{self.out}: cannot create the output folder ({e.strerror or e})") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None
        self._lock_file = open(self.state / "lock", "a+")
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                self._lock_file = None
                raise ScrapeError(f"{self.out}: another geotrainr scrape is writing to this folder") from None
        for folder in (self.images, self.shards, self.state, self.out):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def check_settings(self, settings: dict, write: bool = True, force: bool = False) -> None:
        """Refuse to mix images of different settings in one folder; record them on first use.

        A settings file that cannot be read (empty, torn, not JSON) refuses the
        run, as does a folder that holds collected work but no settings file:
        guessing would mix image sizes. ``force`` (``--force``)
        records this run's settings instead; images of another size are then
        found by the resume check and fetched again.
        """
        path = self.state / "settings.json"
        problem = None
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                old = None
            if isinstance(old, dict):
                diff = [k for k in settings if k in old and old[k] != settings[k]]
                if diff and not force:
                    k = diff[0]
                    raise ScrapeError(
                        f"{self.out} was collected with {k} = {old[k]!r}, this run asks for {settings[k]!r}: "
                        "use the same image settings to resume, or a new --out"
                    )
                if not diff:
                    return
                problem = "holds other settings"
            else:
                problem = "cannot be read"
        elif self._has_work():
            problem = "is missing although the folder holds collected images"
        if problem is not None and not force:
            raise ScrapeError(
                f"{path} {problem}: the image settings of this folder are unknown; give --force to record "
                "this run's settings (images of another size are then fetched again), or use a new --out"
            )
        if write:
            write_text_atomic(path, json.dumps(settings, indent=2, sort_keys=True) + "\n", durable=True)

    def _has_work(self) -> bool:
        """Whether shards, journals or images of an earlier run exist."""
        return any(
            d.is_dir() and any(p for p in d.iterdir() if not p.name.startswith("."))
            for d in (self.shards, self.images)
        ) or (self.state.is_dir() and any(self.state.glob("journal-*.jsonl")))

    # --- reading -------------------------------------------------------------

    def load(self, size: tuple[int, int] | None = None) -> Loaded:
        """Merge shards, place files and journals; drop repeats and rows whose image is gone.

        With ``size`` (width, height) every image is also checked (see
        :func:`stored_image_ok`): an empty, cut-off or wrongly sized file
        drops its row, so that its place is collected again.

        Records found only in the journals of earlier runs are kept aside for
        :meth:`flush` (``carry_old``), which moves them into a shard.
        """
        row_frames, place_frames = [], []
        if self.shards.is_dir():
            row_frames = [self._read_parquet(p) for p in sorted(self.shards.glob("part-*.parquet"))]
        if self.state.is_dir():
            place_frames = [self._read_parquet(p) for p in sorted(self.state.glob("places-*.parquet"))]
        self._old_journals = sorted(self.state.glob("journal-*.jsonl")) if self.state.is_dir() else []
        journal_rows, journal_places, torn, invalid = self._read_journals(self._old_journals)
        n_shard_rows = sum(len(f) for f in row_frames)
        if journal_rows:
            row_frames.append(pd.DataFrame(journal_rows, columns=list(ROW_COLUMNS)))
        rows = pd.concat(row_frames, ignore_index=True) if row_frames else pd.DataFrame(columns=list(ROW_COLUMNS))
        rows = rows.reindex(columns=list(ROW_COLUMNS))
        rows["heading"] = rows["heading"].astype(float)
        from_journal = pd.Series(range(len(rows))) >= n_shard_rows
        keep = ~rows.duplicated(["pano_id", "heading"], keep="first")
        # Journal rows that are new (not already moved into a shard before a kill) go to the next shard.
        self._carry_rows = [journal_rows[i - n_shard_rows] for i in rows.index[(keep & from_journal).to_numpy()]]
        rows = rows[keep.to_numpy()].reset_index(drop=True)
        exists = rows["image_path"].map(lambda p: isinstance(p, str) and (self.out / p).is_file()).astype(bool)
        missing = int((~exists).sum())
        whole = exists
        if size is not None:
            whole = rows["image_path"].map(lambda p: isinstance(p, str) and self._image_ok(p, size)).astype(bool)
        bad = int((exists & ~whole).sum())
        if missing or bad:
            rows = rows[whole.to_numpy()].reset_index(drop=True)
        places: dict[str, tuple[str, str | None]] = {}
        for frame in place_frames:
            for pid, outcome, pano in zip(frame["place_id"], frame["outcome"], frame["pano_id"]):
                places.setdefault(str(pid), (str(outcome), pano if isinstance(pano, str) else None))
        self._carry_places = []
        for rec in journal_places:
            pid = str(rec.get("place_id"))
            if pid not in places:
                places[pid] = (str(rec.get("outcome")), rec.get("pano_id"))
                self._carry_places.append(rec)
        return Loaded(rows, places, torn, invalid, missing, bad)

    def _image_ok(self, rel: str, size: tuple[int, int]) -> bool:
        """:func:`stored_image_ok`, remembered per file version so that one run checks each image once."""
        path = self.out / rel
        try:
            st = path.stat()
        except OSError:
            return False
        stamp = (st.st_size, st.st_mtime_ns)
        if self._checked.get(rel) == stamp:
            return True
        if stored_image_ok(path, *size) is not None:
            return False
        self._checked[rel] = stamp
        return True

    @staticmethod
    def _read_parquet(path: Path) -> pd.DataFrame:
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise ScrapeError(f"{path}: unreadable shard ({e}); move it away and run again to redo its places") from None

    # --- writing -------------------------------------------------------------

    def write_image(self, name: str, data: bytes) -> str:
        """Write one image atomically and durably; return its path relative to the folder.

        A failure here is local (disk full, permissions): it stops the run
        rather than failing place after place, each after a billed request.
        """
        try:
            write_bytes_atomic(self.images / name, data, durable=True)
        except OSError as e:
            raise ScrapeError(f"{self.images}: cannot write an image ({e.strerror or type(e).__name__}); "
                              "free space or fix the folder, then run the same command again") from None
        return f"images/{name}"

    def _append(self, record: dict) -> None:
        try:
            if self._journal is None:
                self._journal_path = self.state / f"journal-{time.time_ns()}-{os.getpid()}.jsonl"
                self._journal = open(self._journal_path, "a", encoding="utf-8")
                fsync_dir(self.state)
            self._journal.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            self._journal.flush()  # in the OS page cache now: survives the death of this process
            os.fsync(self._journal.fileno())  # on the disk: survives a power cut
        except OSError as e:
            raise ScrapeError(f"{self.state}: cannot write the journal ({e.strerror or type(e).__name__}); "
                              "free space or fix the folder, then run the same command again") from None

    def record_row(self, row: dict) -> None:
        """Journal one collected view (its image must already be in place); raises InvalidAnswer for a bad field."""
        row = validate_row(row)
        with self._write_lock:
            self._append({"t": "row", **row})
            self._pending_rows.append(row)

    def record_place(self, place_id: str, outcome: str, pano_id: str | None, country: str) -> None:
        """Journal that a place is finished."""
        if outcome not in FINAL_OUTCOMES:
            raise ValueError(f"not a final outcome: {outcome}")
        rec = validate_place({"place_id": place_id, "outcome": outcome, "pano_id": pano_id, "country": country},
                             FINAL_OUTCOMES)
        with self._write_lock:
            self._append({"t": "place", **rec})
            self._pending_places.append(rec)

    @property
    def pending_rows(self) -> int:
        return len(self._pending_rows)

    def _next_seq(self) -> int:
        seqs = [int(m.group(1)) for d in (self.shards, self.state) for p in d.glob("*.parquet") if (m := _SEQ.match(p.name))]
        return max(seqs, default=0) + 1

    def flush(self, carry_old: bool = False) -> None:
        """Move journaled records into an atomic shard pair, then drop the journal(s).

        ``carry_old`` also moves what :meth:`load` found in the journals of earlier runs.
        """
        with self._write_lock:
            rows, places = list(self._pending_rows), list(self._pending_places)
            journals = [self._journal_path] if self._journal_path is not None else []
            if carry_old:
                rows, places = self._carry_rows + rows, self._carry_places + places
                journals = self._old_journals + journals
            if not rows and not places and not journals:
                self.last_flush = time.monotonic()
                return
            seq = self._next_seq()
            if rows:
                table = pa.Table.from_pylist([{c: r.get(c) for c in ROW_COLUMNS} for r in rows], schema=_ROW_SCHEMA)
                write_parquet_atomic(table, self.shards / f"part-{seq:06d}.parquet", durable=True)
            if places:
                table = pa.Table.from_pylist([{c: p.get(c) for c in PLACE_COLUMNS} for p in places], schema=_PLACE_SCHEMA)
                write_parquet_atomic(table, self.state / f"places-{seq:06d}.parquet", durable=True)
            if self._journal is not None:
                self._journal.close()
                self._journal = None
                self._journal_path = None
            for j in journals:
                j.unlink(missing_ok=True)
            if journals:
                fsync_dir(self.state)
            if carry_old:
                self._old_journals, self._carry_rows, self._carry_places = [], [], []
            self._pending_rows.clear()
            self._pending_places.clear()
            self.last_flush = time.monotonic()

    @staticmethod
    def _read_journals(paths: list[Path]) -> tuple[list[dict], list[dict], int, int]:
        """Records of journal files, each validated again.

        A line without its newline was cut off by a kill (``torn``); a line
        that does not parse or fails validation (``invalid``: NUL bytes after
        a power cut, a record no longer valid) is skipped too, and its place
        is collected again by this run.
        """
        rows, places, torn, invalid = [], [], 0, 0
        for p in paths:
            with open(p, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        torn += 1
                        continue
                    if not line.strip(b"\0\n"):
                        continue  # NUL padding left by a power cut: no record
                    try:
                        rec = json.loads(line)
                        kind = rec.pop("t", None) if isinstance(rec, dict) else None
                        if kind == "row":
                            rows.append(validate_row(rec))
                        elif kind == "place":
                            places.append(validate_place(rec, FINAL_OUTCOMES))
                        else:
                            invalid += 1
                    except (ValueError, RecursionError, InvalidAnswer):
                        invalid += 1
        return rows, places, torn, invalid

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # --- the index -----------------------------------------------------------

    def write_final_index(self, rows: pd.DataFrame, split: str = "group", val: float = 0.2, test: float = 0.0,
                          seed: int = 0, block_km: float = 50.0) -> Path | None:
        """Write ``index.parquet`` (atomically) from every collected row, with a split column."""
        if len(rows) == 0:
            return None
        df = validate_index(rows.reindex(columns=list(ROW_COLUMNS)))
        df = df.sort_values(["country", "pano_id", "heading"], kind="stable").reset_index(drop=True)
        df = add_splits(df, split, val, test, seed, block_km)
        cols = ["image_path", "lat", "lon", "country", "split"] + [c for c in ROW_COLUMNS if c not in ("image_path", "lat", "lon", "country")]
        return write_index(df[cols], self.index_path)


def add_splits(df: pd.DataFrame, method: str, val: float, test: float, seed: int, block_km: float) -> pd.DataFrame:
    """A split column that keeps every view of one panorama in the same split.

    ``group``: seeded random split over panoramas (views of one panorama are
    near-duplicates and must not straddle train and val). ``block``: whole
    geographic cells of ``block_km`` per split (nearby panoramas too).
    """
    if method == "block":
        return assign_splits(df, "block", val=val, test=test, seed=seed, block_km=block_km)
    if method != "group":
        raise ScrapeError(f"unknown split method {method!r}: use group or block")
    panos = df.drop_duplicates("pano_id")[["pano_id", "lat", "lon"]].sort_values("pano_id").reset_index(drop=True)
    panos = assign_splits(panos, "random", val=val, test=test, seed=seed)
    out = df.copy()
    out["split"] = out["pano_id"].map(dict(zip(panos["pano_id"], panos["split"])))
    return out
