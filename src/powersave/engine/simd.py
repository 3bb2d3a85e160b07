"""LLVM intrinsics for the compiled kernels: what numba's loops cannot express.

Numba's loops keep running sums in memory (its arrays may alias, so LLVM reloads them after
every store) and numba cannot hold a vector in a variable; these intrinsics, built with
llvmlite's IR builder, keep them in vector registers.

- :func:`pack_nonzero`, :func:`pack_fired`: eight inputs at a time, those that are not 0 (or
  that fired) appended to a list of positions and values, with AVX2 by one ``vpermps`` and
  two stores, no branch and no store per input (one lane at a time on other CPUs).
- :func:`encode_inputs`: a dense first layer's raw inputs encoded, cut, decoded and counted
  eight at a time, the counts in vector registers (``kernels.input_batch``).
- :func:`conv_pass`: a convolution's kernel row at one input position through the channels
  that fired there, its columns' sums in vector registers.
- :func:`prefetch`: a cache line asked for in L2 (``llvm.prefetch``).
- :func:`panel_sum`: the products of a sample's fired inputs with one *panel* of a Dense layer's
  weights (``PANEL`` consecutive output columns of ``W^T``, stored ``(in, PANEL)`` contiguous)
  summed in four 8-float vector registers, then stored once. The arithmetic is float32
  ``fmul``/``fadd`` without contraction, in the order of ``kernels._scatter``: the fired
  inputs four at a time, ``z += (v0 w0 + v1 w1) + (v2 w2 + v3 w3)``, then two, then one, from
  ``z = 0``: a panel's sums are bit for bit the interpreter's.
- ``pot_rows1..4`` and ``bound_rows1..4``: the early decision's two passes over its arrivals
  (:func:`_rows_pass`), float64 rows of 4 to 16 columns summed in vector registers, the
  numbers of the numba loops they replace.

They are inlined into the calling numba kernels and compiled into their cache entries. Numba
checks only the calling file's stamp when it loads a cache, so ``kernels`` carries this file's
SHA-256 (:data:`powersave.engine.kernels.SIMD_SHA256`, checked by a test): an edit here must
update it, which changes ``kernels.py`` and so invalidates the cached kernels. The typers
accept only the dtypes, dimensions and C layouts the kernels pass (anything else is a numba
typing error, not wrong numbers).
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Output columns per panel: four AVX2 vectors of float32, two 64-byte cache lines per input row
#: (16 columns, one line, measured 1.09-1.19x slower once the fired inputs were packed: every
#: pass reloads each fired input's position and value, and 32 columns halve those reloads).
PANEL = 32
_LANES = 8

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(ir.FloatType(), _LANES)


def _data(context: Any, builder: Any, ty: Any, value: Any) -> Any:
    """The data pointer of a numba array argument."""
    return context.make_array(ty)(context, builder, value).data


def _arguments(context: Any, builder: Any, signature: Any, args: Any) -> list[Any]:
    """An intrinsic's arguments, each array as its data pointer (all made first: numba's array
    structs emit instructions where they are made), the others as they are."""
    return [
        _data(context, builder, ty, value) if isinstance(ty, types.Array) else value
        for ty, value in zip(signature.args, args, strict=True)
    ]


def _vector_at(builder: Any, ptr: Any, offset: Any, vec: Any, q: int = 0) -> Any:
    """A ``vec *`` to element ``offset`` of ``ptr``, or to the ``q``-th ``vec`` after it."""
    if q:
        offset = builder.add(offset, ir.Constant(_I64, q * vec.count))
    return builder.bitcast(builder.gep(ptr, [offset], inbounds=True), vec.as_pointer())


def _splat(builder: Any, x: Any, vec: Any) -> Any:
    """``vec`` with ``x`` in every lane."""
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), x, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vec.count), [0] * vec.count)
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), mask)


def _index(builder: Any, ptr: Any, k: Any) -> Any:
    """``ptr[k]``, an integer index, as int64."""
    i = builder.load(builder.gep(ptr, [k], inbounds=True))
    return builder.sext(i, _I64) if i.type.width < 64 else i


def _loop(builder: Any, name: str, k0: Any, inits: list[Any]) -> tuple[Any, ...]:
    """A loop's head and body blocks (``name.head``, ``name.body``), the head holding a phi for
    the counter (from ``k0``) and one per accumulator (from ``inits``, of their types), entered
    from the current block; returns ``(k, accumulators, body)`` with the builder in the head,
    where the caller branches to the body or out (and adds the phis' incoming values from the
    body)."""
    entry = builder.block
    head = builder.function.append_basic_block(f"{name}.head")
    body = builder.function.append_basic_block(f"{name}.body")
    builder.branch(head)
    builder.position_at_end(head)
    k = builder.phi(_I64)
    k.add_incoming(k0, entry)
    acc = []
    for init in inits:
        a = builder.phi(init.type)
        a.add_incoming(init, entry)
        acc.append(a)
    return k, acc, body


def _merge(builder: Any, ty: Any, first: list[Any], from_first: Any, second: list[Any],
           from_second: Any) -> list[Any]:  # fmt: skip
    """A phi per pair of values: ``first[i]`` when coming from block ``from_first``,
    ``second[i]`` from ``from_second`` (the phis at the top of the current block)."""
    merged = []
    for a, b in zip(first, second, strict=True):
        phi = builder.phi(ty)
        phi.add_incoming(a, from_first)
        phi.add_incoming(b, from_second)
        merged.append(phi)
    return merged


def _is_array(ty: Any, dtype: Any, ndim: int = 1) -> bool:
    """Whether numba type ``ty`` is a C-contiguous array of ``ndim`` dimensions of ``dtype``
    (a numba type, or ``"signed"`` for any signed integer)."""
    if not (isinstance(ty, types.Array) and ty.ndim == ndim and ty.layout == "C"):
        return False
    if dtype == "signed":
        return isinstance(ty.dtype, types.Integer) and bool(getattr(ty.dtype, "signed", False))
    return bool(ty.dtype == dtype)


@intrinsic
def prefetch(typingctx: Any, arr: Any, index: Any) -> Any:
    """Ask for the cache line of ``arr[index]`` into L2 (``llvm.prefetch``, ``prefetcht1``):
    no load to wait for, nothing if the address is not mapped."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.void(arr, types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = builder.gep(_data(context, builder, signature.args[0], args[0]), [args[1]])
        byte = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte, _I32, _I32, _I32]),
            "llvm.prefetch.p0",
        )
        # read, locality 2 (L2 and beyond), data
        builder.call(fn, [builder.bitcast(ptr, byte), *(ir.Constant(_I32, v) for v in (0, 2, 1))])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def panel_sum(
    typingctx: Any, panels: Any, idx: Any, val: Any, lo: Any, hi: Any, base: Any, z: Any, at: Any
) -> Any:
    """``z[at + j] = sum_{lo <= k < hi} val[k] * panels[base + idx[k] * PANEL + j]``, ``j <
    PANEL``.

    ``panels`` float32 and ``z`` float32 C-contiguous (1-D), ``idx`` integer and ``val``
    float32 (1-D); ``lo``, ``hi``, ``base``, ``at`` int64. Summed as :mod:`simd` says.
    """
    f32 = types.float32
    if not (
        _is_array(panels, f32) and _is_array(idx, "signed") and _is_array(val, f32)
    ) or not _is_array(z, f32):
        return None
    sig = types.void(panels, idx, val, types.int64, types.int64, types.int64, z, types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        w_ptr, i_ptr, v_ptr, lo, hi, base, z_ptr, at = _arguments(context, builder, signature, args)
        zero = ir.Constant(_VEC, [0.0] * _LANES)
        n_vec = PANEL // _LANES

        def const(n: int) -> Any:
            return ir.Constant(_I64, n)

        def row(k: Any) -> list[Any]:
            start = builder.add(base, builder.mul(_index(builder, i_ptr, k), const(PANEL)))
            return [
                builder.load(_vector_at(builder, w_ptr, start, _VEC, q), align=4)
                for q in range(n_vec)
            ]

        def splat(k: Any) -> Any:
            return _splat(builder, builder.load(builder.gep(v_ptr, [k], inbounds=True)), _VEC)

        # Four at a time: acc += (v0 w0 + v1 w1) + (v2 w2 + v3 w3).
        k, acc, body = _loop(builder, "panel.fours", lo, [zero] * n_vec)
        head = builder.block
        fn = builder.function
        tail = fn.append_basic_block("panel.tail")
        two = fn.append_basic_block("panel.two")
        after_two = fn.append_basic_block("panel.after_two")
        one = fn.append_basic_block("panel.one")
        done = fn.append_basic_block("panel.done")
        builder.cbranch(builder.icmp_signed("<=", builder.add(k, const(4)), hi), body, tail)
        builder.position_at_end(body)
        ks = [builder.add(k, const(d)) for d in range(4)]
        rows = [row(x) for x in ks]
        vals = [splat(x) for x in ks]
        for q, a in enumerate(acc):
            m = [builder.fmul(vals[d], rows[d][q]) for d in range(4)]
            a.add_incoming(
                builder.fadd(a, builder.fadd(builder.fadd(m[0], m[1]), builder.fadd(m[2], m[3]))),
                body,
            )
        k.add_incoming(builder.add(k, const(4)), body)
        builder.branch(head)

        # Then two: acc += v0 w0 + v1 w1.
        builder.position_at_end(tail)
        builder.cbranch(builder.icmp_signed("<=", builder.add(k, const(2)), hi), two, after_two)
        builder.position_at_end(two)
        k1 = builder.add(k, const(1))
        r0, r1 = row(k), row(k1)
        v0, v1 = splat(k), splat(k1)
        acc_two = [
            builder.fadd(a, builder.fadd(builder.fmul(v0, r0[q]), builder.fmul(v1, r1[q])))
            for q, a in enumerate(acc)
        ]
        k_two = builder.add(k, const(2))
        builder.branch(after_two)
        builder.position_at_end(after_two)
        (k_left,) = _merge(builder, _I64, [k], tail, [k_two], two)
        acc_left = _merge(builder, _VEC, acc, tail, acc_two, two)

        # Then one: acc += v w.
        builder.cbranch(builder.icmp_signed("<", k_left, hi), one, done)
        builder.position_at_end(one)
        r, v = row(k_left), splat(k_left)
        acc_one = [builder.fadd(a, builder.fmul(v, r[q])) for q, a in enumerate(acc_left)]
        builder.branch(done)

        builder.position_at_end(done)
        for q, a in enumerate(_merge(builder, _VEC, acc_left, after_two, acc_one, one)):
            builder.store(a, _vector_at(builder, z_ptr, at, _VEC, q), align=4)
        return context.get_dummy_value()

    return sig, codegen


_F64 = ir.DoubleType()
_VEC64 = ir.VectorType(_F64, 4)


def _rows_pass(n_vec: int, bound: bool) -> Any:
    """An intrinsic summing rows of a float64 table ``(R, 4 n_vec)`` over fired inputs into
    ``out[: 4 n_vec]`` (added to what it holds), the sums in ``n_vec`` vector registers:

    - ``bound=False``: ``out += table[first + idx[k]] * float64(val[k])`` for ``k < nf``
      (the early decision's potentials);
    - ``bound=True``: ``out += max(0, table[first + idx[k]] - table[first + idx[k], leader])``
      as ``(d + |d|) * 0.5`` (its bound row for ``leader``).

    One row after another in ``k``'s order, ``fmul`` then ``fadd``: the numbers of the same
    loop written in numba, which keeps ``out`` in memory (a store and a reload per row).
    """

    def typer(typingctx: Any, table: Any, first: Any, idx: Any, val: Any, nf: Any, extra: Any,
              out: Any) -> Any:  # fmt: skip
        f64 = types.float64
        if not (
            _is_array(table, f64, 2)
            and _is_array(idx, "signed")
            and (_is_array(val, types.float32) or _is_array(val, f64))
            and _is_array(out, f64)
        ):
            return None
        sig = types.void(table, types.int64, idx, val, types.int64, types.int64, out)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            pointers = _arguments(context, builder, signature, args)
            t_ptr, first, i_ptr, v_ptr, nf, extra, o_ptr = pointers
            width = ir.Constant(_I64, 4 * n_vec)
            zero = ir.Constant(_I64, 0)
            start = [
                builder.load(_vector_at(builder, o_ptr, zero, _VEC64, q), align=8)
                for q in range(n_vec)
            ]
            half = ir.Constant(_VEC64, [0.5] * 4)
            k, acc, body = _loop(builder, "rows", zero, start)
            head = builder.block
            done = builder.function.append_basic_block("rows.done")
            builder.cbranch(builder.icmp_signed("<", k, nf), body, done)
            builder.position_at_end(body)
            base = builder.mul(builder.add(first, _index(builder, i_ptr, k)), width)
            if bound:
                lead = builder.load(builder.gep(t_ptr, [builder.add(base, extra)], inbounds=True))
            else:
                v = builder.load(builder.gep(v_ptr, [k], inbounds=True))
                lead = builder.fpext(v, _F64) if v.type != _F64 else v
            factor = _splat(builder, lead, _VEC64)
            for q, a in enumerate(acc):
                row = builder.load(_vector_at(builder, t_ptr, base, _VEC64, q), align=8)
                if bound:
                    d = builder.fsub(row, factor)
                    fabs = cgutils.get_or_insert_function(
                        builder.module, ir.FunctionType(_VEC64, [_VEC64]), "llvm.fabs.v4f64"
                    )
                    term = builder.fmul(builder.fadd(d, builder.call(fabs, [d])), half)
                else:
                    term = builder.fmul(row, factor)
                a.add_incoming(builder.fadd(a, term), body)
            k.add_incoming(builder.add(k, ir.Constant(_I64, 1)), body)
            builder.branch(head)
            builder.position_at_end(done)
            for q, a in enumerate(acc):
                builder.store(a, _vector_at(builder, o_ptr, zero, _VEC64, q), align=8)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(typer)


#: ``pot_rows[n](table, first, idx, val, nf, 0, pot)`` and ``bound_rows[n](table, first, idx,
#: val, nf, leader, arrived)`` for a table of ``4 n`` columns (``n`` in 1..4): see
#: :func:`_rows_pass`.
pot_rows1, pot_rows2, pot_rows3, pot_rows4 = (_rows_pass(n, False) for n in range(1, 5))
bound_rows1, bound_rows2, bound_rows3, bound_rows4 = (_rows_pass(n, True) for n in range(1, 5))


def _has_avx2() -> bool:
    """Whether numba compiles for a CPU with AVX2: the host's features, unless
    ``NUMBA_CPU_FEATURES`` names others, or ``NUMBA_CPU_NAME`` a CPU without them given."""
    from llvmlite import binding
    from numba.core import config

    named, cpu = getattr(config, "CPU_FEATURES", None), getattr(config, "CPU_NAME", None)
    if named is not None:
        features = str(named)
    elif cpu is not None:
        return False
    else:
        features = binding.get_host_cpu_features().flatten()
    return "+avx2" in features.split(",")


#: Whether :func:`pack_nonzero` and :func:`pack_fired` pack with AVX2's ``vpermps`` (else one
#: lane at a time). Read when a kernel is compiled; numba's cache is kept per CPU.
AVX2 = _has_avx2()

#: For each 8-bit mask, the lanes of its set bits in order, then zeros: the ``vpermps``
#: indices that pack those lanes to the front.
_PACK_LANES = [
    [j for j in range(8) if m >> j & 1] + [0] * (8 - bin(m).count("1")) for m in range(256)
]
_LANES_I32 = ir.VectorType(_I32, _LANES)
_FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32


def _pack(builder: Any, keep: Any, values: Any, base: Any, i_ty: Any, i_ptr: Any, v_ptr: Any,
          nf: Any) -> Any:  # fmt: skip
    """Append the lanes of ``values`` (8 float32) where ``keep`` (8 bits) is set to ``v_ptr``
    and their positions ``base + lane`` (``i_ty``'s integers) to ``i_ptr``, in lane order,
    from entry ``nf`` on; returns ``nf`` plus their number.

    With AVX2 the kept lanes are moved to the front by one ``vpermps`` (its indices from a
    table of the 256 masks) and all eight lanes stored: no branch and no store per lane, but
    the arrays must hold ``nf + 8`` entries. Without, the lanes are stored one by one, each
    advancing ``nf`` by its bit (branch-free too)."""
    int_ty = ir.IntType(i_ty.dtype.bitwidth)

    def position(offset: Any) -> Any:
        return builder.trunc(offset, int_ty) if int_ty.width < 64 else offset

    if not AVX2:
        for j in range(_LANES):
            lane = ir.Constant(_I32, j)
            builder.store(builder.extract_element(values, lane), builder.gep(v_ptr, [nf]))
            builder.store(
                position(builder.add(base, ir.Constant(_I64, j))), builder.gep(i_ptr, [nf])
            )
            nf = builder.add(nf, builder.zext(builder.extract_element(keep, lane), _I64))
        return nf
    bits = builder.zext(builder.bitcast(keep, ir.IntType(_LANES)), _I32)
    table_ty = ir.ArrayType(_LANES_I32, 256)
    table = builder.module.globals.get("powersave.pack_lanes")
    if table is None:
        table = ir.GlobalVariable(builder.module, table_ty, "powersave.pack_lanes")
        table.initializer = ir.Constant(table_ty, [ir.Constant(_LANES_I32, r) for r in _PACK_LANES])
        table.global_constant = True
        table.linkage = "internal"
    lanes = builder.load(builder.gep(table, [ir.Constant(_I32, 0), bits], inbounds=True))
    permps = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VEC, [_VEC, _LANES_I32]), "llvm.x86.avx2.permps"
    )
    builder.store(
        builder.call(permps, [values, lanes]), _vector_at(builder, v_ptr, nf, _VEC), align=4
    )
    int_vec = ir.VectorType(int_ty, _LANES)
    offsets = lanes if int_ty.width == 32 else builder.sext(lanes, int_vec)
    positions = builder.add(offsets, _splat(builder, position(base), int_vec))
    builder.store(positions, _vector_at(builder, i_ptr, nf, int_vec), align=4)
    ctpop = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_I32, [_I32]), "llvm.ctpop.i32"
    )
    return builder.add(nf, builder.zext(builder.call(ctpop, [bits]), _I64))


