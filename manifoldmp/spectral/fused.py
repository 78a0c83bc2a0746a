"""Fused CPU kernels for the Chebyshev heat recurrence: two degrees per pass over memory.

On CPU the recurrence ``y_{k+1} = S y_k - y_{k-1}`` (:mod:`~manifoldmp.spectral.chebyshev`)
is bound by memory traffic: with MKL through torch, each degree is one sparse product that
reads ``y_k`` and ``y_{k-1}`` and writes ``y_{k+1}``, then one accumulation that reads
``y_{k+1}`` and the sum again (100k vertices, 64 complex channels: 17 + 6 ms per degree, five
passes over 100 MB blocks). No library fuses these, so this module does, by hand:

* **Two degrees per pass** (a wavefront, as in matrix-powers kernels). After a
  reverse Cuthill-McKee ordering, every row couples only to rows within the bandwidth ``w``.
  The rows go by in chunks of at least ``w``: ``y_{k+1}`` on chunk ``c``, then ``y_{k+2}`` on
  chunk ``c - 1``, whose neighbours' ``y_{k+1}`` now all exist, while chunk ``c - 1`` is
  still in cache. ``y_{k+1}`` is written over ``y_{k-1}`` and ``y_{k+2}`` over ``y_k``
  (no row still needs them), and both are added into the sum in the same pass. Each
  thread runs its own wavefront on a contiguous range of rows; the first and last chunk of
  each range wait until every thread is done (their neighbours belong to other threads),
  then go in a second, short parallel pass.
* **Split complex rows.** A complex block is held as ``(V, 2C)`` real rows ``[Re | Im]``, so
  the complex product vectorizes as real arithmetic without the stacked ``(2V, 2V)`` operator
  (:func:`~manifoldmp.spectral.chebyshev.stacked_real`) and reads each complex neighbour once.
* **Sums in registers.** The row product runs in tiles whose sums stay in SIMD registers
  through all nonzeros of a row (:func:`_tile_intrinsic`, LLVM vector code through a numba
  intrinsic: numba's own loops keep them in memory).
* The input is gathered into this layout, in the new order and scaled by ``M^1/2``, in one
  pass, and the output is scattered back the same way.

100k-vertex torus, 64 complex channels, 2 cores: 10-11 ms per two degrees and column block of
32 channels (12-14 ms with the sums in memory), against 2 x 23 ms for torch's product and
accumulation of all 64 (benchmarks/README.md). Results equal the unfused recurrence to
rounding (the sums run in another order); the tests hold the two paths to each other.

Numba compiles these kernels on first use (about 15 s per precision on 2 cores, logged;
cached on disk afterwards, then loading takes a fraction of a second). Without
numba (:func:`fused_available` is False) the torch path runs instead.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from manifoldmp.errors import ManifoldmpError, ParameterError
from manifoldmp.operators.sparse import column_real_dot

__all__ = ["FusedLanczos", "FusedOperator", "FusedUnavailable", "check_block",
           "fused_available", "release_workspace"]

log = logging.getLogger(__name__)

#: Bytes per row of a column block of the recurrence (:class:`FusedRecurrence`).
ROW_BYTES = 512

#: Narrowest input the callers hand to the fused kernels for a real operator, in bytes per
#: row (complex columns count twice): below it the kernels do not beat torch's product.
#: Torch's flow time over the fused one with the register tiles (benchmarks/bench_fused.py:
#: icosphere(5), armadillo, boot, float32 and float64, Chebyshev): real operators at 16-32
#: bytes 0.95-1.32x, at 64 bytes 0.94-1.70x, at 128 bytes 1.28-1.84x. The kernels themselves
#: take any width.
MIN_INPUT_ROW_BYTES = 128

#: The same for a complex operator (types ``n != 0``), where the fused kernels win at every
#: width measured: 32 bytes 1.91-2.05x, 64 bytes 1.69-3.54x (Chebyshev); Lanczos 1.09-1.50x.
MIN_COMPLEX_INPUT_ROW_BYTES = 32

#: Least chunk length in rows (below, the per-chunk loop overhead shows); the chunk is never
#: shorter than the bandwidth, which correctness needs.
MIN_CHUNK_ROWS = 256

try:  # pragma: no cover - exercised wherever numba is installed (a dependency)
    import numba
    from llvmlite import ir
    from numba import njit, prange
    from numba.core import cgutils, types
    from numba.core.errors import TypingError
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the torch path
    numba = None


class FusedUnavailable(ManifoldmpError):
    """The fused kernels cannot run in this process (see :func:`fused_available`)."""


#: ``forked``: this process is a forked child (of a parent that had imported this module).
_STATE = {"forked": False}

#: Precisions whose kernels this process has used (the first use compiles or loads them).
_LOADED: set[str] = set()


def _after_fork_in_child() -> None:
    _STATE["forked"] = True


if hasattr(os, "register_at_fork"):   # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def fused_available() -> bool:
    """Whether the fused kernels can run: numba importable, and not in a forked child.

    Numba's OpenMP threading layer shares GNU libgomp with torch, and libgomp is not
    fork-safe: in a child forked after the parent ran any OpenMP region (torch's own
    operations count, not only these kernels), the kernels' next parallel launch hangs or
    aborts ("fork() called from a process already using GNU OpenMP"). That is every
    ``DataLoader`` worker with the default ``fork`` start method. Forked children therefore take
    torch's path (which works there once the child sets one thread, as ``DataLoader`` does);
    children started with ``spawn`` are not affected.
    """
    return numba is not None and not _STATE["forked"]


def _jit(**options: Any) -> Any:
    """``numba.njit`` with the compiled code cached on disk where a cache directory is writable.

    Numba raises ``RuntimeError`` ("no locator available") at definition time when it finds
    no cache location it can use for the source file; the kernels are then compiled in each
    process instead of failing the import.
    """
    def wrap(f: Any) -> Any:
        try:
            return njit(cache=True, **options)(f)
        except RuntimeError:  # pragma: no cover - depends on the file system
            return njit(**options)(f)
    return wrap


#: Bytes of the widest SIMD register the row product's tiles use (:func:`_tile_intrinsic`):
#: 64, an AVX-512 register; LLVM splits each into two on AVX2 and four on 128-bit machines.
VECTOR_BYTES = 64


def _check_tile_types(X: Any, row: Any, indices: Any, dre: Any, dim: Any) -> None:
    """Refuse, at compile time, what the tiles cannot address (they read raw memory)."""
    if not (isinstance(X, types.Array) and X.ndim == 2 and X.layout == "C"
            and isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
            and X.dtype in (types.float32, types.float64) and row.dtype == X.dtype
            and dre.dtype == X.dtype and dim.dtype == X.dtype
            and indices.dtype in (types.int32, types.int64)):
        raise TypingError(f"row-product tile: unsupported arguments {X}, {row}, {indices}, "
                          f"{dre}, {dim} (C-contiguous float32/float64 blocks expected)")


class _TileCode:
    """LLVM helpers of one tile: vector type, addressing, splat and ``fmuladd``."""

    def __init__(self, context: Any, builder: Any, dtype: Any, lanes: int) -> None:
        self.b = builder
        self.fty = context.get_value_type(dtype)
        self.vty = ir.VectorType(self.fty, lanes)
        self.lanes = lanes
        self.align = dtype.bitwidth // 8
        name = f"llvm.fmuladd.v{lanes}{'f32' if dtype == types.float32 else 'f64'}"
        self.fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vty, [self.vty] * 3), name)

    def ptr(self, base: Any, off: Any) -> Any:
        return self.b.bitcast(self.b.gep(base, [off]), self.vty.as_pointer())

    def load(self, base: Any, off: Any) -> Any:
        return self.b.load(self.ptr(base, off), align=self.align)

    def store(self, value: Any, base: Any, off: Any) -> None:
        self.b.store(value, self.ptr(base, off), align=self.align)

    def splat(self, x: Any) -> Any:
        i32 = ir.IntType(32)
        v = self.b.insert_element(ir.Constant(self.vty, ir.Undefined), x, ir.Constant(i32, 0))
        return self.b.shuffle_vector(v, ir.Constant(self.vty, ir.Undefined),
                                     ir.Constant(ir.VectorType(i32, self.lanes),
                                                 [0] * self.lanes))

    def fma(self, a: Any, x: Any, slot: Any) -> None:
        """``slot += a x`` (a stack slot of the vector type)."""
        self.b.store(self.b.call(self.fmuladd, [a, x, self.b.load(slot)]), slot)


def _operands(context: Any, builder: Any, sig: Any, args: Any) -> tuple:
    """Data pointers of the five arrays, ``X``'s row stride, the integer arguments as i64."""
    tys = sig.args
    arrays = [context.make_array(ty)(context, builder, v)
              for ty, v in zip(tys[:5], args[:5], strict=True)]
    ldx = context.cast(builder, cgutils.unpack_tuple(builder, arrays[0].shape, 2)[1],
                       types.intp, types.int64)   # C order: the row stride
    ints = [context.cast(builder, v, ty, types.int64)
            for v, ty in zip(args[5:], tys[5:], strict=True)]
    return (*(arr.data for arr in arrays), ldx, *ints)


