"""`CascadeIndex`: enrolment embeddings searched at a short MRL prefix, the shortlist re-scored in full.

    enrolments [N, D] -> CascadeIndex(dims 64/128/192/256)
    queries [B, D] -> search: cosine at 64-D over all N -> top `shortlist` rows
                              -> cosine at D over those -> top `top_n` (rows, scores)

The matrix is stored once (unit rows at D, float32 or float16), as column blocks split at the
dims ([N, 64], [N, 64], ... for 64/128/192/256: a short prefix is contiguous); the cosine of a
prefix needs that prefix renormalised, so the inverse norm of every row's prefix is precomputed
per dim and applied to each block of rows as it is scored (exact, no per-dim copies).

Exhaustive scoring (backend "torch", exhaustive.py) runs in row blocks, memory-bounded at
1M x 256, and returns the exact top k (or, with a bfloat16 scan, nearly). Backend "faiss"
(optional, `pip install faiss-cpu`) does the exhaustive stage with an `IndexFlatIP` per dim
instead (a float32 copy of that prefix).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import exhaustive

if TYPE_CHECKING:
    import faiss  # optional (the `search` extra); imported where backend "faiss" is used

#: The MRL dims an index holds by default (those up to the embedding size, and the size itself).
DEFAULT_DIMS = (64, 128, 192, 256)
BACKENDS = ("torch", "faiss")
STORAGE_DTYPES = ("float32", "float16")
#: Precision of the exhaustive stage (backend "torch"; see exhaustive.py): float32 is exact.
SCAN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: The cascade's default scan: "bfloat16" where the CPU multiplies bfloat16 natively, else "float32".
AUTO = "auto"
INDEX_FORMAT = "mrl-dist-search-index/1"
_BUILD_ROWS = 65_536  # rows normalised at once while building


def keys_path(index_path: str | os.PathLike) -> Path:
    """Where the keys of the index at `index_path` (X.npz) live: X.keys.json."""
    return Path(index_path).with_suffix(".keys.json")


def _atomic_write(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16): there a
    bfloat16 scan is 2-3x faster than float32; elsewhere it is emulated and slower."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return torch.backends.mkldnn.is_available() and any(check is not None and check() for check in checks)


def scan_dtype_for(name: str, backend: str = "torch") -> str:
    """`name` ("float32", "bfloat16" or "auto") as the dtype the scan runs in on this machine."""
    if name == AUTO:
        return "bfloat16" if backend == "torch" and native_bfloat16() else "float32"
    if name not in SCAN_DTYPES:
        raise ValueError(f"scan_dtype {name!r}: expected one of {[*SCAN_DTYPES, AUTO]}")
    return name


def _unit_prefix(queries: np.ndarray, dim: int) -> torch.Tensor:
    """`queries[:, :dim]` L2-normalised: [B, dim] float32 (a zero prefix stays zero)."""
    prefix = torch.as_tensor(np.ascontiguousarray(queries[:, :dim], dtype=np.float32))
    return torch.nn.functional.normalize(prefix, dim=1, eps=1e-12)


def _unit_segments(embeddings: np.ndarray, dims: Sequence[int], dtype: str) -> list[np.ndarray]:
    """Rows scaled to unit norm at dims[-1], split into contiguous column blocks at the dims
    ([N, dims[0]], [N, dims[1] - dims[0]], ...), in `dtype`; built in row blocks (no float64 copy)."""
    bounds = list(zip([0, *dims[:-1]], dims))
    segments = [np.empty((len(embeddings), stop - start), dtype=dtype) for start, stop in bounds]
    for first in range(0, len(embeddings), _BUILD_ROWS):
        block = embeddings[first : first + _BUILD_ROWS, : dims[-1]].astype(np.float32)
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        for segment, (start, stop) in zip(segments, bounds):
            segment[first : first + _BUILD_ROWS] = block[:, start:stop]
    return segments


def _prefix_inverse_norms(segments: Sequence[np.ndarray]) -> np.ndarray:
    """[len(segments), N] float32: 1 / ||row[:dim]|| of the stored rows at each dim (0 for a zero
    prefix, which then scores 0)."""
    inverse = np.empty((len(segments), len(segments[0])), dtype=np.float32)
    for first in range(0, len(segments[0]), _BUILD_ROWS):
        squares = np.zeros(len(segments[0][first : first + _BUILD_ROWS]))
        for row, segment in enumerate(segments):
            block = segment[first : first + _BUILD_ROWS].astype(np.float64)
            squares += np.einsum("nd,nd->n", block, block)
            norms = np.sqrt(squares)
            inverse[row, first : first + _BUILD_ROWS] = np.where(norms > 1e-12, 1.0 / np.maximum(norms, 1e-12), 0.0)
    return inverse


class CascadeIndex:
    """Enrolment embeddings [N, D] with a key and a label (speaker) per row, searched at MRL prefixes."""

    def __init__(
        self,
        embeddings: np.ndarray,
        keys: Sequence[str],
        labels: Sequence[str] | None = None,
        *,
        dims: Sequence[int] | None = None,
        dtype: str = "float32",
        backend: str = "torch",
    ):
        """embeddings [N, D] (any scale); keys and labels: N str (labels, e.g. speakers, default to
        the keys); dims: the prefixes searchable (default `DEFAULT_DIMS` below D, plus D); dtype:
        storage; backend: "torch" or "faiss" (see the module docstring)."""
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {STORAGE_DTYPES}")
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"embeddings: expected a non-empty [N, D] matrix, got shape {embeddings.shape}")
        size = embeddings.shape[1]
        dims = sorted({d for d in DEFAULT_DIMS if d < size} | {size}) if dims is None else [int(d) for d in dims]
        if not dims or dims != sorted(set(dims)) or dims[0] < 1 or dims[-1] > size:
            raise ValueError(f"dims {dims}: expected strictly increasing dims in 1..{size} (the embedding size)")
        segments = _unit_segments(embeddings, dims, dtype)
        self._setup(segments, _prefix_inverse_norms(segments), keys, keys if labels is None else labels, dims, backend)

    def _setup(
        self,
        segments: list[np.ndarray],
        inverse_norms: np.ndarray,
        keys: Sequence[str],
        labels: Sequence[str],
        dims: list[int],
        backend: str,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {BACKENDS}")
        rows = len(segments[0])
        self.keys, self.labels = list(keys), list(labels)
        if len(self.keys) != rows or len(self.labels) != rows:
            raise ValueError(f"embeddings have {rows} rows but {len(self.keys)} keys and {len(self.labels)} labels")
        self.segments, self.inverse_norms, self.dims, self.backend = segments, inverse_norms, dims, backend
        self._torch_segments = [torch.from_numpy(segment) for segment in segments]
        self._faiss: dict[int, faiss.IndexFlatIP] = {}
        self._workspace = exhaustive.Workspace()

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.keys)

    @property
    def size(self) -> int:
        """The largest dim (the stored width)."""
        return self.dims[-1]

    @property
    def dtype(self) -> np.dtype:
        return self.segments[0].dtype

    @property
    def embeddings(self) -> np.ndarray:
        """The stored rows [N, size] (unit at `size`), a copy of the segments side by side."""
        return np.concatenate(self.segments, axis=1)

    def prefix(self, dim: int, rows: slice = slice(None)) -> np.ndarray:
        """The enrolments (of `rows`) at `dim`: [n, dim] float32 unit rows, a copy."""
        position = self._dim_row(dim)
        values = np.concatenate([segment[rows] for segment in self.segments[: position + 1]], axis=1)
        return values.astype(np.float32) * self.inverse_norms[position, rows, None]

    def _dim_row(self, dim: int) -> int:
        if dim not in self.dims:
            raise ValueError(f"dim {dim} is not a dim of this index (dims {self.dims})")
        return self.dims.index(dim)

    def _check_queries(self, queries: np.ndarray, dim: int) -> np.ndarray:
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] < dim:
            raise ValueError(
                f"queries of shape {queries.shape} have fewer than the {dim} dims searched "
                f"(index dims {self.dims}); embed them at >= {dim} dims"
            )
        return queries

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        top_n: int = 5,
        first_dim: int = 64,
        shortlist: int = 100,
        final_dim: int | None = None,
        scan_dtype: str = AUTO,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cascade: cosine at `first_dim` over all rows, the best `shortlist` re-scored at `final_dim`.

        Args:
            queries: [B, Dq] with Dq >= final_dim (any scale: each prefix is normalised here).
            final_dim: the dim of the final scores (default D).
            scan_dtype: precision of the scan over all rows: a key of `SCAN_DTYPES` (see exhaustive.py)
                or "auto" (bfloat16 where the CPU has it natively, see `scan_dtype_for`; the
                shortlist's rows are scored in float32 either way).
        Returns:
            (rows [B, top_n] int64, scores [B, top_n] float32 cosines at final_dim), best first;
            top_n and shortlist are capped at N.
        """
        final_dim = self.size if final_dim is None else final_dim
        for dim in (first_dim, final_dim):
            self._dim_row(dim)
        queries = self._check_queries(queries, final_dim)
        top_n, shortlist = min(top_n, len(self)), min(shortlist, len(self))
        if not 1 <= top_n <= shortlist:
            raise ValueError(f"need 1 <= top_n <= shortlist, got top_n {top_n} and shortlist {shortlist}")
        rows, _ = self._top_rows(_unit_prefix(queries, first_dim), first_dim, shortlist, scan_dtype)
        scores = self._score_rows(_unit_prefix(queries, final_dim), final_dim, rows)
        best, order = torch.topk(scores, top_n, dim=1)
        return torch.gather(rows, 1, order).numpy(), best.numpy()

    def search_brute(
        self, queries: np.ndarray, top_n: int = 5, dim: int | None = None, scan_dtype: str = "float32"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force: cosine at `dim` (default D) against every row, exact with a float32 scan;
        returns as `search`."""
        dim = self.size if dim is None else dim
        self._dim_row(dim)
        queries = self._check_queries(queries, dim)
        top_n = min(top_n, len(self))
        if top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n}")
        rows, scores = self._top_rows(_unit_prefix(queries, dim), dim, top_n, scan_dtype)
        return rows.numpy(), scores.numpy()

    # ------------------------------------------------------------------ scoring
    def _prefix_parts(self, dim: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The segments that make up the prefix `dim`, and its inverse norms [N]."""
        position = self._dim_row(dim)
        return self._torch_segments[: position + 1], torch.from_numpy(self.inverse_norms[position])

    def _score_rows(self, unit_queries: torch.Tensor, dim: int, rows: torch.Tensor) -> torch.Tensor:
        """Cosine at `dim` of each query [B, dim] with its own rows [B, m] -> [B, m] float32."""
        return exhaustive.score_rows(*self._prefix_parts(dim), unit_queries, rows, self._workspace)

    def _top_rows(
        self, unit_queries: torch.Tensor, dim: int, k: int, scan_dtype: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best rows at `dim` for each query: (rows [B, k] int64, scores [B, k]), best first."""
        scan_dtype = scan_dtype_for(scan_dtype, self.backend)
        if self.backend == "faiss":
            if scan_dtype != "float32":
                raise ValueError(f"scan_dtype {scan_dtype!r}: the faiss backend scans in float32")
            return self._top_rows_faiss(unit_queries, dim, k)
        return exhaustive.top_rows(*self._prefix_parts(dim), unit_queries, k, self._workspace, SCAN_DTYPES[scan_dtype])

    def _top_rows_faiss(self, unit_queries: torch.Tensor, dim: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`_top_rows` by a faiss `IndexFlatIP` over the unit rows at `dim` (built on first use)."""
        if dim not in self._faiss:
            try:
                import faiss
            except ImportError as error:
                raise ImportError(
                    "backend 'faiss' needs faiss: pip install faiss-cpu (or pip install 'mrl-dist[search]')"
                ) from error
            flat = faiss.IndexFlatIP(dim)
            for start in range(0, len(self), _BUILD_ROWS):
                flat.add(self.prefix(dim, slice(start, start + _BUILD_ROWS)))
            self._faiss[dim] = flat
        scores, rows = self._faiss[dim].search(np.ascontiguousarray(unit_queries.numpy()), k)
        return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(scores)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (.npz: the segments, inverse norms, dims) and `keys_path(path)` (keys,
        labels), each atomically; returns `path`."""
        path = Path(path)
        arrays = {f"segment_{position}": segment for position, segment in enumerate(self.segments)}
        arrays.update(inverse_norms=self.inverse_norms, dims=np.asarray(self.dims, dtype=np.int64))
        # mypy also matches **arrays against savez's `allow_pickle: bool`; the keys are segment_*, inverse_norms, dims.
        _atomic_write(path, lambda file: np.savez(file, **arrays))  # type: ignore[arg-type]
        meta = {"format": INDEX_FORMAT, "rows": len(self), "dims": self.dims, "keys": self.keys, "labels": self.labels}
        _atomic_write(keys_path(path), lambda file: file.write(json.dumps(meta).encode()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "torch") -> CascadeIndex:
        """The index `save` wrote at `path` (and `keys_path(path)`)."""
        path, meta_path = Path(path), keys_path(path)
        for needed in (path, meta_path):
            if not needed.is_file():
                raise FileNotFoundError(f"search index: {needed} not found (written by `enrol` / CascadeIndex.save)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {INDEX_FORMAT!r}")
        with np.load(path) as arrays:
            dims = [int(d) for d in arrays["dims"]]
            segments = [arrays[f"segment_{position}"] for position in range(len(dims))]
            inverse_norms = arrays["inverse_norms"]
        widths = [segment.shape[1] for segment in segments]
        if (
            dims != meta["dims"]
            or widths != [b - a for a, b in zip([0, *dims[:-1]], dims)]
            or {len(segment) for segment in segments} != {meta["rows"]}
            or inverse_norms.shape != (len(dims), meta["rows"])
        ):
            raise ValueError(
                f"{path} (dims {dims}, segment widths {widths}) and {meta_path} ({meta['rows']} rows, "
                f"dims {meta['dims']}) are not one index; enrol again"
            )
        if segments[0].dtype.name not in STORAGE_DTYPES:
            raise ValueError(f"{path}: embeddings are {segments[0].dtype.name}, expected one of {STORAGE_DTYPES}")
        index = cls.__new__(cls)
        index._setup(segments, inverse_norms, meta["keys"], meta["labels"], dims, backend)
        return index