@intrinsic
def pack_nonzero(typingctx: Any, x: Any, base: Any, idx: Any, val: Any, nf: Any) -> Any:
    """Append the entries of ``x[base : base + 8]`` that are not 0 to ``idx`` (positions) and
    ``val`` (values) from entry ``nf`` on; returns the new count (:func:`_pack`: ``idx`` and
    ``val`` hold ``nf + 8`` entries or more). ``x`` and ``val`` float32, ``idx`` integer
    (1-D); ``x != 0`` as numba's (NaN is not 0)."""
    f32 = types.float32
    if not (_is_array(x, f32) and _is_array(idx, "signed") and _is_array(val, f32)):
        return None
    sig = types.int64(x, types.int64, idx, val, types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        x_ptr, base, i_ptr, v_ptr, nf = _arguments(context, builder, signature, args)
        i_ty = signature.args[2]
        values = builder.load(_vector_at(builder, x_ptr, base, _VEC), align=4)
        keep = builder.fcmp_unordered("!=", values, ir.Constant(_VEC, [0.0] * _LANES))
        return _pack(builder, keep, values, base, i_ty, i_ptr, v_ptr, nf)

    return sig, codegen


@intrinsic
def pack_fired(typingctx: Any, cur: Any, base: Any, scale: Any, end: Any, idx: Any, val: Any,
               nf: Any) -> Any:  # fmt: skip
    """Append the inputs of ``cur[base : base + 8]`` (float32 spike times) that fired (``t <
    inf``) to ``idx`` (positions) and ``val`` (their intensities ``scale * (end - t)`` in
    float32, ``coding.decode``'s) from entry ``nf`` on; returns the new count (:func:`_pack`:
    ``idx`` and ``val`` hold ``nf + 8`` entries or more)."""
    f32 = types.float32
    if not (_is_array(cur, f32) and _is_array(idx, "signed") and _is_array(val, f32)):
        return None
    if scale != f32 or end != f32:
        return None
    sig = types.int64(cur, types.int64, f32, f32, idx, val, types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        c_ptr, base, scale, end, i_ptr, v_ptr, nf = _arguments(context, builder, signature, args)
        i_ty = signature.args[4]
        t = builder.load(_vector_at(builder, c_ptr, base, _VEC), align=4)
        keep = builder.fcmp_ordered("<", t, ir.Constant(_VEC, [float("inf")] * _LANES))
        late = builder.fsub(_splat(builder, end, _VEC), t)
        values = builder.fmul(_splat(builder, scale, _VEC), late)
        return _pack(builder, keep, values, base, i_ty, i_ptr, v_ptr, nf)

    return sig, codegen


@intrinsic
def encode_inputs(typingctx: Any, x: Any, flip: Any, n: Any, unsigned: Any, code: Any, fan: Any,
                  out: Any, tally: Any) -> Any:  # fmt: skip
    """The first ``n - n % 8`` raw inputs ``v = flip * x`` (``flip`` ±1: the ON or the OFF
    channels) of a first layer run dense, eight at a time: encoded into spike times
    (``kernels._spike_time``, the cut-off included) and decoded into their intensities
    (``kernels._intensity``, 0 where silent) in ``out``.

    ``code`` (float32) holds the input population's scale, window end, saturation threshold
    and cut-off (``kernels.P_*``'s order). Added to ``tally`` (int64): the spikes sent, the
    inputs above the threshold, the operations (``fan``, int64, summed over the inputs that
    fired) and the bad values (not finite, or negative where ``unsigned``). The float32
    operations are the numba loop's (``kernels.input_batch``'s rest), in the same order: the
    same numbers. The counts stay in vector registers, 32-bit (the operations 64-bit), where
    numba's loop widened every comparison to 64 bits and went four inputs at a time (1.0 ->
    0.67 µs per 784 inputs).
    """
    f32, i64 = types.float32, types.int64
    if not (
        _is_array(x, f32) and flip == f32 and unsigned == types.boolean and _is_array(code, f32)
        and _is_array(fan, i64) and _is_array(out, f32) and _is_array(tally, i64)
    ):  # fmt: skip
        return None
    sig = types.void(x, f32, i64, types.boolean, code, fan, out, tally)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        pointers = _arguments(context, builder, signature, args)
        x_ptr, flip, n, unsigned, c_ptr, f_ptr, o_ptr, t_ptr = pointers
        scale, end, threshold, cut = (
            _splat(builder, builder.load(builder.gep(c_ptr, [ir.Constant(_I64, j)])), _VEC)
            for j in range(4)
        )
        sign = _splat(builder, flip, _VEC)
        zero = ir.Constant(_VEC, [0.0] * _LANES)
        never = ir.Constant(_VEC, [float("inf")] * _LANES)
        largest = ir.Constant(_VEC, [_FLOAT32_MAX] * _LANES)
        i32v, i64v = ir.VectorType(_I32, _LANES), ir.VectorType(_I64, _LANES)
        strict = builder.icmp_unsigned("!=", unsigned, ir.Constant(unsigned.type, 0))
        strict = _splat(builder, strict, ir.VectorType(ir.IntType(1), _LANES))
        fabs = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC]), "llvm.fabs.v8f32"
        )
        counts = [ir.Constant(ty, [0] * _LANES) for ty in (i32v, i32v, i64v, i32v)]
        # sent, saturated, operations, bad
        i, tallies, body = _loop(builder, "inputs", ir.Constant(_I64, 0), counts)
        head = builder.block
        done = builder.function.append_basic_block("inputs.done")
        after = builder.add(i, ir.Constant(_I64, _LANES))
        builder.cbranch(builder.icmp_signed("<=", after, n), body, done)

        builder.position_at_end(body)
        v = builder.fmul(sign, builder.load(_vector_at(builder, x_ptr, i, _VEC), align=4))
        finite = builder.fcmp_ordered("<=", builder.call(fabs, [v]), largest)
        negative = builder.and_(builder.fcmp_ordered("<", v, zero), strict)
        bad = builder.or_(builder.not_(finite), negative)
        # _spike_time: end - min(v, A) / A if v > 0 and before the end; then the cut-off
        low = builder.select(builder.fcmp_ordered("<", scale, v), scale, v)
        t = builder.fsub(end, builder.fdiv(low, scale))
        ok = builder.and_(builder.fcmp_ordered(">", v, zero), builder.fcmp_ordered("<", t, end))
        pre = builder.select(ok, t, never)
        post = builder.select(builder.fcmp_ordered("<=", pre, cut), pre, never)
        fired = builder.fcmp_ordered("<", post, never)
        intensity = builder.select(fired, builder.fmul(scale, builder.fsub(end, post)), zero)
        builder.store(intensity, _vector_at(builder, o_ptr, i, _VEC), align=4)
        fans = builder.load(_vector_at(builder, f_ptr, i, i64v), align=8)
        adds = [
            builder.zext(fired, i32v),
            builder.zext(builder.fcmp_ordered(">", v, threshold), i32v),
            builder.and_(fans, builder.sext(fired, i64v)),
            builder.zext(bad, i32v),
        ]
        for phi, add in zip(tallies, adds, strict=True):
            phi.add_incoming(builder.add(phi, add), body)
        i.add_incoming(after, body)
        builder.branch(head)

        builder.position_at_end(done)
        for j, phi in enumerate(tallies):
            slot = builder.gep(t_ptr, [ir.Constant(_I64, j)])
            total = builder.load(slot)
            for lane in range(_LANES):
                e = builder.extract_element(phi, ir.Constant(_I32, lane))
                total = builder.add(total, builder.sext(e, _I64) if e.type != _I64 else e)
            builder.store(total, slot)
        return context.get_dummy_value()

    return sig, codegen


