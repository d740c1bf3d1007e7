"""The rules for Matryoshka dims and the weights over them: one definition, used by the config
(at load time, naming the key), the model, the losses and distillation (at build time).

Each `*_problem` function returns what is wrong, in words, or None; `require` turns a problem
into a ValueError that names the key.
"""

from __future__ import annotations

from collections.abc import Sequence


def dims_problem(dims: Sequence[int]) -> str | None:
    """Dims are a non-empty, strictly increasing list of positive ints (nested prefixes)."""
    if not dims or any(d <= 0 for d in dims) or any(a >= b for a, b in zip(dims, dims[1:])):
        return f"must be strictly increasing positive ints (at least one), got {list(dims)}"
    return None


def dim_weights_problem(weights: Sequence[float], dims: Sequence[int]) -> str | None:
    """One non-negative weight per dim, with a positive sum (loss.dim_weights)."""
    if len(weights) != len(dims):
        return f"has {len(weights)} weights but model.mrl_dims has {len(dims)} dims {list(dims)}"
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        return f"must be >= 0 with a positive sum, got {list(weights)}"
    return None


def teacher_dims_problem(teacher_dims: Sequence[int], student_dims: Sequence[int]) -> str | None:
    """A teacher supervises some of the student's dims (distill.teachers[i].dims)."""
    problem = dims_problem(teacher_dims)
    if problem:
        return problem
    missing = [d for d in teacher_dims if d not in student_dims]
    if missing:
        return f"{missing} not in the student's dims {list(student_dims)} (model.mrl_dims)"
    return None


def weight_problem(weight: float) -> str | None:
    return f"must be >= 0, got {weight}" if weight < 0 else None


def require(problem: str | None, key: str) -> None:
    """Raise ValueError("KEY: PROBLEM") when there is a problem."""
    if problem:
        raise ValueError(f"{key}: {problem}")
