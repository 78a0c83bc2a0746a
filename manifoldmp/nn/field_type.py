"""SO(2) field types: the layout of gauge-equivariant features (DESIGN.md section 0).

A :class:`FieldType` such as ``"8x0+4x1+2x2"`` lists multiplicities of SO(2) types. Features
are real ``(..., V, D)`` tensors with ``D = FieldType.dim``: every type-0 channel is one
column; every type-``n`` channel (``n >= 1``) is two adjacent columns ``(x, y) = (Re z, Im z)``;
terms appear in the order written. Under ``domain.regauge(alpha)`` each ``z`` becomes
``exp(-1j n alpha) z`` (:meth:`FieldType.transform`).

Only non-negative types are stored: ``rho_{-n}`` is ``rho_n`` composed with complex
conjugation, so a negative type is written as the conjugate of a positive one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

from manifoldmp.errors import ParameterError

__all__ = ["FieldType"]

_TERM = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


class FieldType:
    """Immutable, hashable list of ``(multiplicity, type)`` terms.

    Parameters
    ----------
    spec : str or FieldType or iterable of (int, int)
        ``"8x0+4x1+2x2"`` or ``[(8, 0), (4, 1), (2, 2)]``. Terms with multiplicity 0 are
        dropped; types must be non-negative integers.

    Examples
    --------
    >>> ft = FieldType("8x0+4x1+2x2")
    >>> ft.dim, ft.types, ft.multiplicity(1)
    (20, (0, 1, 2), 4)
    >>> FieldType(str(ft)) == ft
    True
    """

    __slots__ = ("_terms",)

    def __init__(self, spec: Any) -> None:
        if isinstance(spec, FieldType):
            terms: tuple[tuple[int, int], ...] = spec._terms
        elif isinstance(spec, str):
            terms = self._parse(spec)
        else:
            try:
                raw = list(spec)
                terms = tuple((int(m), int(n)) for m, n in raw)
            except (TypeError, ValueError) as exc:
                raise ParameterError(
                    f"a field type is a string like '8x0+4x1' or a list of (multiplicity, "
                    f"type) pairs, got {spec!r}") from exc
        for m, n in terms:
            if m < 0 or n < 0:
                raise ParameterError(
                    f"multiplicities and types must be >= 0, got term {m}x{n} (a negative type "
                    f"is the conjugate of a positive one)")
        object.__setattr__(self, "_terms", tuple((m, n) for m, n in terms if m > 0))

    @staticmethod
    def _parse(spec: str) -> tuple[tuple[int, int], ...]:
        if not spec.strip():
            return ()
        terms = []
        for part in spec.split("+"):
            match = _TERM.match(part)
            if match is None:
                raise ParameterError(
                    f"cannot parse field type term {part.strip()!r} of {spec!r}; expected "
                    f"'<multiplicity>x<type>' such as '4x1'")
            terms.append((int(match.group(1)), int(match.group(2))))
        return tuple(terms)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FieldType is immutable")

    # ------------------------------------------------------------------ protocol
    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._terms)

    def __len__(self) -> int:
        return len(self._terms)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = FieldType(other)
            except ParameterError:
                return False
        return isinstance(other, FieldType) and self._terms == other._terms

    def __hash__(self) -> int:
        return hash(self._terms)

    def __repr__(self) -> str:
        return f"FieldType({str(self)!r})"

    def __str__(self) -> str:
        return "+".join(f"{m}x{n}" for m, n in self._terms)

    def __add__(self, other: Any) -> FieldType:
        return FieldType(self._terms + FieldType(other)._terms)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FieldType, (str(self),))

    # ------------------------------------------------------------------ properties
    @property
    def terms(self) -> tuple[tuple[int, int], ...]:
        """``((multiplicity, type), ...)`` in layout order."""
        return self._terms

    @property
    def dim(self) -> int:
        """Number of real columns: ``sum m * (1 if n == 0 else 2)``."""
        return sum(m * (1 if n == 0 else 2) for m, n in self._terms)

    @property
    def types(self) -> tuple[int, ...]:
        """Distinct types, ascending."""
        return tuple(sorted({n for _, n in self._terms}))

    @property
    def max_type(self) -> int:
        """Largest type (0 for an empty or scalar type)."""
        return max(self.types, default=0)

    def multiplicity(self, n: int) -> int:
        """Total number of type-``n`` channels."""
        return sum(m for m, k in self._terms if k == n)

    def simplify(self) -> FieldType:
        """One term per type, ascending: the layout of :meth:`split` / :meth:`merge`."""
        return FieldType([(self.multiplicity(n), n) for n in self.types])

    @property
    def is_simple(self) -> bool:
        """Whether :meth:`simplify` is the identity (one term per type, ascending)."""
        return self == self.simplify()

    def slices(self) -> list[slice]:
        """Column slice of every term, in order."""
        out, start = [], 0
        for m, n in self._terms:
            width = m * (1 if n == 0 else 2)
            out.append(slice(start, start + width))
            start += width
        return out

    # ------------------------------------------------------------------ representations
    def rep(self, angle: Any) -> torch.Tensor:
        """Real matrix of the rotation by ``angle``: ``z -> exp(1j n angle) z`` on each channel.

        Parameters
        ----------
        angle : float or (...) Tensor

        Returns
        -------
        (..., dim, dim) Tensor
            Block diagonal: 1 for type 0, ``[[cos n a, -sin n a], [sin n a, cos n a]]`` for
            type ``n``. ``rep(a) @ rep(b) = rep(a + b)``; ``rep(-a) = rep(a).T``. The gauge
            change ``regauge(alpha)`` acts on features as ``rep(-alpha)``.
        """
        a = torch.as_tensor(angle, dtype=torch.float64) if not isinstance(angle, torch.Tensor) \
            else angle
        if not a.is_floating_point():
            a = a.to(torch.float64)
        out = torch.zeros(*a.shape, self.dim, self.dim, dtype=a.dtype, device=a.device)
        col = 0
        for m, n in self._terms:
            for _ in range(m):
                if n == 0:
                    out[..., col, col] = 1
                    col += 1
                else:
                    c, s = torch.cos(n * a), torch.sin(n * a)
                    out[..., col, col] = c
                    out[..., col, col + 1] = -s
                    out[..., col + 1, col] = s
                    out[..., col + 1, col + 1] = c
                    col += 2
        return out

    def check(self, x: Any, name: str = "x") -> torch.Tensor:
        """Validate that ``x`` is a real tensor whose last dimension is :attr:`dim`."""
        if not isinstance(x, torch.Tensor):
            raise ParameterError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.is_complex() or not x.is_floating_point():
            raise ParameterError(
                f"{name} must be a real floating tensor laid out by {self} (type-n channels "
                f"as (Re, Im) column pairs), got dtype {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ParameterError(
                f"{name} must have last dimension {self.dim} for field type {self}, got shape "
                f"{tuple(x.shape)}")
        return x

    def split(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Features by type: ``{n: (..., C_n)}``, real for ``n = 0`` and complex otherwise.

        Channels of one type from several terms are concatenated in layout order.
        """
        x = self.check(x)
        parts: dict[int, list[torch.Tensor]] = {}
        for (m, n), sl in zip(self._terms, self.slices(), strict=True):
            block = x[..., sl]
            if n != 0:
                block = torch.view_as_complex(
                    block.reshape(*block.shape[:-1], m, 2).contiguous())
            parts.setdefault(n, []).append(block)
        return {n: torch.cat(p, dim=-1) if len(p) > 1 else p[0] for n, p in parts.items()}

    def merge(self, parts: dict[int, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`: a ``(..., dim)`` real tensor from ``{n: (..., C_n)}``."""
        used = {n: 0 for n in self.types}
        blocks = []
        for m, n in self._terms:
            if n not in parts:
                raise ParameterError(f"missing type-{n} features for field type {self}")
            z = parts[n][..., used[n]:used[n] + m]
            if z.shape[-1] != m:
                raise ParameterError(
                    f"type-{n} features have {parts[n].shape[-1]} channels, field type {self} "
                    f"needs {self.multiplicity(n)}")
            used[n] += m
            if n == 0:
                blocks.append(z.real if z.is_complex() else z)
            else:
                if not z.is_complex():
                    raise ParameterError(f"type-{n} features must be complex, got {z.dtype}")
                blocks.append(torch.view_as_real(z).reshape(*z.shape[:-1], 2 * m))
        return torch.cat(blocks, dim=-1)

    def transform(self, x: torch.Tensor, alpha: Any) -> torch.Tensor:
        """Features after ``regauge(alpha)``: type-``n`` ``z_i`` becomes ``exp(-1j n alpha_i) z_i``.

        Parameters
        ----------
        x : (V, dim) Tensor
        alpha : (V,) Tensor or array_like
            Frame rotation per vertex (radians).

        Returns
        -------
        (V, dim) Tensor
        """
        x = self.check(x)
        a = torch.as_tensor(alpha, device=x.device)
        if a.dim() != 1 or a.shape[0] != x.shape[-2]:
            raise ParameterError(
                f"alpha must have shape ({x.shape[-2]},), one angle per vertex, got "
                f"{tuple(a.shape)}")
        out = []
        for (_, n), sl in zip(self._terms, self.slices(), strict=True):
            block = x[..., sl]
            if n == 0:
                out.append(block)
                continue
            c = torch.cos(n * a).to(x.dtype)[:, None]
            s = torch.sin(n * a).to(x.dtype)[:, None]
            re, im = block[..., 0::2], block[..., 1::2]
            # exp(-i n a) (re + i im) = (c re + s im) + i (c im - s re)
            out.append(torch.stack([c * re + s * im, c * im - s * re], dim=-1)
                       .reshape(block.shape))
        return torch.cat(out, dim=-1) if out else x

    def random(self, n_vertices: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Standard normal features ``(n_vertices, dim)``."""
        return torch.randn(n_vertices, self.dim, generator=generator, dtype=dtype)


def as_field_type(value: Any, name: str) -> FieldType:
    """``FieldType(value)`` with the argument name in the error."""
    try:
        return FieldType(value)
    except ParameterError as exc:
        raise ParameterError(f"{name}: {exc}") from exc