def _conv_block(builder: Any, n_vec: int, values: tuple[Any, ...], at: Any, name: str) -> None:
    """One block of :func:`conv_pass`: ``8 n_vec`` columns from ``at``, their sums in ``n_vec``
    vector registers (loaded once, stored once), the channels added one after another."""
    w_ptr, start, stride, nc, i_ptr, v_ptr, a_ptr, dst = values
    out = builder.add(dst, at)
    sums = [builder.load(_vector_at(builder, a_ptr, out, _VEC, q), align=4) for q in range(n_vec)]
    c, acc, body = _loop(builder, name, ir.Constant(_I64, 0), sums)
    head = builder.block
    done = builder.function.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed("<", c, nc), body, done)
    builder.position_at_end(body)
    row = builder.add(builder.add(start, builder.mul(_index(builder, i_ptr, c), stride)), at)
    v = _splat(builder, builder.load(builder.gep(v_ptr, [c], inbounds=True)), _VEC)
    for q, a in enumerate(acc):
        w = builder.load(_vector_at(builder, w_ptr, row, _VEC, q), align=4)
        a.add_incoming(builder.fadd(a, builder.fmul(v, w)), body)
    c.add_incoming(builder.add(c, ir.Constant(_I64, 1)), body)
    builder.branch(head)
    builder.position_at_end(done)
    for q, a in enumerate(acc):
        builder.store(a, _vector_at(builder, a_ptr, out, _VEC, q), align=4)


