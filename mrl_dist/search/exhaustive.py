"""Top-k rows by cosine at an MRL prefix of the stored enrolments, scored in blocks (backend "torch").

    segments [N, w_1], [N, w_2], ... (the prefix's columns, each contiguous), inverse [N] =
    1 / ||row[:d]||, queries [B, d] unit
        -> scan:    every row's cosine, block by block; only the maximum of each group of `GROUP`
                    consecutive rows is kept (and the maximum of each `GROUP` groups, ...)
        -> descend: the k best groups, level by level, then their rows scored again
        -> (rows [B, k], cosines [B, k]), best first

Why groups: a plain top-k over 1M scores per query costs as much as the 64-D matmul that made
them. The exact top k rows lie in the k groups with the highest maxima (each such row lifts its
own group to at least the k-th score, so at most k groups reach it), so keeping the maxima (one
value per `GROUP` scores, taken while the block is in cache) loses nothing.

Why segments: the index stores its columns split at the MRL dims, each block contiguous, so the
64-D scan streams 64 values per row instead of striding over 256, and the rows scored again
are read as contiguous runs (a 1.7x faster gather than from a [N, 256] matrix's prefix).

Memory: a block of rows and its scores [ROW_BLOCK, queries] stay in cache; the group maxima of
one block of queries are [N / GROUP, queries], capped at `MAXIMA_BYTES` by scanning fewer
queries at a time.

Precision: the scan runs in float32 (exact) or bfloat16. On CPUs with AMX / AVX512-BF16 a
bfloat16 matmul costs a fraction of a float32 one (elsewhere it is emulated and slower); the
rows of the chosen groups are scored again in float32 either way.

bfloat16 group maxima: torch's bfloat16 `amax` costs twice the matmul it follows, so bfloat16
scores are reduced as their int16 bit patterns ("keys"). For values >= +0 the bit patterns
order like the values, and every negative value's key is below every such key; so the k
groups with the highest keys are the k with the highest maxima whenever each of them holds a
value >= +0 (in any real index the k best cosines of many rows are positive). A query for which
that fails is scanned again in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Rows per group (see the module docstring): k * GROUP rows are scored a second time.
GROUP = 8
#: Rows whose scores [ROW_BLOCK, queries] are computed and reduced while in cache.
ROW_BLOCK = 256
#: Values of the renormalised block of rows [rows, dim] prepared at once (about 1 MB float32).
PREPARED_VALUES = 1 << 18
#: Group maxima per query at which the descent starts with a plain top-k.
COARSEST = 4096
#: Most queries scanned together (each pass over the matrix is shared by them).
QUERY_BLOCK = 1024
#: Cap on the group maxima of one block of queries.
MAXIMA_BYTES = 512 << 20
#: Scores [N, queries] held at once when every row is ranked (small indexes; 32 MB).
DIRECT_VALUES = 1 << 23
#: Candidate values gathered at once when scoring rows again ([queries, rows, width], 1 MB: in cache).
GATHER_VALUES = 1 << 18


class Workspace:
    """Work buffers kept between searches: allocating the 1M-row maxima afresh costs as much in
    page faults as scanning a block of queries."""

    def __init__(self):
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A buffer of `shape` (contents undefined), reusing the memory of the last one of `name`."""
        numel = 1
        for size in shape:
            numel *= size
        buffer = self._buffers.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[name, dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(*shape)


def score_rows(
    segments: Sequence[torch.Tensor],
    inverse: torch.Tensor,
    unit_queries: torch.Tensor,
    rows: torch.Tensor,
    workspace: Workspace,
) -> torch.Tensor:
    """Cosine of each query [B, d] with its own rows [B, m] -> [B, m] float32: per segment, the
    rows' values gathered and multiplied with that part of the query, the parts summed."""
    count, width = rows.shape
    scores = torch.zeros(count, width)
    partial = torch.empty(count, width)
    column = 0
    for segment in segments:
        size = segment.shape[1]
        queries = unit_queries[:, column : column + size, None].contiguous().numpy()
        chunk = max(1, GATHER_VALUES // (width * size))
        gathered = workspace.get("gathered", chunk * width, size)
        for start in range(0, count, chunk):
            block = rows[start : start + chunk].reshape(-1)
            n = len(block) // width
            if segment.dtype == torch.float32:
                torch.index_select(segment, 0, block, out=gathered[: len(block)])
            else:
                gathered[: len(block)] = torch.index_select(segment, 0, block)
            # numpy's stacked matmul (a matrix-vector product per query) is ~5x torch.bmm's speed here
            np.matmul(
                gathered[: len(block)].view(n, width, size).numpy(),
                queries[start : start + n],
                out=partial[start : start + n, :, None].numpy(),
            )
        scores += partial
        column += size
    return scores.mul_(inverse[rows])


def top_rows(
    segments: Sequence[torch.Tensor],
    inverse: torch.Tensor,
    unit_queries: torch.Tensor,
    k: int,
    workspace: Workspace,
    scan_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best rows for each query [B, d] (unit), scored as ``rows[:, :d] @ q * inverse`` where
    `segments` hold the rows' first d values: (rows [B, k] int64, cosines [B, k] float32), best first.

    Exact with a float32 scan. With ``scan_dtype=torch.bfloat16`` the groups are chosen by
    bfloat16 scores (their rows are still scored in float32), so a row within bfloat16 rounding
    (~0.4 %) of the k-th score may be swapped for another.
    """
    total = len(segments[0])
    if k * GROUP >= total:  # the k best groups would hold (nearly) every row: rank the rows themselves
        return _top_rows_direct(segments, inverse, unit_queries, k, workspace)
    itemsize = torch.empty(0, dtype=scan_dtype).element_size()
    step = max(1, min(QUERY_BLOCK, MAXIMA_BYTES // (itemsize * (-(-total // GROUP)))))
    parts = []
    for start in range(0, len(unit_queries), step):
        queries = unit_queries[start : start + step]
        levels = _scan(segments, inverse, queries, workspace, scan_dtype)
        groups = _descend(levels, k)
        if scan_dtype == torch.bfloat16:  # keys: exact only where each chosen group holds a value >= +0
            unsure = (torch.gather(levels[0].T, 1, groups) < 0).any(dim=1).nonzero()[:, 0]
            if len(unsure):
                groups[unsure] = _descend(_scan(segments, inverse, queries[unsure], workspace, torch.float32), k)
        candidates, past_end = _expand(groups, total)
        scores = score_rows(segments, inverse, queries, candidates, workspace).masked_fill_(past_end, -torch.inf)
        best, order = torch.topk(scores, k, dim=1)
        parts.append((torch.gather(candidates, 1, order), best))
    return torch.cat([rows for rows, _ in parts]), torch.cat([scores for _, scores in parts])


def _prepare(segments: Sequence[torch.Tensor], inverse: torch.Tensor, start: int, out: torch.Tensor) -> None:
    """`out` [n, d] = rows start..start + n of the segments side by side, times their inverse norms."""
    n, column = len(out), 0
    scale = inverse[start : start + n, None]
    for segment in segments:
        size = segment.shape[1]
        torch.mul(segment[start : start + n], scale, out=out[:, column : column + size])
        column += size


def _top_rows_direct(
    segments: Sequence[torch.Tensor], inverse: torch.Tensor, unit_queries: torch.Tensor, k: int, workspace: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_rows` by a full top-k over every row's score (small indexes, or k close to N)."""
    total, dim = len(segments[0]), unit_queries.shape[1]
    prepared = workspace.get("prepared", ROW_BLOCK, dim)
    step = max(1, DIRECT_VALUES // total)
    parts = []
    for start in range(0, len(unit_queries), step):
        queries = unit_queries[start : start + step]
        scores = torch.empty(len(queries), total)
        for first in range(0, total, ROW_BLOCK):
            n = min(ROW_BLOCK, total - first)
            _prepare(segments, inverse, first, prepared[:n])
            torch.mm(queries, prepared[:n].T, out=scores[:, first : first + n])
        best, rows = torch.topk(scores, k, dim=1)
        parts.append((rows, best))
    return torch.cat([rows for rows, _ in parts]), torch.cat([scores for _, scores in parts])


def _scan(
    segments: Sequence[torch.Tensor],
    inverse: torch.Tensor,
    queries: torch.Tensor,
    workspace: Workspace,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """Group maxima of every row's cosine with each query [b, d], computed in `dtype`: ``[level 1
    [ceil(N / GROUP), b], level 2 (maxima of GROUP level-1 groups), ...]``, down to `COARSEST`
    values per query; for bfloat16 the maxima of the keys (int16, see the module docstring)."""
    total, (count, dim) = len(segments[0]), queries.shape
    key_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    queries_t = queries.T.to(dtype).contiguous()
    span = GROUP * GROUP
    prepared_rows = max(span, PREPARED_VALUES // dim // span * span)  # a multiple of GROUP * GROUP
    prepared = workspace.get("prepared", prepared_rows, dim, dtype=dtype)
    scores = workspace.get("scores", ROW_BLOCK, count, dtype=dtype)
    keys = scores.view(key_dtype)
    level1 = workspace.get("level1", -(-total // GROUP), count, dtype=key_dtype)
    level2 = workspace.get("level2", -(-total // span), count, dtype=key_dtype)
    for start in range(0, total, prepared_rows):
        n = min(prepared_rows, total - start)
        _prepare(segments, inverse, start, prepared[:n])
        for offset in range(0, n, ROW_BLOCK):
            m = min(ROW_BLOCK, n - offset)
            torch.mm(prepared[offset : offset + m], queries_t, out=scores[:m])
            first = (start + offset) // GROUP
            _group_max(keys[:m], level1[first : first + -(-m // GROUP)])
        first = start // GROUP
        _group_max(level1[first : first + -(-n // GROUP)], level2[start // span : start // span + -(-n // span)])
    levels = [level1, level2]
    while len(levels[-1]) > COARSEST:
        coarser = torch.empty(-(-len(levels[-1]) // GROUP), count, dtype=key_dtype)
        _group_max(levels[-1], coarser)
        levels.append(coarser)
    return levels


def _group_max(values: torch.Tensor, out: torch.Tensor) -> None:
    """`out` [ceil(n / GROUP), b] = the maximum of each GROUP consecutive rows of `values` [n, b]
    (the last group may be short)."""
    n, count = values.shape
    full = n // GROUP
    if full:
        torch.amax(values[: full * GROUP].view(full, GROUP, count), dim=1, out=out[:full])
    if full < len(out):
        torch.amax(values[full * GROUP :], dim=0, out=out[full])


def _lowest(dtype: torch.dtype) -> float:
    """The lowest value of `dtype` (-inf for floats): what padding past the last row scores."""
    return -torch.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def _expand(groups: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups [b, k] -> (their positions [b, k * GROUP], clamped to n - 1; mask of those past n)."""
    positions = (groups[:, :, None] * GROUP + torch.arange(GROUP)).reshape(len(groups), -1)
    past_end = positions >= n
    return positions.clamp_(max=n - 1), past_end


def _descend(levels: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k best level-1 groups [b, k] from the maxima `levels` (finest first, the finest holding
    more than k): a top-k over the coarsest level with at least k groups, then at each finer level
    a top-k over the children of the k groups kept (at least k of them are real)."""
    start = max(position for position, level in enumerate(levels) if len(level) >= k)
    best = torch.topk(levels[start].T, k, dim=1, sorted=False).indices
    for finer in reversed(levels[:start]):
        candidates, past_end = _expand(best, len(finer))
        scores = torch.gather(finer.T, 1, candidates).masked_fill_(past_end, _lowest(finer.dtype))
        best = torch.gather(candidates, 1, torch.topk(scores, k, dim=1, sorted=False).indices)
    return best
