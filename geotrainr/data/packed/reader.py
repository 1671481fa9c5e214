"""Reading a packed set without holding it: NumPy columns in the main process, row groups of image bytes
buffered per loader process."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from geotrainr.data.packed.manifest import PACK_MANIFEST as MANIFEST
from geotrainr.data.dataset import DecodedRows
from geotrainr.data.schema import SPLITS, IndexValidationError
from geotrainr.data.packed.location import FORMAT, META_COLUMNS, PackError, VERSION, filesystem, read_columns, read_json, reading
from geotrainr.data.packed.manifest import check_pack


class PackedSet:
    """A packed set's manifest and light columns; images are read on demand, a row group at a time.

    Safe to send to worker processes: open files and the row-group buffer are per process.
    """

    def __init__(self, location: str | os.PathLike, buffer: int = 4):
        self.location = os.fspath(location)
        if buffer < 1:
            raise PackError(f"stream_buffer {buffer}: at least one row group must fit in memory")
        self.buffer = buffer

        fs, self._base = filesystem(self.location)
        try:
            self.manifest = read_json(fs, f"{self._base}/{MANIFEST}")
        except PackError:
            raise
        except (OSError, ValueError) as e:
            raise PackError(f"{self.location}: no readable {MANIFEST} ({e})") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise PackError(f"{self.location}: {MANIFEST} is not a geotrainr pack of version {VERSION}")
        try:  # every shard whole and as the manifest says (footers only), before anything is written
            check_pack(fs, self._base, self.location)
        except IndexValidationError as e:
            raise PackError(str(e)) from None
        self.shards = [s["file"] for s in self.manifest["shards"]]
        groups = [n for s in self.manifest["shards"] for n in s["row_groups"]]
        #: first global row of every row group, and the (shard, group in shard) it is
        self.group_start = np.concatenate([[0], np.cumsum(groups)]).astype(np.int64)
        self.group_where = np.array([(i, g) for i, s in enumerate(self.manifest["shards"]) for g in range(len(s["row_groups"]))],
                                    np.int64).reshape(-1, 2)
        self.rows = int(self.group_start[-1])
        self.rows_per_group = int(max(groups)) if groups else 0
        self._columns: dict[str, np.ndarray] | None = None
        self._state_pid: int | None = None
        self._lock = threading.Lock()

    # light columns ---------------------------------------------------------------------------

    @property
    def countries(self) -> list[str]:
        """Countries of the training split (all rows when the source had no split), sorted: the default class list."""
        return list(self.manifest["train_countries"])

    @property
    def split_rows(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.manifest["splits"].items()}

    def columns(self) -> dict[str, np.ndarray]:
        """lat, lon (float64), country (ISO codes, a small string array per code), split (codes into SPLITS).

        Read once, column by column, shard by shard: no image bytes and no pandas objects per row.
        """
        if self._columns is not None:
            return self._columns
        fs, base = filesystem(self.location)
        lat, lon, country, split = [], [], [], []
        for name in self.shards:
            t = read_columns(fs, base, name, META_COLUMNS, self.location)
            lat.append(t.column("lat").to_numpy())
            lon.append(t.column("lon").to_numpy())
            country.append(t.column("country").combine_chunks().dictionary_encode())
            split.append(t.column("split").combine_chunks().dictionary_encode())
        codes = sorted({c for d in country for c in d.dictionary.to_pylist()})
        self.country_codes = np.array(codes, dtype=object)
        to_code = {c: i for i, c in enumerate(codes)}
        split_code = {s: i for i, s in enumerate(SPLITS)}

        def recode(chunks, table) -> np.ndarray:
            out = []
            for d in chunks:
                lut = np.array([table[v] for v in d.dictionary.to_pylist()], np.int16)
                out.append(lut[d.indices.to_numpy(zero_copy_only=False)])
            return np.concatenate(out) if out else np.zeros(0, np.int16)

        self._columns = {"lat": np.concatenate(lat), "lon": np.concatenate(lon),
                         "country": recode(country, to_code), "split": recode(split, split_code).astype(np.int8)}
        return self._columns

    def split_index(self, split: str) -> np.ndarray:
        """Global row numbers of ``split`` (``all`` for every row), in stored order."""
        if split == "all":
            return np.arange(self.rows, dtype=np.int64)
        return np.flatnonzero(self.columns()["split"] == SPLITS.index(split)).astype(np.int64)

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """Row group number of each global row."""
        return np.searchsorted(self.group_start, rows, side="right") - 1

    def frame(self, rows: np.ndarray) -> pd.DataFrame:
        """A small DataFrame of ``rows`` for reports: lat, lon, country (categorical), plus origin and source."""
        cols = self.columns()
        df = pd.DataFrame({"lat": cols["lat"][rows], "lon": cols["lon"][rows],
                           "country": pd.Categorical.from_codes(cols["country"][rows], self.country_codes.tolist())})
        for extra in ("origin", "source"):
            if extra in self.manifest.get("columns", []):
                df[extra] = self._column(extra)[rows]
        return df

    def _column(self, name: str) -> np.ndarray:
        fs, base = filesystem(self.location)
        parts = []
        for shard in self.shards:
            parts.append(read_columns(fs, base, shard, [name], self.location).column(name).to_numpy(zero_copy_only=False))
        return np.concatenate(parts)

    # images ----------------------------------------------------------------------------------

    def _state(self) -> tuple[dict, OrderedDict]:
        """This process's open shard files and row-group buffer (a forked worker starts with empty ones)."""
        with self._lock:
            if self._state_pid != os.getpid():
                self._files: dict[int, pq.ParquetFile] = {}
                self._cache: OrderedDict = OrderedDict()
                self._state_pid = os.getpid()
            return self._files, self._cache

    def _group_images(self, group: int) -> pa.BinaryArray:
        files, cache = self._state()
        hit = cache.get(group)
        if hit is not None:
            cache.move_to_end(group)
            return hit
        shard, g = (int(x) for x in self.group_where[group])
        with reading(self.location, self.shards[shard]):
            if shard not in files:
                fs, base = filesystem(self.location)
                files[shard] = pq.ParquetFile(fs.open_input_file(f"{base}/{self.shards[shard]}"))
            images = files[shard].read_row_group(g, columns=["image"]).column("image").combine_chunks()
        cache[group] = images
        while len(cache) > self.buffer:
            cache.popitem(last=False)
        return images

    def image_bytes(self, row: int) -> bytes | None:
        """The encoded image of global ``row`` (its row group is read and kept in this process's buffer)."""
        group = int(self.group_of(np.array([row]))[0])
        return self._group_images(group)[row - int(self.group_start[group])].as_py()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_files", "_cache", "_lock"):
            state.pop(k, None)
        state["_state_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@dataclass
class PackedDataset(DecodedRows):
    """Map-style view of one split of a packed set: the same samples as :class:`~geotrainr.data.dataset.GeoDataset`.

    Random access reads a whole row group per miss: fine for evaluation and reports, which go in order;
    training goes through :class:`ShardStream`, which reads each row group once per epoch.
    """

    packed: PackedSet
    rows: np.ndarray
    transform: Callable
    classes: list[str]
    strict: bool = False
    draft_size: int | None = None

    def __post_init__(self):
        cols = self.packed.columns()
        lut = pd.Index(list(self.classes)).get_indexer(self.packed.country_codes).astype(np.int16)
        self._country = lut[cols["country"]]  # class number per global row, -1 outside the class list
        self._lat, self._lon = cols["lat"], cols["lon"]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def frame(self) -> pd.DataFrame:
        """lat, lon, country (and origin, source) of this split's rows, for reports and prediction records."""
        return self.packed.frame(self.rows)

    def label(self, i: int) -> str:
        """How row ``i``'s image is named: where it came from when packed (path or archive:member), else its row."""
        if getattr(self, "_origins", None) is None:
            self._origins = self.packed._column("origin") if "origin" in self.packed.manifest.get("columns", []) else None
        row = int(self.rows[i])
        origin = self._origins[row] if self._origins is not None else None
        return origin if isinstance(origin, str) and origin else f"{self.packed.location}#{row}"

    def source(self, i: int) -> bytes | None:
        return self.packed.image_bytes(int(self.rows[i]))

    def target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        return torch.tensor(int(self._country[row])), torch.tensor((self._lat[row], self._lon[row]), dtype=torch.float32)