def _column_index(builder: Any, ind: Any, p: Any) -> Any:
    j = builder.load(builder.gep(ind, [p]))
    return builder.sext(j, ir.IntType(64)) if j.type.width < 64 else j


def _tile_intrinsic(nvec: int, vbytes: int, cplx: bool) -> Any:
    """A numba intrinsic: one tile of the row product with its sums held in SIMD registers.

    ``tile(X, row, indices, dre, dim, half, q0, p0, p1)`` adds
    ``sum_{p0 <= p < p1} S_p X[indices[p]]`` into ``row`` on ``nvec`` vectors of
    ``lanes = vbytes / itemsize`` columns from ``q0``. Complex (``cplx``): ``S_p = dre[p] +
    i dim[p]`` on split rows, real parts at ``q0``, imaginary parts at ``half + q0``. Real:
    ``S_p = dre[p]`` (``dim`` and ``half`` unused). Where ``lanes`` would be below one (a
    4-byte register for float64) the tile does nothing; :func:`_row_product` never calls it.

    Why by hand: numba compiles the plain loops with the sums in ``row``, in memory, since
    LLVM cannot tell that ``row`` and ``X`` do not overlap: every nonzero then loads and
    stores the whole row again, and those loads and stores bound the product. Here the sums
    live in vector registers (stack slots, which LLVM promotes) through all nonzeros of the
    row, and each nonzero costs the loads of its row of ``X`` and fused multiply-adds
    (``llvm.fmuladd``: fused where the machine has FMA, a multiply and an add elsewhere).
    Measured in benchmarks/README.md. ``X`` and ``row`` must be C-contiguous (the
    recurrence's blocks are); anything else is refused when the kernel is compiled.
    """
    @intrinsic
    def tile(typingctx, X, row, indices, dre, dim, half, q0, p0, p1):  # pragma: no cover
        _check_tile_types(X, row, indices, dre, dim)
        sig = types.void(X, row, indices, dre, dim, half, q0, p0, p1)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            lanes = vbytes // (X.dtype.bitwidth // 8)
            if lanes < 1:
                return context.get_dummy_value()
            Xd, rowd, ind, dred, dimd, ldx, half_, q0_, p0_, p1_ = _operands(
                context, builder, sig, args)
            tc = _TileCode(context, builder, X.dtype, lanes)
            i64 = ir.IntType(64)
            offs = [builder.add(q0_, ir.Constant(i64, v * lanes)) for v in range(nvec)]
            if cplx:
                offs += [builder.add(builder.add(half_, q0_), ir.Constant(i64, v * lanes))
                         for v in range(nvec)]
            sums = [cgutils.alloca_once_value(builder, tc.load(rowd, off)) for off in offs]
            with cgutils.for_range_slice(builder, p0_, p1_, ir.Constant(i64, 1),
                                         inc=True) as (p, _):
                base = builder.mul(_column_index(builder, ind, p), ldx)
                xs = [tc.load(Xd, builder.add(base, off)) for off in offs]
                a = tc.splat(builder.load(builder.gep(dred, [p])))
                for acc, x in zip(sums, xs, strict=True):
                    tc.fma(a, x, acc)
                if cplx:
                    b = tc.splat(builder.load(builder.gep(dimd, [p])))
                    nb = builder.fneg(b)
                    for v in range(nvec):   # re -= b xi, im += b xr
                        tc.fma(nb, xs[nvec + v], sums[v])
                        tc.fma(b, xs[v], sums[nvec + v])
            for acc, off in zip(sums, offs, strict=True):
                tc.store(builder.load(acc), rowd, off)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _sum_tile_intrinsic(nvec: int, vbytes: int, cplx: bool) -> Any:
    """A numba intrinsic: one tile of a row sum on interleaved complex (or real) rows.

    ``tile(X, row, indices, dre, dim, off, q0, p0, p1)`` sets ``row`` on ``nvec`` vectors
    of ``lanes = vbytes / itemsize`` entries from ``q0`` to
    ``sum_{p0 <= p < p1} S_p X[off + indices[p]]``. Complex (``cplx``): ``S_p = dre[p] +
    i dim[p]`` on rows of interleaved ``(re, im)`` pairs, the layout of a complex array's
    real view, as two sums ``A = sum dre x`` and ``B = sum dim x`` finished as ``A + i B``
    (one swap of each pair of ``B`` per row, not per nonzero); ``lanes`` must be even.
    Real: ``S_p = dre[p]``. Tiles that cannot exist (fewer lanes than a complex number) do
    nothing. The sums stay in registers as in :func:`_tile_intrinsic` (why: there).
    """
    @intrinsic
    def tile(typingctx, X, row, indices, dre, dim, off, q0, p0, p1):  # pragma: no cover
        _check_tile_types(X, row, indices, dre, dim)
        sig = types.void(X, row, indices, dre, dim, off, q0, p0, p1)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            lanes = vbytes // (X.dtype.bitwidth // 8)
            if lanes < (2 if cplx else 1):
                return context.get_dummy_value()
            Xd, rowd, ind, dred, dimd, ldx, off_, q0_, p0_, p1_ = _operands(
                context, builder, sig, args)
            tc = _TileCode(context, builder, X.dtype, lanes)
            i64, i32 = ir.IntType(64), ir.IntType(32)
            zero = ir.Constant(tc.vty, [ir.Constant(tc.fty, 0.0)] * lanes)
            offs = [builder.add(q0_, ir.Constant(i64, v * lanes)) for v in range(nvec)]
            # fewer than four chains of sums wait on the latency of the multiply-adds: then
            # two sets of sums take the even and the odd nonzeros, added at the end
            sets = 2 if nvec * (2 if cplx else 1) < 4 else 1
            As = [[cgutils.alloca_once_value(builder, zero) for _ in offs] for _ in range(sets)]
            Bs = [[cgutils.alloca_once_value(builder, zero) for _ in offs] if cplx else []
                  for _ in range(sets)]

            def nonzero(p: Any, k: int) -> None:
                base = builder.mul(builder.add(_column_index(builder, ind, p), off_), ldx)
                xs = [tc.load(Xd, builder.add(base, o)) for o in offs]
                a = tc.splat(builder.load(builder.gep(dred, [p])))
                for acc, x in zip(As[k], xs, strict=True):
                    tc.fma(a, x, acc)
                if cplx:
                    b = tc.splat(builder.load(builder.gep(dimd, [p])))
                    for acc, x in zip(Bs[k], xs, strict=True):
                        tc.fma(b, x, acc)

            count = builder.sub(p1_, p0_)
            pairs_end = builder.add(p0_, builder.mul(builder.sdiv(count, ir.Constant(i64, sets)),
                                                     ir.Constant(i64, sets)))
            with cgutils.for_range_slice(builder, p0_, pairs_end, ir.Constant(i64, sets),
                                         inc=True) as (p, _):
                for k in range(sets):
                    nonzero(builder.add(p, ir.Constant(i64, k)), k)
            if sets == 2:
                with builder.if_then(builder.icmp_signed("<", pairs_end, p1_)):
                    nonzero(pairs_end, 0)
                for k, acc in enumerate(As[0]):
                    builder.store(builder.fadd(builder.load(acc), builder.load(As[1][k])), acc)
                for k, acc in enumerate(Bs[0]):
                    builder.store(builder.fadd(builder.load(acc), builder.load(Bs[1][k])), acc)
            A, B = As[0], Bs[0]
            if cplx:   # A + i B: i (u + i w) = -w + i u on each (re, im) pair
                swap = ir.Constant(ir.VectorType(i32, lanes), [k ^ 1 for k in range(lanes)])
                sign = ir.Constant(tc.vty, [ir.Constant(tc.fty, -1.0 if k % 2 == 0 else 1.0)
                                            for k in range(lanes)])
                for acc_a, acc_b, o in zip(A, B, offs, strict=True):
                    turned = builder.shuffle_vector(builder.load(acc_b),
                                                    ir.Constant(tc.vty, ir.Undefined), swap)
                    tc.store(builder.call(tc.fmuladd, [turned, sign, builder.load(acc_a)]),
                             rowd, o)
            else:
                for acc, o in zip(A, offs, strict=True):
                    tc.store(builder.load(acc), rowd, o)
            return context.get_dummy_value()

        return sig, codegen

    return tile