@intrinsic
def conv_pass(typingctx: Any, weights: Any, start: Any, stride: Any, length: Any, nc: Any,
              idx: Any, val: Any, acc: Any, dst: Any) -> Any:  # fmt: skip
    """``acc[dst + j] += sum_{c < nc} val[c] * weights[start + idx[c] * stride + j]`` for ``j``
    below ``length - length % 8``, which it returns (the rest is the caller's): a convolution's
    kernel row at one input position, through the ``nc`` channels that fired there.

    64 columns at a time, then 16, then 8, each block's sums in vector registers, loaded and
    stored once, the channels added one after another (``fmul``, then ``fadd``). Numba's loop
    (``kernels._scatter``: four channels a pass over the columns, the sums in memory) cost ≈ 75
    cycles a kernel row of 80 columns on the bench CNN's second convolution.
    ``weights``, ``val`` and ``acc`` float32, ``idx`` integer (1-D, C-contiguous).
    """
    f32, i64 = types.float32, types.int64
    if not (
        _is_array(weights, f32) and _is_array(idx, "signed") and _is_array(val, f32)
        and _is_array(acc, f32)
    ):  # fmt: skip
        return None
    sig = i64(weights, i64, i64, i64, i64, idx, val, acc, i64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        w_ptr, start, stride, length, nc, i_ptr, v_ptr, a_ptr, dst = _arguments(
            context, builder, signature, args
        )
        values = (w_ptr, start, stride, nc, i_ptr, v_ptr, a_ptr, dst)
        j = ir.Constant(_I64, 0)
        for n_vec in (8, 2, 1):  # while that many vectors of columns are left
            at, _, body = _loop(builder, f"conv{n_vec}", j, [])
            head = builder.block
            after = builder.function.append_basic_block(f"conv{n_vec}.after")
            following = builder.add(at, ir.Constant(_I64, n_vec * _LANES))
            builder.cbranch(builder.icmp_signed("<=", following, length), body, after)
            builder.position_at_end(body)
            _conv_block(builder, n_vec, values, at, f"conv{n_vec}.channels")
            at.add_incoming(following, builder.block)
            builder.branch(head)
            builder.position_at_end(after)
            j = at
        return j

    return sig, codegen