if numba is not None:
    # complex tiles: 4 vectors of each part (8 registers of sums), then single vectors of
    # 64, 32, 16, 8 and 4 bytes for the columns left over; real: 8 vectors, then the same
    _cx4 = _tile_intrinsic(4, 64, True)
    _cx64, _cx32, _cx16, _cx8, _cx4b = (_tile_intrinsic(1, w, True) for w in (64, 32, 16, 8, 4))
    _re8 = _tile_intrinsic(8, 64, False)
    _re64, _re32, _re16, _re8b, _re4 = (_tile_intrinsic(1, w, False) for w in (64, 32, 16, 8, 4))

    @_jit(inline="always")
    def _row_product(i, indptr, indices, dre, dim, X, row, cplx):  # pragma: no cover - jit
        """``row += (S X)[i]``; complex ``S`` acts on split rows ``[Re | Im]``.

        In tiles whose sums stay in registers (:func:`_tile_intrinsic`): as many wide ones as
        fit, then one vector at a time, then narrower vectors for the columns left over.
        """
        W = X.shape[1]
        size = X.itemsize
        lanes = VECTOR_BYTES // size
        p0 = indptr[i]
        p1 = indptr[i + 1]
        q = 0
        if cplx:
            C = W // 2
            while C - q >= 4 * lanes:
                _cx4(X, row, indices, dre, dim, C, q, p0, p1)
                q += 4 * lanes
            while C - q >= lanes:
                _cx64(X, row, indices, dre, dim, C, q, p0, p1)
                q += lanes
            if C - q >= 32 // size:
                _cx32(X, row, indices, dre, dim, C, q, p0, p1)
                q += 32 // size
            if C - q >= 16 // size:
                _cx16(X, row, indices, dre, dim, C, q, p0, p1)
                q += 16 // size
            if C - q >= 8 // size:
                _cx8(X, row, indices, dre, dim, C, q, p0, p1)
                q += 8 // size
            if size == 4 and C - q >= 1:
                _cx4b(X, row, indices, dre, dim, C, q, p0, p1)
        else:
            while W - q >= 8 * lanes:
                _re8(X, row, indices, dre, dim, 0, q, p0, p1)
                q += 8 * lanes
            while W - q >= lanes:
                _re64(X, row, indices, dre, dim, 0, q, p0, p1)
                q += lanes
            if W - q >= 32 // size:
                _re32(X, row, indices, dre, dim, 0, q, p0, p1)
                q += 32 // size
            if W - q >= 16 // size:
                _re16(X, row, indices, dre, dim, 0, q, p0, p1)
                q += 16 // size
            if W - q >= 8 // size:
                _re8b(X, row, indices, dre, dim, 0, q, p0, p1)
                q += 8 // size
            if size == 4 and W - q >= 1:
                _re4(X, row, indices, dre, dim, 0, q, p0, p1)

    # row sums (level solves, :mod:`~manifoldmp.spectral.supernodal`): interleaved complex
    # tiles of two vectors (4 registers of sums), real of four, then single vectors
    _ic2 = _sum_tile_intrinsic(2, 64, True)
    _ic64, _ic32, _ic16, _ic8 = (_sum_tile_intrinsic(1, w, True) for w in (64, 32, 16, 8))
    _ir4 = _sum_tile_intrinsic(4, 64, False)
    _ir64, _ir32, _ir16, _ir8, _ir4b = (_sum_tile_intrinsic(1, w, False)
                                        for w in (64, 32, 16, 8, 4))

    @_jit(inline="always")
    def _row_sum(X, row, indices, dre, dim, off, p0, p1, cplx):  # pragma: no cover - jit
        """``row = sum_{p0 <= p < p1} S_p X[off + indices[p]]``, all columns, in tiles.

        Complex (``cplx``): ``S_p = dre[p] + i dim[p]`` on interleaved ``(re, im)`` rows.
        """
        W = X.shape[1]
        size = X.itemsize
        lanes = VECTOR_BYTES // size
        q = 0
        if cplx:
            while W - q >= 2 * lanes:
                _ic2(X, row, indices, dre, dim, off, q, p0, p1)
                q += 2 * lanes
            if W - q >= lanes:
                _ic64(X, row, indices, dre, dim, off, q, p0, p1)
                q += lanes
            if W - q >= 32 // size:
                _ic32(X, row, indices, dre, dim, off, q, p0, p1)
                q += 32 // size
            if W - q >= 16 // size:
                _ic16(X, row, indices, dre, dim, off, q, p0, p1)
                q += 16 // size
            if size == 4 and W - q >= 2:
                _ic8(X, row, indices, dre, dim, off, q, p0, p1)
        else:
            while W - q >= 4 * lanes:
                _ir4(X, row, indices, dre, dim, off, q, p0, p1)
                q += 4 * lanes
            while W - q >= lanes:
                _ir64(X, row, indices, dre, dim, off, q, p0, p1)
                q += lanes
            if W - q >= 32 // size:
                _ir32(X, row, indices, dre, dim, off, q, p0, p1)
                q += 32 // size
            if W - q >= 16 // size:
                _ir16(X, row, indices, dre, dim, off, q, p0, p1)
                q += 16 // size
            if W - q >= 8 // size:
                _ir8(X, row, indices, dre, dim, off, q, p0, p1)
                q += 8 // size
            if size == 4 and W - q >= 1:
                _ir4b(X, row, indices, dre, dim, off, q, p0, p1)

    @_jit(inline="always")
    def _step_row(i, indptr, indices, dre, dim, X, Y, acc, c1, c2, cplx, row, mode, gen, gu,
                  gv, gw):  # pragma: no cover - jit
        """``Y[i] = (S X)[i] - Y[i]``, then an update of ``acc[i]``.

        With ``gen``, the general three-term step ``Y[i] = gu (S X)[i] + gv X[i] + gw Y[i]``
        (per-column coefficients; the Lanczos recurrence) instead.
        ``mode`` 0 adds ``c2 Y[i]``; 1 adds ``c1 X[i] + c2 Y[i]`` (the second of two degrees,
        ``X = y_{k+1}``); 2 adds nothing.
        """
        W = X.shape[1]
        if gen:
            for q in range(W):
                row[q] = 0.0
        else:
            for q in range(W):
                row[q] = -Y[i, q]
        _row_product(i, indptr, indices, dre, dim, X, row, cplx)
        if gen:
            for q in range(W):
                row[q] = gu[q] * row[q] + gv[q] * X[i, q] + gw[q] * Y[i, q]
        if mode == 0:
            for q in range(W):
                Y[i, q] = row[q]
                acc[i, q] += c2[q] * row[q]
        elif mode == 1:
            for q in range(W):
                Y[i, q] = row[q]
                acc[i, q] += c1[q] * X[i, q] + c2[q] * row[q]
        else:
            for q in range(W):
                Y[i, q] = row[q]

    @_jit(parallel=True)
    def _first(indptr, indices, dre, dim, Z, Y, acc, c0, c1, u, v, bounds):  # pragma: no cover
        """The first degree: ``Y = u (S Z) + v Z``, ``acc = c0 Z + c1 Y``.

        Chebyshev: ``u = 1/2``, ``v = 0``.
        """
        cplx = dim.shape[0] > 0
        W = Z.shape[1]
        for t in prange(bounds.shape[0] - 1):
            row = np.empty_like(Z[0])
            for i in range(bounds[t], bounds[t + 1]):
                for q in range(W):
                    row[q] = 0.0
                _row_product(i, indptr, indices, dre, dim, Z, row, cplx)
                for q in range(W):
                    y = u[q] * row[q] + v[q] * Z[i, q]
                    Y[i, q] = y
                    acc[i, q] = c0[q] * Z[i, q] + c1[q] * y

    @_jit(parallel=True)
    def _one(indptr, indices, dre, dim, X, Y, acc, c, gen, u, v, w, bounds):  # pragma: no cover
        """One degree: ``Y = S X - Y`` in place (``gen``: ``u S X + v X + w Y``), ``acc += c Y``."""
        cplx = dim.shape[0] > 0
        for t in prange(bounds.shape[0] - 1):
            row = np.empty_like(X[0])
            for i in range(bounds[t], bounds[t + 1]):
                _step_row(i, indptr, indices, dre, dim, X, Y, acc, c, c, cplx, row, 0, gen, u, v,
                          w)

    @_jit(inline="always")
    def _chunk(a, e, c, nc, R):  # pragma: no cover - jit
        """Rows ``[lo, hi)`` of chunk ``c`` of ``nc`` in ``[a, e)``; the last takes the rest."""
        lo = a + c * R
        hi = e if c == nc - 1 else lo + R
        return lo, hi

    @_jit(parallel=True)
    def _two(indptr, indices, dre, dim, P, Cur, acc, c1, c2, gen, u1, v1, w1, u2, v2, w2,
             bounds, R):  # pragma: no cover - jit
        """Two degrees: ``P = S Cur - P`` then ``Cur = S P - Cur``; ``acc += c1 P + c2 Cur``.

        With ``gen`` the steps are general three-term steps (:func:`_step_row`) with the
        coefficients ``(u1, v1, w1)`` and ``(u2, v2, w2)``.

        ``bounds`` splits the rows into one contiguous range per thread, each at least ``R``
        rows long; ``R`` is at least the bandwidth of ``S``.
        """
        cplx = dim.shape[0] > 0
        T = bounds.shape[0] - 1
        for t in prange(T):
            a = bounds[t]
            e = bounds[t + 1]
            nc = max((e - a) // R, 1)
            row = np.empty_like(P[0])
            for c in range(nc + 1):
                if c < nc:
                    lo, hi = _chunk(a, e, c, nc, R)
                    for i in range(lo, hi):
                        _step_row(i, indptr, indices, dre, dim, Cur, P, acc, c1, c2, cplx, row,
                                  2, gen, u1, v1, w1)
                # chunk c - 1 once its neighbours (chunks c - 2 .. c) have y_{k+1}; the first
                # and last chunk of the range wait for the other threads (second pass)
                if 1 <= c - 1 < nc - 1:
                    lo, hi = _chunk(a, e, c - 1, nc, R)
                    for i in range(lo, hi):
                        _step_row(i, indptr, indices, dre, dim, P, Cur, acc, c1, c2, cplx, row,
                                  1, gen, u2, v2, w2)
        for u in prange(2 * T):
            t = u // 2
            a = bounds[t]
            e = bounds[t + 1]
            nc = max((e - a) // R, 1)
            if u % 2 == 1 and nc == 1:
                continue   # one chunk: it is the first and the last
            lo, hi = _chunk(a, e, 0 if u % 2 == 0 else nc - 1, nc, R)
            row = np.empty_like(P[0])
            for i in range(lo, hi):
                _step_row(i, indptr, indices, dre, dim, P, Cur, acc, c1, c2, cplx, row, 1, gen,
                          u2, v2, w2)

    @_jit(parallel=True)
    def _lanczos_product(indptr, indices, dre, dim, R, Pin, P, inv, cp, first, part, bounds):
        # pragma: no cover - jit
        """``P = inv (S R) - cp Pin`` row by row, and ``part[t] = sum_i R[i] * P[i]`` per thread.

        ``Pin`` is not read when ``first``; it may be ``P``. The partial sums are per column,
        accumulated in float64.
        """
        cplx = dim.shape[0] > 0
        W = R.shape[1]
        for t in prange(bounds.shape[0] - 1):
            row = np.empty_like(R[0])
            sums = np.zeros(W)
            for i in range(bounds[t], bounds[t + 1]):
                for q in range(W):
                    row[q] = 0.0
                _row_product(i, indptr, indices, dre, dim, R, row, cplx)
                if first:
                    for q in range(W):
                        y = inv[q] * row[q]
                        P[i, q] = y
                        sums[q] += R[i, q] * y
                else:
                    for q in range(W):
                        y = inv[q] * row[q] - cp[q] * Pin[i, q]
                        P[i, q] = y
                        sums[q] += R[i, q] * y
            for q in range(W):
                part[t, q] = sums[q]

    @_jit(parallel=True)
    def _lanczos_update(P, R, c, part, bounds):  # pragma: no cover - jit
        """``P -= c R`` and per thread ``part[t] = sum_i P[i]**2`` (per column, float64)."""
        W = R.shape[1]
        for t in prange(bounds.shape[0] - 1):
            sums = np.zeros(W)
            for i in range(bounds[t], bounds[t + 1]):
                for q in range(W):
                    y = P[i, q] - c[q] * R[i, q]
                    P[i, q] = y
                    sums[q] += y * y
            for q in range(W):
                part[t, q] = sums[q]

    @_jit(parallel=True)
    def _gather(x, perm, s, out, bounds):  # pragma: no cover - jit
        """``out[i] = s[i] x[perm[i]]`` into split rows; ``x : (V, C, P)``, ``P`` = 1 or 2."""
        C = x.shape[1]
        P = x.shape[2]
        split = out.shape[1] == 2 * C
        for t in prange(bounds.shape[0] - 1):
            for i in range(bounds[t], bounds[t + 1]):
                k = perm[i]
                si = s[i]
                for q in range(C):
                    out[i, q] = si * x[k, q, 0]
                if split:
                    if P == 2:
                        for q in range(C):
                            out[i, C + q] = si * x[k, q, 1]
                    else:
                        for q in range(C):
                            out[i, C + q] = 0.0

    @_jit(parallel=True)
    def _scatter(acc, perm, s, x, tail, out, bounds):  # pragma: no cover - jit
        """``out[perm[i]] = acc[i] / s[i] + tail x[perm[i]]`` from split rows."""
        C = out.shape[1]
        P = out.shape[2]
        for t in prange(bounds.shape[0] - 1):
            for i in range(bounds[t], bounds[t + 1]):
                k = perm[i]
                si = 1.0 / s[i]
                for q in range(C):
                    out[k, q, 0] = acc[i, q] * si + tail[q] * x[k, q, 0]
                if P == 2:
                    for q in range(C):
                        out[k, q, 1] = acc[i, C + q] * si + tail[q] * x[k, q, 1]


def check_block(x: Any) -> np.ndarray:
    """``x`` as a ``(V, C)`` array of finite entries, or :class:`ParameterError`.

    The public entry points of the fused flows check this (the kernels would carry a NaN
    or an infinity through every row they reach).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ParameterError(f"x must be a (V, C) array, got shape {x.shape}")
    if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
        raise ParameterError(f"x has {int(np.count_nonzero(~np.isfinite(x)))} non-finite "
                             "entries; expected finite values")
    return x


def _fresh(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A new array whose pages are touched here, by one thread.

    The kernels' threads writing into never-touched memory fault its pages in concurrently,
    which was erratic on the 2-core test machine (100 MB: 20-310 ms, against 11 ms for one
    thread's fill).
    """
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


#: Most bytes of recurrence blocks kept between flows for the next one (:class:`_Workspace`).
WORKSPACE_BYTES = 1 << 30


class _Workspace:
    """Blocks of finished recurrences, kept for the next recurrence of the same shape.

    A fresh block costs its page faults on first touch, and they were erratic on the 2-core
    test machine: a Chebyshev flow on 100k vertices with 64 complex channels touches seven
    fresh 51 MB blocks, 50 to 250 ms of a 0.55 s flow. Flows of one shape repeat (a layer's
    forward passes, a training loop), so the blocks of a finished recurrence (its input copy,
    sums and recurrence vectors, not the output) are kept, up to :data:`WORKSPACE_BYTES`,
    newest first, until :func:`release_workspace`. Thread-safe; a block is handed to one
    recurrence at a time, and blocks from here are not zeroed (the kernels write every entry
    before reading it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A kept block of this shape and dtype, or a fresh one (:func:`_fresh`)."""
        dtype = np.dtype(dtype)
        with self._lock:
            for k in range(len(self._free) - 1, -1, -1):
                a = self._free[k]
                if a.shape == shape and a.dtype == dtype:
                    return self._free.pop(k)
        return _fresh(shape, dtype)

    def give(self, arrays: list[np.ndarray | None]) -> None:
        """Keep these blocks (each given once, none used elsewhere any more)."""
        with self._lock:
            held = {id(a) for a in self._free}
            for a in arrays:
                if a is not None and id(a) not in held:
                    held.add(id(a))
                    self._free.append(a)
            keep: list[np.ndarray] = []
            total = 0
            for a in reversed(self._free):   # newest first, within the budget
                if total + a.nbytes <= WORKSPACE_BYTES:
                    keep.append(a)
                    total += a.nbytes
            self._free = keep[::-1]

    def nbytes(self) -> int:
        """Bytes held."""
        with self._lock:
            return sum(a.nbytes for a in self._free)

    def clear(self) -> None:
        """Drop every block held."""
        with self._lock:
            self._free = []


_WORKSPACE = _Workspace()


def release_workspace() -> int:
    """Free the blocks the fused flows keep between calls; returns the bytes released.

    A Chebyshev or Lanczos flow on the CPU keeps its working blocks (about six blocks of
    ``V x 32`` complex channels for ``V x 64``, at most ``WORKSPACE_BYTES`` in all) for the
    next flow of the same shape, which then skips the page faults of fresh memory.
    """
    released = _WORKSPACE.nbytes()
    _WORKSPACE.clear()
    return released


def _threads() -> int:
    """Threads for the kernels: torch's setting, within numba's pool."""
    return max(1, min(torch.get_num_threads(), numba.get_num_threads()))


@dataclass
class FusedOperator:
    """``S`` of the Chebyshev recurrence, renumbered and laid out for the fused kernels.

    Build it with :meth:`from_scipy`. ``perm`` is the reverse Cuthill-McKee order (row ``i``
    of the kernels is vertex ``perm[i]``), ``bandwidth`` the largest ``|i - j|`` of a nonzero
    in that order.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data_real: np.ndarray
    data_imag: np.ndarray   # empty for a real operator
    perm: np.ndarray
    bandwidth: int
    dtype: np.dtype         # real precision of the kernels
    min_chunk: int = MIN_CHUNK_ROWS

    @classmethod
    def from_scipy(cls, S: sp.spmatrix, dtype: Any = np.float64) -> FusedOperator:
        """Reorder ``S`` (square, real or complex, symmetric pattern) for the fused kernels.

        Parameters
        ----------
        S : (V, V) sparse matrix
            The shifted operator ``(4 / b) B - 2 I``, not its stacked real form.
        dtype : {np.float32, np.float64}
            Precision of the recurrence.
        """
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ParameterError(f"dtype must be float32 or float64, got {dtype}")
        S = sp.csr_matrix(S)
        if S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise ParameterError(f"S must be square, got shape {S.shape}")
        if not np.all(np.isfinite(S.data)):
            raise ParameterError(f"S has {int(np.count_nonzero(~np.isfinite(S.data)))} "
                                 "non-finite entries; expected a finite matrix")
        pattern = sp.csr_matrix((np.ones(S.nnz, dtype=np.int8), S.indices, S.indptr),
                                shape=S.shape)
        perm = np.asarray(reverse_cuthill_mckee(pattern, symmetric_mode=True), dtype=np.int64)
        Sp = S[perm][:, perm].tocsr()
        Sp.sum_duplicates()
        Sp.sort_indices()
        rows = np.repeat(np.arange(Sp.shape[0]), np.diff(Sp.indptr))
        bandwidth = int(np.abs(rows - Sp.indices).max()) if Sp.nnz else 0
        index = np.int32 if Sp.nnz < 2**31 else np.int64
        cplx = np.iscomplexobj(Sp.data)
        return cls(indptr=Sp.indptr.astype(index), indices=Sp.indices.astype(index),
                   data_real=np.ascontiguousarray(Sp.data.real, dtype=dtype),
                   data_imag=np.ascontiguousarray(Sp.data.imag, dtype=dtype) if cplx
                   else np.zeros(0, dtype=dtype),
                   perm=perm, bandwidth=bandwidth, dtype=dtype)

    @property
    def n(self) -> int:
        """Order of ``S``."""
        return len(self.perm)

    @property
    def is_complex(self) -> bool:
        """Whether ``S`` is complex (its rows act on split ``[Re | Im]`` rows)."""
        return self.data_imag.size > 0

    @property
    def chunk(self) -> int:
        """Rows per wavefront chunk: at least the bandwidth."""
        return max(self.bandwidth, self.min_chunk, 1)

    def _bounds(self, threads: int | None = None) -> np.ndarray:
        """One contiguous row range per thread, each at least one chunk long."""
        T = threads if threads is not None else _threads()
        T = max(1, min(T, self.n // (3 * self.chunk)))
        return np.array([self.n * t // T for t in range(T + 1)], dtype=np.int64)

    def _args(self) -> tuple:
        return self.indptr, self.indices, self.data_real, self.data_imag


class FusedRecurrence:
    """State of one Chebyshev expansion on a :class:`FusedOperator`.

    The engine of :func:`~manifoldmp.spectral.chebyshev.chebyshev_expm_fused`.

    The columns go in blocks of :data:`ROW_BYTES` per row (32 complex or 64 real float64
    columns): the rows a wavefront chunk reads around itself then stay in the core's L2
    cache (100k torus, 64 complex columns: 12.3 ms per product in two blocks of 32 against
    16.6 ms in one).

    Parameters
    ----------
    op : FusedOperator
    x : (V, C) ndarray
        Real or complex input in the original vertex order, of ``op``'s precision.
    scale : (V,) ndarray
        Applied to the rows on the way in (``M^1/2``); its inverse on the way out.
    threads : int, optional
        Number of row ranges (default: torch's thread count).
    """

    def __init__(self, op: FusedOperator, x: np.ndarray, scale: np.ndarray,
                 threads: int | None = None) -> None:
        if not fused_available():
            raise FusedUnavailable(
                "the fused kernels cannot run here: "
                + ("numba is not installed" if numba is None else
                   "this process is a forked child (numba's OpenMP layer is not fork-safe); "
                   "use the torch path or the 'spawn' start method"))
        if x.ndim != 2 or x.shape[0] != op.n:
            raise ParameterError(f"x must have shape ({op.n}, C), got {x.shape}")
        if x.dtype.kind not in "fc" or np.finfo(x.dtype).dtype != op.dtype:
            raise ParameterError(f"x has dtype {x.dtype}, the operator {op.dtype}")
        if op.dtype.name not in _LOADED:
            _LOADED.add(op.dtype.name)
            log.info("fused %s kernels: first use in this process; numba compiles them once "
                     "(about 15 s) or loads them from its disk cache", op.dtype.name)
        self.op = op
        self.x = x
        self.split = np.iscomplexobj(x)
        if op.is_complex and not self.split:
            raise ParameterError("a complex operator needs complex x")
        C = x.shape[1]
        per_row = max(ROW_BYTES // op.dtype.itemsize // (2 if self.split else 1), 1)
        self.blocks = [(c, min(c + per_row, C)) for c in range(0, C, per_row)]
        self.bounds = op._bounds(threads)
        scale = np.asarray(scale, dtype=np.float64)
        if scale.shape != (op.n,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ParameterError(f"scale must be ({op.n},) finite and > 0, got shape "
                                 f"{scale.shape}, min {scale.min() if scale.size else None}")
        self.s = np.ascontiguousarray(scale[op.perm], dtype=op.dtype)
        planes = self._planes(x)
        self.z: list[np.ndarray] = []
        for c0, c1 in self.blocks:
            z = _WORKSPACE.take((op.n, (c1 - c0) * (2 if self.split else 1)), op.dtype)
            _gather(planes[:, c0:c1], op.perm, self.s, z, self.bounds)
            self.z.append(z)
        self.prev: list[np.ndarray | None] = [None] * len(self.blocks)
        self.cur = list(self.z)
        self.acc = [_WORKSPACE.take(z.shape, op.dtype) for z in self.z]
        self.done = -1
        self._closed = False
        #: blocks the first degree may write into instead of fresh ones (one per column block)
        self.spare: list[np.ndarray | None] | None = None
        w = max(c1 - c0 for c0, c1 in self.blocks) * (2 if self.split else 1)
        self._dummy = (np.zeros(w, dtype=op.dtype),) * 3   # unused coefficients (Chebyshev)
        self._cheb_first = [(self._coef(np.full(C, 0.5), blk), self._coef(np.zeros(C), blk))
                            for blk in self.blocks]   # y_1 = S y_0 / 2

    def _planes(self, a: np.ndarray) -> np.ndarray:
        """``(V, C, 2)`` real view of complex ``a``, ``(V, C, 1)`` of real ``a``."""
        if np.iscomplexobj(a):
            return a.view(self.op.dtype).reshape(a.shape[0], a.shape[1], 2)
        return a.reshape(a.shape[0], a.shape[1], 1)

    def _coef(self, c: np.ndarray, block: tuple[int, int]) -> np.ndarray:
        """A block's coefficients, repeated for the imaginary half of split rows."""
        c = np.asarray(c[block[0]:block[1]], dtype=self.op.dtype)
        return np.ascontiguousarray(np.concatenate([c, c]) if self.split else c)

    def input_norms(self) -> np.ndarray:
        """``||M^1/2 x_c||`` per column, ``(C,)`` float64."""
        return self._norms(self.z)

    def output_norms(self) -> np.ndarray:
        """Norms of the partial sum so far (in the scaled variables), ``(C,)`` float64."""
        return self._norms(self.acc)

    def _norms(self, arrays: list[np.ndarray]) -> np.ndarray:
        self._check_live()
        out = []
        for (c0, c1), Z in zip(self.blocks, arrays, strict=True):
            Zt = torch.from_numpy(Z)
            sq = column_real_dot(Zt, Zt).numpy().astype(np.float64)
            out.append(sq[: c1 - c0] + sq[c1 - c0:] if self.split else sq)
        return np.sqrt(np.concatenate(out))

    def advance(self, degree: int, coef: np.ndarray,
                three_term: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """Run the recurrence up to ``degree``, adding ``coef[k] y_k``; ``coef : (n, C)``.

        ``three_term = (u, v, w)``, each ``(n, C)``: the general recurrence
        ``y_k = u_k S y_{k-1} + v_k y_{k-1} + w_k y_{k-2}`` (``w_1`` unused) instead of
        Chebyshev's ``y_1 = S y_0 / 2``, ``y_k = S y_{k-1} - y_{k-2}``.
        """
        self._check_live()
        args = self.op._args()
        gen = three_term is not None
        for b, blk in enumerate(self.blocks):
            done = self.done
            acc, z = self.acc[b], self.z[b]

            def g(k: int, blk: tuple[int, int] = blk) -> tuple[np.ndarray, ...]:
                if three_term is None:
                    return self._dummy
                return tuple(self._coef(a[k], blk) for a in three_term)

            if done < 0:
                if degree < 1:
                    np.multiply(z, self._coef(coef[0], blk)[None, :], out=acc)
                    continue
                spare = self.spare[b] if self.spare is not None else None
                self.prev[b], self.cur[b] = z, (spare if spare is not None
                                                else _WORKSPACE.take(z.shape,
                                                                     self.op.dtype))
                u, v = g(1)[:2] if gen else self._cheb_first[b]
                _first(*args, z, self.cur[b], acc, self._coef(coef[0], blk),
                       self._coef(coef[1], blk), u, v, self.bounds)
                done = 1
            prev, cur = self.prev[b], self.cur[b]
            while done < degree:
                if degree - done >= 2:
                    _two(*args, prev, cur, acc, self._coef(coef[done + 1], blk),
                         self._coef(coef[done + 2], blk), gen, *g(done + 1), *g(done + 2),
                         self.bounds, self.op.chunk)
                    done += 2
                else:
                    _one(*args, cur, prev, acc, self._coef(coef[done + 1], blk), gen,
                         *g(done + 1), self.bounds)
                    prev, cur = cur, prev
                    done += 1
            self.prev[b], self.cur[b] = prev, cur
        if degree >= 1:   # degree 0 only sets the sum; the recurrence has not started
            self.done = max(self.done, degree)

    def result(self, tail: np.ndarray) -> np.ndarray:
        """``M^-1/2`` times the sum plus ``tail_c`` times the input, in the input's order.

        The last call: the recurrence's blocks go back to the workspace (:class:`_Workspace`)
        and the recurrence is closed.
        """
        self._check_live()
        out = _fresh(self.x.shape, self.x.dtype)
        planes, xp = self._planes(out), self._planes(self.x)
        tail = np.asarray(tail, dtype=self.op.dtype)
        for (c0, c1), acc in zip(self.blocks, self.acc, strict=True):
            _scatter(acc, self.op.perm, self.s, xp[:, c0:c1],
                     np.ascontiguousarray(tail[c0:c1]), planes[:, c0:c1], self.bounds)
        self._release()
        return out

    def _blocks_held(self) -> list[np.ndarray | None]:
        return [*self.z, *self.acc, *self.prev, *self.cur, *(self.spare or [])]

    def _release(self) -> None:
        blocks = self._blocks_held()
        self.z, self.acc, self.prev, self.cur, self.spare = [], [], [], [], None
        self._closed = True
        _WORKSPACE.give(blocks)

    def _check_live(self) -> None:
        if self._closed:
            raise ParameterError("this recurrence has returned its result (its blocks are "
                                 "reused); start a new one")


class FusedLanczos(FusedRecurrence):
    """Lanczos on the ``S`` of a :class:`FusedOperator`, one Krylov space per column.

    The engine of :func:`~manifoldmp.spectral.krylov.lanczos_expm_fused`. A step is two
    parallel passes over the rows: the sparse product with the subtraction of the previous
    vector and the partial sums of ``q^H w`` (:func:`_lanczos_product`), then the subtraction
    of ``alpha q`` with the partial sums of ``||w||^2`` (:func:`_lanczos_update`). Vectors stay
    unnormalized (``r_j = beta_j q_j``); the scalings go into the next step's coefficients, so
    no pass only normalizes. The basis is not stored: :meth:`combine` regenerates it through
    the general three-term recurrence of :meth:`FusedRecurrence.advance` (two steps per pass,
    as the Chebyshev recurrence), with the sum of the basis vectors formed on the way.
    Three blocks of memory per column block, as the Chebyshev recurrence.

    Parameters are those of :class:`FusedRecurrence`.
    """

    def __init__(self, op: FusedOperator, x: np.ndarray, scale: np.ndarray,
                 threads: int | None = None) -> None:
        super().__init__(op, x, scale, threads)
        C = x.shape[1]
        self.norm0 = self.input_norms()
        self.inv = 1.0 / np.where(self.norm0 > 0, self.norm0, 1.0)   # q_j = inv r_j
        self.cp = np.zeros(C)             # beta_j inv_{j-1}: coefficient of r_{j-1}
        self.r: list[np.ndarray] = list(self.z)               # r_j (z: never written)
        self.rprev: list[np.ndarray | None] = [None] * len(self.blocks)
        self.steps = 0
        T = len(self.bounds) - 1
        self._part = [np.zeros((T, z.shape[1])) for z in self.z]
        self._combined = False

    def _check_open(self) -> None:
        if self._combined:
            raise ParameterError("this FusedLanczos has combined its basis already (the "
                                 "second pass overwrites the input); start a new one")

    def _sums(self, b: int) -> np.ndarray:
        """Column sums of the partial sums of block ``b``, both halves of split rows added."""
        s = self._part[b].sum(axis=0)
        return s[: s.size // 2] + s[s.size // 2:] if self.split else s

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One Lanczos step on ``S``: ``(alpha_j, beta_{j+1})``, ``(C,)`` float64 each."""
        self._check_open()
        args = self.op._args()
        C = self.x.shape[1]
        alpha, beta2 = np.empty(C), np.empty(C)
        first = self.steps == 0
        for b, blk in enumerate(self.blocks):
            R, Pin = self.r[b], self.rprev[b]
            # write over r_{j-1}, except the input z (kept for the second pass)
            if Pin is None:
                out = self.acc[b]          # not needed before the second pass
            elif Pin is self.z[b]:
                out = _WORKSPACE.take(R.shape, self.op.dtype)
            else:
                out = Pin
            _lanczos_product(*args, R, R if Pin is None else Pin, out,
                             self._coef(self.inv, blk), self._coef(self.cp, blk), first,
                             self._part[b], self.bounds)
            alpha[blk[0]:blk[1]] = self.inv[blk[0]:blk[1]] * self._sums(b)
            _lanczos_update(out, R, self._coef(alpha * self.inv, blk), self._part[b],
                            self.bounds)
            beta2[blk[0]:blk[1]] = self._sums(b)
            self.rprev[b], self.r[b] = R, out
        beta = np.sqrt(beta2)
        self.cp = beta * self.inv
        self.inv = 1.0 / np.where(beta > 0, beta, 1.0)
        self.steps += 1
        return alpha, beta

    def combine(self, alphas: np.ndarray, betas: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """``M^-1/2 sum_j coef_j ||z|| q_j`` in the input's order (the Lanczos approximation).

        Parameters
        ----------
        alphas : (m, C) ndarray
            ``alpha_0 .. alpha_{m-1}`` of :meth:`step`.
        betas : (m - 1, C) ndarray
            ``beta_1 .. beta_{m-1}``.
        coef : (m, C) ndarray
            Coefficients of the normalized basis vectors ``q_j``.
        """
        self._check_open()
        m = alphas.shape[0]
        C = self.x.shape[1]
        if m < 1 or alphas.shape != (m, C) or betas.shape != (m - 1, C) \
                or coef.shape != (m, C):
            raise ParameterError(f"need alphas ({m}, {C}), betas ({m - 1}, {C}) and coef "
                                 f"({m}, {C}) with m >= 1; got {alphas.shape}, "
                                 f"{betas.shape}, {coef.shape}")
        self._combined = True   # the second pass overwrites the input block
        bsafe = np.where(betas > 0, betas, 1.0)
        u = np.zeros((m, alphas.shape[1]))
        v, w = np.zeros_like(u), np.zeros_like(u)
        u[1:] = 1.0 / bsafe
        v[1:] = -alphas[:-1] / bsafe
        w[2:] = -betas[:-1] / bsafe[1:]
        # the second pass writes into the first pass's blocks (y_0 = z, then the two others)
        blocks = []
        for b, z in enumerate(self.z):
            own = [a for a in (self.r[b], self.rprev[b]) if a is not None and a is not z]
            blocks.append(own + [_WORKSPACE.take(z.shape, self.op.dtype)
                                 for _ in range(2 - len(own))])
        self.acc = [bl[0] for bl in blocks]
        self.spare = [bl[1] for bl in blocks]
        self.prev = [None] * len(self.blocks)
        self.cur = list(self.z)
        self.done = -1
        self.advance(m - 1, coef, (u, v, w))
        return self.result(np.zeros(self.x.shape[1]))
