"""Numba kernels of the compiled event engine: one sample through a run of steps, spike by spike.

A graph is flattened by :mod:`powersave.engine.compiled` into a *step table* (one int64 row per
node) and flat buffers (weights, fan-outs); :func:`run_steps` interprets the table for every
sample of a batch. One interpreter instead of one kernel per layer type keeps the number of
compiled signatures at one, so the JIT compiles once (and caches to disk), and a whole network
is one call from Python: at batch 1 the call overhead, not the arithmetic, is the cost to beat.
The kernel releases the GIL; a batch is split into blocks run by Python threads.

Layouts. Populations are kept as flat C-order arrays of the node shapes (``(C, H, W)`` images
flattened), the same numbering as the numpy engine, so spike times, fan-outs and the early
decision's tie-breaking agree with it index for index. Weights are laid out for scattering: the
row of a firing input neuron is contiguous.

- Dense ``(out, in)`` is stored as ``W^T`` ``(in, out)``: a spike adds ``a * W^T[i]`` to all
  outputs, a contiguous saxpy.
- Conv ``(O, C, kh, kw)`` is stored as ``(C, kh, kw, O)`` and the potentials are accumulated in
  ``(Ho, Wo, O)``: a spike of input ``(c, y, x)`` adds, for each tap that reaches an output, the
  contiguous ``O``-vector ``a * W[c, ky, kx, :]`` at ``(oy, ox, :)``; the result is transposed
  back to ``(O, Ho, Wo)`` once per layer.

Arithmetic matches :mod:`powersave.coding` operation for operation in float32 (encode, decode,
cut-off and saturation thresholds are float32 numbers, as numpy computes them with Python
scalars), and the certified early decision repeats :func:`powersave.engine.event._early_decision`
in float64 (its sums in another order: last-bit differences, far below the certificate's
tolerance), so both engines take the same decision at the same spike. The potentials'
summation order differs (scatter here, BLAS there): float32 rounding; the bias is added after
the sum, as numpy adds it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numba
import numpy as np

from powersave.engine.simd import (
    PANEL,
    bound_rows1,
    bound_rows2,
    bound_rows3,
    bound_rows4,
    conv_pass,
    encode_inputs,
    pack_fired,
    pack_nonzero,
    panel_sum,
    pot_rows1,
    pot_rows2,
    pot_rows3,
    pot_rows4,
    prefetch,
)

T = TypeVar("T")

#: SHA-256 of ``simd.py``, whose intrinsics are compiled into these kernels' cache entries. Numba
#: checks only this file's stamp when it loads its cache: an edit of ``simd.py`` must update
#: this line (``tests/test_compiled.py`` checks it), and so invalidates the cached kernels.
SIMD_SHA256 = "48c559ec7d59f49f75e88d90db0188f612dfd457d4fdbbeb3b741dbbe194faae"

# -- the step table ------------------------------------------------------------------------------

# Columns of a step row.
KIND, IN_SIZE, OUT_SIZE, C_IN, H_IN, W_IN, C_OUT, H_OUT, W_OUT, KH, KW, SH, SW, PH, PW = range(15)
W_OFF, B_OFF, F_OFF, POP_IN, POP_OUT, LAYER, FLAG = range(15, 22)
N_COLUMNS = 22

# Step kinds.
K_INPUT, K_DENSE, K_CONV, K_AVGPOOL, K_MAXPOOL, K_FLATTEN = range(6)

FLOAT32_MAX = np.float32(np.finfo(np.float32).max)

# Columns of the per-population float32 table: scale A, window end ℓ + 1, saturation threshold
# A·(1 + 1e-5), cut-off time ℓ + c (+inf without a cut-off).
P_SCALE, P_END, P_SAT, P_CUT = range(4)


def _jit(**options):  # type: ignore[no-untyped-def]
    """``numba.njit`` with an on-disk cache where one can be written, without one otherwise.

    Numba refuses ``cache=True`` at decoration time when neither the package's ``__pycache__``
    nor a user cache directory is writable (a read-only install): compile per process then.
    """

    def wrap(fn):  # type: ignore[no-untyped-def]
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:
            return numba.njit(cache=False, **options)(fn)

    return wrap


# -- per-sample pieces ---------------------------------------------------------------------------


@_jit(inline="always")
def _spike_time(v, scale, end, cut):  # type: ignore[no-untyped-def]
    """Spike time of a neuron with float32 potential ``v``, before and after the cut-off.

    ``coding.encode``'s float32 operations: ``end - min(v, A) / A`` if ``v > 0`` and that is
    before the window's end, else never (``inf``); after the cut-off, never if later than
    ``cut``. Inlined into every encoding loop, which then still vectorises.
    """
    never = np.float32(np.inf)
    t = end - min(v, scale) / scale
    pre = t if (v > 0) & (t < end) else never
    return pre, pre if pre <= cut else never


@_jit(inline="always")
def _intensity(t, scale, end):  # type: ignore[no-untyped-def]
    """``coding.decode``'s float32 intensity of spike time ``t``: ``A * (end - t)``, 0 for a
    neuron that sent nothing (``t = inf``)."""
    return scale * (end - t) if t < np.inf else np.float32(0.0)


@_jit()
def _encode(z, size, p, popf, nxt, rec, s, rec_off, record, sign):  # type: ignore[no-untyped-def]
    """Encode potentials ``sign * z[:size]`` of population ``p`` into ``nxt`` (cut applied).

    Same float32 operations as ``coding.encode`` and the numpy engine's cut-off and saturation
    test; a negative ``sign`` gives the OFF channels of a signed input (``relu(-x)``).
    Spike times before the cut are written to ``rec[s, rec_off:]`` when ``record``. Returns the
    spikes sent and the neurons saturated. Branch-free, so that it vectorises. (One call per
    layer, not per neuron: numba reference-counts array arguments with atomic operations at
    every call it does not inline, which costs more than the encoding.) The next layer's
    :func:`_gather` is a loop of its own: fused into this one, its data-dependent stores kept
    the division from vectorising (the bench MLP's first layer 5.9 instead of 5.0 µs per
    sample, its second 3.2 µs more).
    """
    scale = popf[p, P_SCALE]
    end = popf[p, P_END]
    threshold = popf[p, P_SAT]
    cut = popf[p, P_CUT]
    never = np.float32(np.inf)
    flip = np.float32(sign)
    sent = 0
    saturated = 0
    for j in range(size):
        v = flip * z[j]
        post = _spike_time(v, scale, end, cut)[1]
        nxt[j] = post
        sent += np.int64(post < never)
        saturated += np.int64(v > threshold)
    if record:
        for j in range(size):
            rec[s, rec_off + j] = _spike_time(flip * z[j], scale, end, cut)[0]
    return sent, saturated


@_jit()
def _gather(cur, size, scale, end, fanout, f_off, idx, val):  # type: ignore[no-untyped-def]
    """Fired inputs of a population: indices, decoded intensities; returns (count, operations).

    Eight inputs at a time packed by :func:`simd.pack_fired` (0.4 → 0.3 µs for the bench
    MLP's readout, 256 inputs); the rest branch-free (write always, advance only on a spike):
    which inputs fire is data, and a mispredicted branch per input costs more than the
    write. The operations (the fired inputs' fan-outs) are summed in a loop of their own:
    inside the first, LLVM guarded the load of a fan-out with a branch on the spike,
    mispredicted at every other input (a profile of the bench MLP's readout: a fifth of its
    early decision's time). ``idx``/``val`` hold ``size`` entries or more.
    """
    nf = 0
    base = 0
    while base + 8 <= size:
        nf = pack_fired(cur, base, scale, end, idx, val, nf)
        base += 8
    for i in range(base, size):
        t = cur[i]
        idx[nf] = i
        val[nf] = scale * (end - t)  # _intensity without its select: written, not kept
        nf += np.int64(t < np.inf)
    ops = 0
    fan = fanout[f_off : f_off + size]
    for k in range(nf):
        ops += fan[idx[k]]
    return nf, ops


@_jit(inline="always")
def _scatter(weights, w_off, stride, length, nf, idx, val, z):  # type: ignore[no-untyped-def]
    """``z[:length] += sum_k val[k] * weights[r_k : r_k + length]``, ``r_k = w_off + idx[k] *
    stride``: one contiguous saxpy per spike (a Dense layer: ``stride = length = out``, the
    row of ``W^T``).

    Four spikes at a time: ``z`` is read and written once per four weight rows, which is
    what bounds a scattered multiply-add (the weight rows stream, ``z`` stays in L1); the
    rest two and one at a time. (Eight rows per pass spill their pointers and intensities to
    the stack and measured no faster, within 2 %, in A/B runs in random order.)
    """
    k = 0
    while k + 4 <= nf:
        r0, r1 = w_off + idx[k] * stride, w_off + idx[k + 1] * stride
        r2, r3 = w_off + idx[k + 2] * stride, w_off + idx[k + 3] * stride
        w0, w1 = weights[r0 : r0 + length], weights[r1 : r1 + length]
        w2, w3 = weights[r2 : r2 + length], weights[r3 : r3 + length]
        v0, v1, v2, v3 = val[k], val[k + 1], val[k + 2], val[k + 3]
        for j in range(length):
            z[j] += (v0 * w0[j] + v1 * w1[j]) + (v2 * w2[j] + v3 * w3[j])
        k += 4
    if k + 2 <= nf:
        r0, r1 = w_off + idx[k] * stride, w_off + idx[k + 1] * stride
        w0, w1 = weights[r0 : r0 + length], weights[r1 : r1 + length]
        v0, v1 = val[k], val[k + 1]
        for j in range(length):
            z[j] += v0 * w0[j] + v1 * w1[j]
        k += 2
    if k < nf:
        v = val[k]
        r = w_off + idx[k] * stride
        w = weights[r : r + length]
        for j in range(length):
            z[j] += v * w[j]


@_jit()
def _dense(row, weights, nf, idx, val, z):  # type: ignore[no-untyped-def]
    """``z = sum_k val[k] * W^T[idx[k]] + b`` (:func:`_scatter`, then the bias, as numpy's
    ``a @ W.T + b`` and :func:`scatter_batch` with :func:`encode_batch`: the same float32
    numbers whether a sample runs alone or in a large batch on the event kernel)."""
    out = row[OUT_SIZE]
    b_off = row[B_OFF]
    for j in range(out):
        z[j] = 0.0
    _scatter(weights, row[W_OFF], out, out, nf, idx, val, z)
    for j in range(out):
        z[j] += weights[b_off + j]


@_jit(inline="always")
def _compact(x, n, idx, val, nf):  # type: ignore[no-untyped-def]
    """Append the inputs of ``x[:n]`` that are not 0 to ``idx`` (positions) and ``val``
    (values) from entry ``nf`` on; returns the new count.

    Eight inputs at a time packed by :func:`simd.pack_nonzero`, the rest branch-free: 0.24
    against 0.45 µs per 784 inputs (14 % firing) for a 64-input bit mask walked with
    ``tzcnt``, and 0.53-0.74 µs for a store per input. ``idx``/``val`` hold ``nf + n`` entries
    or more.
    """
    base = 0
    while base + 8 <= n:
        nf = pack_nonzero(x, base, idx, val, nf)
        base += 8
    for i in range(base, n):
        v = x[i]
        idx[nf] = i
        val[nf] = v
        nf += np.int64(v != 0)
    return nf


@_jit(nogil=True)
def scatter_batch(a, row, panels, z, idx, val, starts):  # type: ignore[no-untyped-def]
    """The event kernel of a Dense layer on intensities: ``z = a @ W.T`` ``(N, out)``, bias
    not added (:func:`encode_batch` adds it, as after the BLAS product), one weight row per
    input that fired (a non-zero intensity) and nothing for the silent ones.

    The dense chain's alternative to BLAS when few inputs fire: the fired inputs of every
    sample listed (:func:`_compact`; ``idx``/``val`` ``(N * in,)`` scratch, ``starts`` ``(N +
    1,)``), then :func:`_panel_product`.
    """
    n_in = row[IN_SIZE]
    nf = 0
    for s in range(a.shape[0]):
        starts[s] = nf
        nf = _compact(a[s], n_in, idx, val, nf)
    starts[a.shape[0]] = nf
    _panel_product(row, panels, z, idx, val, starts)


@_jit(nogil=True)
def scatter_chunks(a, row, panels, z, chunk):  # type: ignore[no-untyped-def]
    """:func:`scatter_batch` over a batch of any size, ``chunk`` samples at a time: the fired
    inputs' lists (its scratch) bounded by the chunk, not the batch (a panel's reuse needs a
    few hundred samples, not more)."""
    n = a.shape[0]
    size = max(min(n, chunk), 1)
    idx = np.empty(size * row[IN_SIZE], np.int32)
    val = np.empty(size * row[IN_SIZE], np.float32)
    starts = np.empty(size + 1, np.int64)
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        scatter_batch(a[lo:hi], row, panels, z[lo:hi], idx, val, starts)


@_jit(inline="always")
def _panel_product(row, panels, z, idx, val, starts):  # type: ignore[no-untyped-def]
    """``z[s] = sum_{starts[s] <= k < starts[s + 1]} val[k] * W^T[idx[k]]`` for every sample
    ``s`` of ``z`` ``(N, out)``, a *panel* of outputs at a time.

    A panel is ``simd.PANEL`` columns of ``W^T``, stored ``(in, PANEL)`` contiguous in
    ``panels`` (``compiled.panel_layout``); every sample of the batch goes through the same
    panel, whose rows (two cache lines each) stay in L2, where whole rows of ``W^T`` (800 kB
    for the bench MLP's first layer) stream from L2 and beyond once per sample: 1.4-1.5x
    faster there (session 7, with panels of 16 columns, one cache line; those were 1.09-1.19x
    slower than 32 once the fired inputs were packed eight at a time: each pass reloads the
    fired inputs' positions and values). The sums are :func:`_scatter`'s, bit for bit
    (:mod:`simd`); the last ``out % PANEL`` columns, stored ``(in, rest)`` after the panels, by
    :func:`_scatter` itself.
    """
    n_in, out = row[IN_SIZE], row[OUT_SIZE]
    n = z.shape[0]
    flat = z.reshape(-1)
    full = out - out % PANEL
    # Each panel is asked for in L2 one panel ahead (the first, and the rest's rows, just
    # before): its rows are first needed in the order the samples fire, each a cache miss
    # waited for (the product 1.5x slower after other work had evicted it).
    for r in range(0, min(PANEL, out) * n_in, 16):
        prefetch(panels, r)
    for c in range(0, full, PANEL):
        for r in range((c + PANEL) * n_in, min(c + 2 * PANEL, out) * n_in, 16):
            prefetch(panels, r)
        for s in range(n):
            panel_sum(panels, idx, val, starts[s], starts[s + 1], c * n_in, flat, s * out + c)
    rest = out - full
    if rest:  # row by row, as the interpreter: a pass per column costs 1.6 ns per operation
        w = panels[full * n_in :]
        for s in range(n):
            zs = z[s, full:]
            for j in range(rest):
                zs[j] = 0.0
            lo, hi = starts[s], starts[s + 1]
            _scatter(w, 0, rest, rest, hi - lo, idx[lo:hi], val[lo:hi], zs)


@_jit()
def _conv(row, weights, nf, idx, val, cur, scale, end, acc, z):  # type: ignore[no-untyped-def]
    """Scatter each spike through the taps that reach an output; ``acc`` is ``(Ho, Wo, O)``.

    The weights are stored flipped, ``(C, kh, kw, O)`` with ``[c, a, b] = W[:, c, kh-1-a,
    kw-1-b]``: a spike at ``(y, x)`` reaches output ``(y + ph - kh + 1 + a, x + pw - kw + 1 +
    b)`` through tap ``(a, b)``, so with a horizontal stride of 1 one kernel row's taps land on
    consecutive outputs and the update is one contiguous saxpy of ``taps × O`` numbers.

    With strides of 1 and at least half a spike per input position (on average), the spikes
    are taken position by position: every channel that fired at
    ``(y, x)`` (read from the spike times ``cur``, decoded with ``scale`` and ``end``; ``idx``
    and ``val`` then serve as scratch) reaches the same outputs, so a kernel row's update is
    one pass over those channels (:func:`simd.conv_pass`, the sums in vector registers)
    instead of a short saxpy per spike. With numba's loop for the pass (:func:`_scatter`) that
    was 1.2-1.4x faster on the bench CNN's second convolution in ``full`` and ``balanced`` (8
    channels, 4-6 firing per position), 1.1x slower in ``saver`` (1.5 per position), 2x
    slower on its first convolution (1 channel, a spike per 7 positions), hence a threshold
    of three spikes per position then; the intrinsic made the whole CNN's batch-1 ``balanced``
    1.35x faster, and with it half a spike per position is enough (the CNN's ``saver`` at
    batch 1 1.29x faster than at three, ``balanced`` and ``full`` within 2 %). Sparser
    inputs, and other strides, take the spikes one by one.
    """
    h, w, n_out = row[H_IN], row[W_IN], row[C_OUT]
    ho, wo, kh, kw = row[H_OUT], row[W_OUT], row[KH], row[KW]
    sh, sw, ph, pw = row[SH], row[SW], row[PH], row[PW]
    w_off, b_off = row[W_OFF], row[B_OFF]
    bias = weights[b_off : b_off + n_out]
    for j in range(ho * wo * n_out):  # the bias is added with the transpose, at the end
        acc[j] = 0.0
    hw = h * w
    row_len = kw * n_out
    stride = kh * row_len  # from one input channel's weights to the next's
    if sh == 1 and sw == 1 and 2 * nf >= hw:  # half a spike per position on average, or more
        n_c = row[C_IN]
        never = np.float32(np.inf)
        for y in range(h):
            y0 = y + ph - kh + 1  # output row reached through tap row a = 0
            a_lo = max(0, -y0)
            a_hi = min(kh, ho - y0)  # exclusive
            for x in range(w):
                nc = 0
                for c in range(n_c):  # the channels that fired here (branch-free)
                    t = cur[c * hw + y * w + x]
                    idx[nc] = c
                    val[nc] = scale * (end - t)
                    nc += np.int64(t < never)
                if nc == 0:
                    continue
                x0 = x + pw - kw + 1
                b_lo = max(0, -x0)
                b_hi = min(kw, wo - x0)  # exclusive
                if b_lo >= b_hi:
                    continue
                length = (b_hi - b_lo) * n_out
                for a in range(a_lo, a_hi):
                    dst = ((y0 + a) * wo + x0 + b_lo) * n_out
                    start = w_off + a * row_len + b_lo * n_out
                    done = conv_pass(weights, start, stride, length, nc, idx, val, acc, dst)
                    rest = acc[dst + done : dst + length]  # length % 8 columns, as conv_pass
                    for t in range(length - done):
                        total = rest[t]
                        for c in range(nc):
                            total += val[c] * weights[start + idx[c] * stride + done + t]
                        rest[t] = total
        _transpose_bias(acc, bias, ho * wo, n_out, z)
        return
    inv_hw = 1.0 / hw
    inv_w = 1.0 / w
    for k in range(nf):
        i = idx[k]
        # c, y, x without integer division (~40 cycles a spike): (i + 1/2) / hw lies at least
        # 1/(2 hw) from an integer, and the float64 error of (i + 1/2) * fl(1/hw) is about
        # (c + 1) * 2**-52: exact for any population under ~2**50 neurons.
        c = np.int64((i + 0.5) * inv_hw)
        r = i - c * hw
        y = np.int64((r + 0.5) * inv_w)
        x = r - y * w
        v = val[k]
        y0 = y + ph - kh + 1  # output row (times sh) reached through tap row a = 0
        x0 = x + pw - kw + 1
        w_c = w_off + c * stride
        for a in range(kh):
            ny = y0 + a
            if ny < 0:
                continue
            if sh == 1:  # no integer division per kernel row (it costs more than the row)
                oy = ny
            elif ny % sh != 0:
                continue
            else:
                oy = ny // sh
            if oy >= ho:
                break
            w_row = w_c + a * row_len
            if sw == 1:
                b_lo = max(0, -x0)
                b_hi = min(kw, wo - x0)  # exclusive
                if b_lo >= b_hi:
                    continue
                length = (b_hi - b_lo) * n_out
                dst = (oy * wo + x0 + b_lo) * n_out
                src = w_row + b_lo * n_out
                seg = acc[dst : dst + length]
                wseg = weights[src : src + length]
                for j in range(length):
                    seg[j] += v * wseg[j]
            else:
                for b in range(kw):
                    nx = x0 + b
                    if nx < 0 or nx % sw != 0:
                        continue
                    ox = nx // sw
                    if ox >= wo:
                        break
                    seg = acc[(oy * wo + ox) * n_out : (oy * wo + ox + 1) * n_out]
                    wseg = weights[w_row + b * n_out : w_row + (b + 1) * n_out]
                    for o in range(n_out):
                        seg[o] += v * wseg[o]
    _transpose_bias(acc, bias, ho * wo, n_out, z)


@_jit(inline="always")
def _transpose_bias(acc, bias, n_pos, n_out, z):  # type: ignore[no-untyped-def]
    """``z`` ``(O, P)`` = ``acc`` ``(P, O)`` transposed, plus the bias of each channel (after
    the sum, as ``ops.conv2d`` adds it)."""
    for o in range(n_out):
        b = bias[o]
        zo = z[o * n_pos : (o + 1) * n_pos]
        for p in range(n_pos):
            zo[p] = acc[p * n_out + o] + b


@_jit()
def _avgpool(row, nf, idx, val, z):  # type: ignore[no-untyped-def]
    """Each spike adds its intensity to every pool that contains it; then divide by kh·kw."""
    h, w, n_c = row[H_IN], row[W_IN], row[C_IN]
    ho, wo, kh, kw = row[H_OUT], row[W_OUT], row[KH], row[KW]
    sh, sw, ph, pw = row[SH], row[SW], row[PH], row[PW]
    for j in range(n_c * ho * wo):
        z[j] = 0.0
    hw = h * w
    for k in range(nf):
        i = idx[k]
        c = i // hw
        y = (i - c * hw) // w
        x = i - c * hw - y * w
        v = val[k]
        for ky in range(kh):
            ny = y + ph - ky
            if ny < 0:
                break
            if ny % sh != 0 or ny // sh >= ho:
                continue
            oy = ny // sh
            for kx in range(kw):
                nx = x + pw - kx
                if nx < 0:
                    break
                if nx % sw != 0 or nx // sw >= wo:
                    continue
                z[(c * ho + oy) * wo + nx // sw] += v
    area = np.float32(kh * kw)
    for j in range(n_c * ho * wo):
        z[j] = z[j] / area


@_jit(nogil=True)
def decode_batch(src, row, popf, fanout, a, counts):  # type: ignore[no-untyped-def]
    """The dense kernel's first half: intensities ``a`` ``(N, in)`` (0 where silent) of the
    spike times ``src`` ``(N, in)``, and each sample's synaptic operations (its fired inputs'
    fan-outs) added to ``counts``. Float32 arithmetic of ``coding.decode``."""
    n_in, p_in, f_off, layer = row[IN_SIZE], row[POP_IN], row[F_OFF], row[LAYER]
    scale, end = popf[p_in, P_SCALE], popf[p_in, P_END]
    fan = fanout[f_off : f_off + n_in]
    for s in range(src.shape[0]):
        ops = 0
        for i in range(n_in):
            t = src[s, i]
            fired = t < np.inf
            a[s, i] = _intensity(t, scale, end)
            ops += fan[i] * np.int64(fired)
        counts[s if counts.shape[0] > 1 else 0, layer] += ops


@_jit(nogil=True)
def encode_batch(
    z, row, weights, popf, out, logits, rec, record, rec_off, counts, n_layers, n_pops,
    fanout, f_next, next_layer,
):  # fmt: skip
    """The dense kernel's second half: add the bias to ``z`` ``(N, out)`` (``a @ W.T``) and
    encode the potentials into the (cut) spike times ``out``, counting spikes and saturated
    neurons, or, for the readout, write them to ``logits``. Float32 arithmetic of ``ops.dense``
    (bias added after the product) and :func:`_encode`.

    With ``next_layer >= 0`` (the next layer runs dense too) ``out`` gets the decoded
    intensities instead, what :func:`decode_batch` would make of the times (0 where silent),
    and that layer's synaptic operations (fan-outs from ``fanout[f_next:]``) are counted here:
    the times are never written out and read back.
    """
    n_out, b_off, p_out = row[OUT_SIZE], row[B_OFF], row[POP_OUT]
    bias = weights[b_off : b_off + n_out]
    never = np.float32(np.inf)
    if p_out < 0:
        for s in range(z.shape[0]):
            for j in range(n_out):
                logits[s, j] = z[s, j] + bias[j]
        return
    scale, end = popf[p_out, P_SCALE], popf[p_out, P_END]
    threshold, cut = popf[p_out, P_SAT], popf[p_out, P_CUT]
    intensities = next_layer >= 0
    fan = fanout[f_next : f_next + n_out]
    for s in range(z.shape[0]):
        sent = 0
        saturated = 0
        ops = 0
        for j in range(n_out):
            v = z[s, j] + bias[j]
            pre, post = _spike_time(v, scale, end, cut)
            fired = post < never
            if intensities:
                out[s, j] = _intensity(post, scale, end)
                ops += fan[j] * np.int64(fired)
            else:
                out[s, j] = post
            sent += np.int64(fired)
            saturated += np.int64(v > threshold)
            if record:
                rec[s, rec_off + j] = pre
        c = s if counts.shape[0] > 1 else 0
        counts[c, n_layers + p_out] += sent
        counts[c, n_layers + n_pops + p_out] += saturated
        if intensities:
            counts[c, next_layer] += ops


@_jit(nogil=True)
def input_batch(src, row, popf, fanout, a, rec, record, counts, n_layers, n_pops):  # type: ignore[no-untyped-def]
    """Raw inputs straight to the intensities ``a`` ``(N, F)`` of a first layer that runs dense.

    What step 0 of :func:`run` and :func:`decode_batch` compute one after the other (the check
    of the raw values, the ON/OFF split, the encoding with the cut-off, the decoding, the
    counts of spikes, saturated inputs and the layer's operations), in one pass, without writing
    the spike times out. Returns ``run``'s (bad, clipped): with bad inputs (``bad > 0``)
    nothing is counted.
    """
    signed = row[FLAG] != 0
    n_in = row[IN_SIZE]
    scale, end = popf[0, P_SCALE], popf[0, P_END]
    threshold, cut = popf[0, P_SAT], popf[0, P_CUT]
    never = np.float32(np.inf)
    n = src.shape[0]
    found = np.zeros((n, 3), np.int64)  # spikes, saturated, operations: counted once all is good
    tally = np.zeros(4, np.int64)
    code = popf[0].copy()  # scale, end, threshold, cut
    bad = 0
    for s in range(n):
        x = src[s]
        out = a[s]
        sent = 0
        saturated = 0
        ops = 0
        for side in range(2 if signed else 1):  # ON channels (x), then OFF (relu(-x))
            flip = np.float32(1.0 if side == 0 else -1.0)
            off = side * n_in
            tally[:] = 0
            encode_inputs(x, flip, n_in, not signed, code, fanout[off:], out[off:], tally)
            sent += tally[0]
            saturated += tally[1]
            ops += tally[2]
            bad += tally[3]
            for i in range(n_in - n_in % 8, n_in):  # the rest, as encode_inputs
                v = flip * x[i]
                bad += np.int64((not abs(v) <= FLOAT32_MAX) | ((v < 0) & (not signed)))
                post = _spike_time(v, scale, end, cut)[1]
                fired = post < never
                out[off + i] = _intensity(post, scale, end)
                ops += fanout[off + i] * np.int64(fired)  # the first layer's fan-outs lead
                sent += np.int64(fired)
                saturated += np.int64(v > threshold)
        found[s, 0], found[s, 1], found[s, 2] = sent, saturated, ops
    clipped = found[:, 1].sum()  # = inputs above the scale, ON or OFF
    if bad:
        return bad, clipped
    for s in range(n):
        c = s if counts.shape[0] > 1 else 0
        counts[c, n_layers] += found[s, 0]
        counts[c, n_layers + n_pops] += found[s, 1]
        counts[c, 0] += found[s, 2]
    if record:
        for s in range(n):
            for side in range(2 if signed else 1):
                flip = np.float32(1.0 if side == 0 else -1.0)
                for i in range(n_in):
                    rec[s, side * n_in + i] = _spike_time(flip * src[s, i], scale, end, cut)[0]
    return 0, clipped


@_jit()
def _minpool(row, cur, nxt):  # type: ignore[no-untyped-def]
    """Max pooling in the time code: the first spike of each pool wins; padding never fires.

    The common 2 × 2 pool of stride 2 has its own loop: window sizes known only at run time
    cost 6x more here (loops of two iterations do not unroll).
    """
    h, w, n_c = row[H_IN], row[W_IN], row[C_IN]
    ho, wo, kh, kw = row[H_OUT], row[W_OUT], row[KH], row[KW]
    sh, sw, ph, pw = row[SH], row[SW], row[PH], row[PW]
    never = np.float32(np.inf)
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0:
        for c in range(n_c):
            for oy in range(ho):
                top = (c * h + 2 * oy) * w
                out = (c * ho + oy) * wo
                for ox in range(wo):
                    b = top + 2 * ox
                    u = min(cur[b], cur[b + 1])
                    d = min(cur[b + w], cur[b + w + 1])
                    nxt[out + ox] = min(u, d)
        return
    for c in range(n_c):
        for oy in range(ho):
            y_lo = max(oy * sh - ph, 0)
            y_hi = min(oy * sh - ph + kh, h)
            for ox in range(wo):
                x_lo = max(ox * sw - pw, 0)
                x_hi = min(ox * sw - pw + kw, w)
                m = never
                for y in range(y_lo, y_hi):
                    line = (c * h + y) * w
                    for x in range(x_lo, x_hi):
                        v = cur[line + x]
                        m = v if v < m else m
                nxt[(c * ho + oy) * wo + ox] = m


@_jit()
def _leader_row(table, n_cls, idx, keys, k, leader, row_out):  # type: ignore[no-untyped-def]
    """``sum_{m < k} max(0, w_r - w_leader)`` over the first ``k`` arrivals (in ``keys``'s
    order)."""
    for r in range(n_cls):
        row_out[r] = 0.0
    for m in range(k):
        w = table[n_cls + 1 + idx[keys[m] & 0xFFFFFFFF]]
        w_l = w[leader]
        for r in range(n_cls):
            row_out[r] += _positive(w[r] - w_l)


@_jit(inline="always")
def _positive(d):  # type: ignore[no-untyped-def]
    """``max(d, 0.0)`` exactly (``d + |d|`` is ``2d`` or 0), in a form that vectorises."""
    return (d + abs(d)) * 0.5


@_jit(inline="always")
def _arrive(table, i, a, sign, leader, pot, arrived):  # type: ignore[no-untyped-def]
    """One arrival of the early decision: row ``i`` of the readout table (an input's weights)
    times its intensity ``a`` into the potentials, and its ``max(0, w_ir - w_i,leader)`` into
    the bound row ``arrived``; ``sign = -1.0`` takes it back (the same numbers, negated)."""
    w_l = table[i, leader]
    step = sign * a
    for j in range(table.shape[1]):
        pot[j] += table[i, j] * step
        arrived[j] += sign * _positive(table[i, j] - w_l)


@_jit(inline="always")
def _rows(table, first, idx, val, nf, leader, out):  # type: ignore[no-untyped-def]
    """Over the ``nf`` fired inputs, in index order, into ``out``: with ``leader < 0`` the
    potentials, ``+= table[first + idx[k]] * val[k]``; else the bound row of ``leader``, ``+=
    max(0, w_ir - w_i,leader)`` (what :func:`_arrive` adds one arrival at a time).

    Tables of 4 to 16 columns take :mod:`simd`'s passes (the sums in vector registers, the
    same numbers: 0.78 → 0.2 µs per pass on the bench MLP's readout); others the same loop
    in numba, which keeps ``out`` in memory.
    """
    width = table.shape[1]
    if leader < 0:
        if width == 12:
            pot_rows3(table, first, idx, val, nf, 0, out)
        elif width == 4:
            pot_rows1(table, first, idx, val, nf, 0, out)
        elif width == 8:
            pot_rows2(table, first, idx, val, nf, 0, out)
        elif width == 16:
            pot_rows4(table, first, idx, val, nf, 0, out)
        else:
            for k in range(nf):
                a = np.float64(val[k])
                i = first + idx[k]
                for j in range(width):
                    out[j] += table[i, j] * a
    elif width == 12:
        bound_rows3(table, first, idx, val, nf, leader, out)
    elif width == 4:
        bound_rows1(table, first, idx, val, nf, leader, out)
    elif width == 8:
        bound_rows2(table, first, idx, val, nf, leader, out)
    elif width == 16:
        bound_rows4(table, first, idx, val, nf, leader, out)
    else:
        for k in range(nf):
            i = first + idx[k]
            w_l = table[i, leader]
            for j in range(width):
                out[j] += _positive(table[i, j] - w_l)


@_jit(inline="always")
def _insertion_sort(keys, lo, hi):  # type: ignore[no-untyped-def]
    """Sort ``keys[lo:hi]`` in place (few keys, or keys nearly in order)."""
    for k in range(lo + 1, hi):
        key = keys[k]
        m = k - 1
        while m >= lo and keys[m] > key:
            keys[m + 1] = keys[m]
            m -= 1
        keys[m + 1] = key


@_jit(inline="always")
def _buckets(nf, val, scale, keys):  # type: ignore[no-untyped-def]
    """A counting sort of the fired inputs into time buckets by their intensities; returns the
    number of buckets.

    ``keys[:nf]``: the positions ``k`` of the fired inputs (``val[k]``, in ``(0, scale]``),
    bucket by bucket, earliest first (``n_buckets`` equal buckets of intensity, ``scale`` down
    to 0, which are equal buckets of time over the window; stable: within a bucket in position
    order); ``keys[2 nf + b]`` is the end of bucket ``b`` (``b < n_buckets``). The intensity
    ``scale * (end - t)`` falls with the time ``t`` (rounded, never rises), so a bucket's
    arrivals all come after the previous bucket's, and inputs that fired together share a
    bucket. From the intensities, contiguous, the buckets are found in a loop of their own
    (no time read through ``idx``, no store read back), and the sort moves positions only:
    the early decision needs the time order within one bucket at most (:func:`_time_keys`).
    ``keys`` holds ``4 nf + 65`` int64 or more (scratch after the first ``nf``).
    """
    n_buckets = 64
    while n_buckets < nf:
        n_buckets *= 2
    ends = keys[2 * nf : 2 * nf + n_buckets + 1]
    for b in range(n_buckets + 1):
        ends[b] = 0
    bucket = keys[nf : 2 * nf]
    top = np.float32(scale)
    per = np.float32(n_buckets) / top
    for k in range(nf):
        bucket[k] = min(max(np.int64((top - val[k]) * per), 0), n_buckets - 1)
    for k in range(nf):
        ends[bucket[k] + 1] += 1
    total = 0
    for b in range(1, n_buckets + 1):  # the running total in a register, not through memory
        total += ends[b]
        ends[b] = total
    for k in range(nf):
        b = bucket[k]
        keys[ends[b]] = k
        ends[b] += 1  # ends as the end of bucket b
    return n_buckets


@_jit(inline="always")
def _time_keys(cur, idx, keys, lo, hi):  # type: ignore[no-untyped-def]
    """Positions ``keys[lo:hi]`` as int64 keys ``time bits << 32 | k``, which sort by time, ties
    by position (times are non-negative float32, whose bit patterns sort as the numbers do);
    the low 32 bits are the position."""
    bits = cur.view(np.int32)
    for m in range(lo, hi):
        keys[m] = (np.int64(bits[idx[keys[m]]]) << 32) | keys[m]


@_jit()
def _arrival_order(cur, nf, idx, val, scale, keys):  # type: ignore[no-untyped-def]
    """``keys[:nf]``: the fired inputs in arrival order, as int64 keys ``time bits << 32 | k``.

    The order of numpy's stable argsort: by time, ties by position ``k``. The counting sort
    (:func:`_buckets`) leaves only keys within a bucket out of place; an insertion sort of each
    bucket of two or more puts them in place (against quicksort's mispredicted branches: 4 µs
    for 120 spikes). ``keys`` as :func:`_buckets`'s.
    """
    n_buckets = _buckets(nf, val, scale, keys)
    _time_keys(cur, idx, keys, 0, nf)
    begin = 0
    for b in range(n_buckets):
        end = keys[2 * nf + b]
        if end - begin > 1:
            _insertion_sort(keys, begin, end)
        begin = end


@_jit(inline="always")
def _fails(pot, arrived, magnitude, table, n_cls, leader, a_now, keep, rounding):  # type: ignore[no-untyped-def]
    """How many rivals the certificate of :func:`_early` does not yet exclude, with ``leader``
    leading and ``arrived`` its row; branch-free (a vectorised pass beats an early exit)."""
    best = pot[leader]
    m_l = magnitude[leader]
    fails = 0
    for r in range(n_cls):
        bound = keep * a_now * (table[leader, r] - arrived[r])
        tolerance = rounding * (m_l + magnitude[r])
        fails += np.int64(not best - pot[r] > bound + tolerance) * np.int64(r != leader)
    return fails


@_jit(inline="always")
def _argmax(pot, n_cls):  # type: ignore[no-untyped-def]
    """``argmax(pot[:n_cls])``, the first of equals (numpy's argmax)."""
    leader = 0
    best = pot[0]
    for j in range(1, n_cls):
        if pot[j] > best:
            best = pot[j]
            leader = j
    return leader


@_jit()
def _early(  # type: ignore[no-untyped-def]
    row, weights, fanout, cur, nf, n_ops, idx, val, scale64, window, margin, readout_table, keys,
    work, z,
):  # fmt: skip
    """Certified early decision of a Dense readout, as ``event._early_decision`` for one sample.

    Inputs arrive in time order (a stable sort: ties by index). After ``k`` of them, with leader
    ``l`` and ``a_now`` the last intensity (``A`` before the first), stop when for every rival
    ``r``: ``lead_r > (1 - margin) * a_now * sum_unarrived max(0, w_ir - w_il) + tolerance``.

    With ``margin = 0`` certainty, once reached, persists: each later arrival ``i`` can cut a
    lead by at most ``a_i * max(0, w_ir - w_il)``, no more than it removes from the bound (the
    intensities fall and the tolerance is constant), and the leader stays. So the question
    is asked backwards (:func:`_early_back`): a sample not certain after all its arrivals is
    never certain (28 % of the bench MLP's test samples, settled by two passes over the
    arrivals without any sorting, then the float32 full pass for their potentials), and the
    others are decided near the window's end (a median 21 of 125 arrivals after the
    decision), found by taking the arrivals back a time bucket at a time from the end: the
    state before a bucket is certain or the decision is inside that bucket, the only one put
    in order. With ``margin > 0`` the bound shrinks by
    less than an arrival can cut, certainty can come and go, and every arrival is tested in
    order (:func:`_early_forward`).

    ``keys`` (int64), ``work`` (``(4, C')`` float64) and ``z`` (float32) are scratch; ``n_ops``
    is the fired inputs' operations. Writes the potentials at the decision into ``work[0]``
    (float64), or, for a sample never certain, the full pass's float32 potentials (the event
    kernel's scatter over the same spikes, what a run without the early decision computes);
    returns (operations used, decision time).
    """
    if margin == 0.0:
        return _early_back(
            row, weights, fanout, cur, nf, n_ops, idx, val, scale64, window, readout_table,
            keys, work, z,
        )  # fmt: skip
    return _early_forward(
        row, weights, fanout, cur, nf, n_ops, idx, val, scale64, window, margin, readout_table,
        keys, work, z,
    )  # fmt: skip


@_jit(inline="always")
def _early_setup(row, weights, scale64, readout_table, work):  # type: ignore[no-untyped-def]
    """``work[0]`` the potentials before any arrival (the bias), ``work[1]`` zeros (the bound
    row), ``work[2]`` each class's magnitude ``|b| + A * sum_i |w_i|`` (for the tolerance),
    ``work[3]`` the bias; returns the float32 rounding bound ``(H + 1) * 2**-23``."""
    n_cls = row[OUT_SIZE]
    b_off = row[B_OFF]
    for j in range(readout_table.shape[1]):
        b = np.float64(weights[b_off + j]) if j < n_cls else 0.0
        work[0, j] = b
        work[1, j] = 0.0
        work[2, j] = abs(b) + scale64 * readout_table[n_cls, j]
        work[3, j] = b
    return (row[IN_SIZE] + 1) * 2.0**-23


@_jit(inline="always")
def _never_certain(row, weights, nf, idx, val, work, z):  # type: ignore[no-untyped-def]
    """A sample never certain: the full pass's float32 potentials into ``work[0]``."""
    _dense(row, weights, nf, idx, val, z)
    for j in range(row[OUT_SIZE]):
        work[0, j] = z[j]


@_jit(inline="always")
def _early_back(  # type: ignore[no-untyped-def]
    row, weights, fanout, cur, nf, n_ops, idx, val, scale64, window, readout_table, keys, work, z
):  # fmt: skip
    """:func:`_early` with ``margin = 0``, backwards from the window's end.

    All arrivals summed (in index order, no sorting) give the end's leader ``l`` and test; a
    failed test there is final. Otherwise the arrivals are taken back a time bucket
    (:func:`_buckets`) at a time, the state before each bucket tested with ``l`` (its ``a_now``
    the smallest intensity of the arrivals before it, i.e. the last one's; where another class
    leads, ``l``'s test fails as that class's would, or it would lead at the end) until one
    fails or none is left: the decision is the first arrival of the failing bucket, sorted and
    replayed forward from the state before it, that passes (or the bucket's last, whose state
    passed).
    The same arrival as testing forward at every arrival; potentials equal up to float64
    rounding (another summation order).
    """
    n_cls = row[OUT_SIZE]
    width = readout_table.shape[1]  # n_cls padded (zero weights)
    first = n_cls + 1  # row of W^T[0] in the table
    f_off = row[F_OFF]
    pot = work[0]
    arrived = work[1]  # sum over arrived inputs of max(0, w_ir - w_il), l the end's leader
    magnitude = work[2]
    rounding = _early_setup(row, weights, scale64, readout_table, work)
    a_now = scale64 if nf == 0 else np.inf
    for k in range(nf):  # the last arrival's (intensity falls with time, rounded too)
        a_now = min(a_now, np.float64(val[k]))
    _rows(readout_table, first, idx, val, nf, -1, pot)  # every arrival, in index order
    leader = _argmax(pot, n_cls)
    _rows(readout_table, first, idx, val, nf, leader, arrived)
    if _fails(pot, arrived, magnitude, readout_table, n_cls, leader, a_now, 1.0, rounding):
        _never_certain(row, weights, nf, idx, val, work, z)
        return n_ops, np.float64(window + 1.0)
    n_buckets = _buckets(nf, val, scale64, keys)
    ends = keys[2 * nf : 2 * nf + n_buckets]
    # least[m]: the smallest intensity of the first m arrivals in bucket order; where they are
    # whole buckets (a time prefix), that of the last of them to arrive, the state's a_now
    least = keys[nf : 2 * nf].view(np.float64)
    smallest = np.inf
    for m in range(nf):
        least[m] = smallest
        smallest = min(smallest, np.float64(val[keys[m]]))
    used = n_ops
    hi = nf  # the state holds the first `hi` arrivals (whole buckets), and it is certain
    b = n_buckets - 1
    while hi > 0:
        while b > 0 and ends[b - 1] >= hi:  # the bucket of arrival hi - 1: [lo, hi)
            b -= 1
        lo = ends[b - 1] if b > 0 else 0
        for m in range(lo, hi):  # taken back
            o = keys[m]
            _arrive(readout_table, first + idx[o], np.float64(val[o]), -1.0, leader, pot, arrived)
            used -= fanout[f_off + idx[o]]
        if lo == 0:  # before any arrival: exactly the bias
            for j in range(width):
                pot[j] = work[3, j]
                arrived[j] = 0.0
            a_now = scale64
        else:  # the last arrival before the bucket
            a_now = least[lo]
        # (Another leader here fails too: its lead over `leader` is not above the bound.)
        if _fails(pot, arrived, magnitude, readout_table, n_cls, leader, a_now, 1.0, rounding):
            # The decision is in [lo, hi): in order, forward from here.
            _time_keys(cur, idx, keys, lo, hi)
            _insertion_sort(keys, lo, hi)
            for m in range(lo, hi):
                o = keys[m] & 0xFFFFFFFF
                a = np.float64(val[o])
                _arrive(readout_table, first + idx[o], a, 1.0, leader, pot, arrived)
                used += fanout[f_off + idx[o]]
                if m == hi - 1 or not _fails(
                    pot, arrived, magnitude, readout_table, n_cls, leader, a, 1.0, rounding
                ):
                    return used, np.float64(cur[idx[o]])
        hi = lo
    return used, np.float64(window)  # certain before the first arrival


@_jit()
def _early_forward(  # type: ignore[no-untyped-def]
    row, weights, fanout, cur, nf, n_ops, idx, val, scale64, window, margin, readout_table, keys,
    work, z,
):  # fmt: skip
    """:func:`_early` with ``margin > 0``: every arrival in order, tested.

    The numpy engine keeps ``sum_arrived max(0, w_ir - w_il)`` for every leader ``l``; only the
    current leader's row is ever read, so this keeps that one row and rebuilds it when the lead
    changes hands (rarely): the same numbers up to float64 rounding, C times less work.
    """
    n_cls = row[OUT_SIZE]
    first = n_cls + 1
    f_off = row[F_OFF]
    pot = work[0]
    arrived = work[1]  # sum over arrived inputs of max(0, w_ir - w_i,kept)
    magnitude = work[2]
    rounding = _early_setup(row, weights, scale64, readout_table, work)
    _arrival_order(cur, nf, idx, val, scale64, keys)
    keep = 1.0 - margin
    a_now = scale64
    used = 0
    kept = 0  # the leader whose row `arrived` holds
    k = 0
    while True:
        leader = _argmax(pot, n_cls)
        if leader != kept:
            _leader_row(readout_table, n_cls, idx, keys, k, leader, arrived)
            kept = leader
        if not _fails(pot, arrived, magnitude, readout_table, n_cls, leader, a_now, keep, rounding):
            break
        if k == nf:
            _never_certain(row, weights, nf, idx, val, work, z)
            return n_ops, np.float64(window + 1.0)
        o = keys[k] & 0xFFFFFFFF
        a_now = np.float64(val[o])
        _arrive(readout_table, first + idx[o], a_now, 1.0, kept, pot, arrived)
        used += fanout[f_off + idx[o]]
        k += 1
    if k == 0:
        return used, np.float64(window)
    return used, np.float64(cur[idx[keys[k - 1] & 0xFFFFFFFF]])


@_jit(inline="always")
def _decide(  # type: ignore[no-untyped-def]
    s, c, row, weights, fanout, cur, nf, n_ops, idx, val, scale64, margin, readout_table, keys,
    work, z, logits, decided, counts, n_layers, n_pops,
):  # fmt: skip
    """Sample ``s``'s Dense readout with the early decision (:func:`_early`), its ``nf`` fired
    inputs gathered: the potentials at the decision into ``logits[s]``, the time into
    ``decided[s]``, the operations used (and, without the decision, ``n_ops``) into counter
    row ``c``."""
    p_in = row[POP_IN]
    used, when = _early(
        row, weights, fanout, cur, nf, n_ops, idx, val, scale64, p_in, margin, readout_table,
        keys, work, z,
    )  # fmt: skip
    for j in range(row[OUT_SIZE]):
        logits[s, j] = work[0, j]
    decided[s] = when
    counts[c, row[LAYER]] += used
    counts[c, n_layers + 2 * n_pops] += n_ops


@_jit()
def _sample(  # type: ignore[no-untyped-def]
    s, src, start, stop, steps, weights, fanout, popf, popd, rec_offsets, readout_table,
    early, margin, out, logits, decided, rec, record, counts, n_layers, n_pops, buf, idx, keys,
    work,
):  # fmt: skip
    """Run sample ``s`` through steps ``[start, stop)``; see :func:`run_steps` for the arguments.

    ``buf`` ``(5, max_size)`` float32, ``idx`` ``(max_size,)`` and ``keys`` ``(4 max_size + 65,)``
    int64, ``work`` ``(4, C')`` float64 are scratch, allocated once per batch.
    """
    c = s if counts.shape[0] > 1 else 0  # one row of counters: the samples add up in it
    cur = buf[0]
    nxt = buf[1]
    z = buf[2]
    acc = buf[3]
    val = buf[4]
    size = steps[start, IN_SIZE]
    if start > 0:  # spike times of a population (step 0 encodes the raw inputs in place)
        for i in range(size):
            cur[i] = src[s, i]
    for st in range(start, stop):
        row = steps[st]
        kind = row[KIND]
        if kind == K_FLATTEN:
            continue
        if kind == K_MAXPOOL:
            _minpool(row, cur, nxt)
            cur, nxt = nxt, cur
            size = row[OUT_SIZE]
            continue
        p_out = row[POP_OUT]
        if kind == K_INPUT:  # ON/OFF split (ON first) and encode
            n_in = row[IN_SIZE]
            raw = src[s]
            sent, clipped = _encode(raw, n_in, 0, popf, nxt, rec, s, 0, record, 1)
            if row[FLAG]:
                more, clip_off = _encode(raw, n_in, 0, popf, nxt[n_in:], rec, s, n_in, record, -1)
                sent += more
                clipped += clip_off
            counts[c, n_layers] += sent
            counts[c, n_layers + n_pops] += clipped
            cur, nxt = nxt, cur
            size = row[OUT_SIZE]
            continue
        p_in = row[POP_IN]
        nf, n_ops = _gather(
            cur, size, popf[p_in, P_SCALE], popf[p_in, P_END], fanout, row[F_OFF], idx, val
        )
        layer = row[LAYER]
        is_readout = p_out < 0
        if is_readout and early:
            _decide(
                s, c, row, weights, fanout, cur, nf, n_ops, idx, val, popd[p_in], margin,
                readout_table, keys, work, z, logits, decided, counts, n_layers, n_pops,
            )  # fmt: skip
            return
        counts[c, layer] += n_ops
        if kind == K_DENSE:
            _dense(row, weights, nf, idx, val, z)
        elif kind == K_CONV:
            _conv(row, weights, nf, idx, val, cur, popf[p_in, P_SCALE], popf[p_in, P_END], acc, z)
        else:
            _avgpool(row, nf, idx, val, z)
        size = row[OUT_SIZE]
        if is_readout:
            for j in range(size):
                logits[s, j] = z[j]
            return
        sent, clipped = _encode(z, size, p_out, popf, nxt, rec, s, rec_offsets[p_out], record, 1)
        counts[c, n_layers + p_out] += sent
        counts[c, n_layers + n_pops + p_out] += clipped
        cur, nxt = nxt, cur
    for i in range(size):
        out[s, i] = cur[i]


@_jit(nogil=True)
def early_batch(
    src, row, weights, fanout, popf, popd, readout_table, margin, logits, decided, counts,
    n_layers, n_pops,
):  # fmt: skip
    """A Dense readout that decides early, over a batch: :func:`run` for the steps ``[readout,
    readout + 1)`` with an early decision, in a kernel of its own (:func:`run_steps` picks it;
    the interpreter around the same code measured ~8 % slower on the bench MLP's readout at
    batch 256: 5.3 vs 4.9 µs per sample). ``src`` ``(N, H)``: the (cut) spike times of the
    readout's input population; the other arguments as :func:`run_steps`'s.
    """
    h, p_in = row[IN_SIZE], row[POP_IN]
    scale, end = popf[p_in, P_SCALE], popf[p_in, P_END]
    idx = np.empty(h, np.int64)
    val = np.empty(h, np.float32)
    z = np.empty(max(h, row[OUT_SIZE]), np.float32)
    keys = np.empty(4 * h + 65, np.int64)
    work = np.empty((4, readout_table.shape[1]), np.float64)
    for s in range(src.shape[0]):
        cur = src[s]
        nf, n_ops = _gather(cur, h, scale, end, fanout, row[F_OFF], idx, val)
        _decide(
            s, s if counts.shape[0] > 1 else 0, row, weights, fanout, cur, nf, n_ops, idx, val,
            popd[p_in], margin, readout_table, keys, work, z, logits, decided, counts, n_layers,
            n_pops,
        )  # fmt: skip


@_jit(nogil=True)
def chain_batch(
    src, steps, chain, panels, panel_starts, weights, fanout, popf, popd, readout_table, early,
    margin, chunk, logits, decided, rec, record, rec_offsets, counts, n_layers, n_pops,
):  # fmt: skip
    """A multilayer perceptron over a batch, every layer on its event kernel, in one call.

    What ``compiled._layered`` runs kernel by kernel for such a network, with the same numbers:
    :func:`input_batch` (the raw inputs to the first layer's intensities), then per layer
    :func:`scatter_chunks` (``chunk`` samples at a time) and :func:`encode_batch`, which passes
    the intensities on, and a readout that decides early on :func:`early_batch` (its inputs'
    spike times written out instead). No Python runs between the kernels: on the bench MLP's
    batch-256 ``balanced`` run the interpreter's work between them cost about 12 % of the
    time, twice what it takes with the kernels stubbed out (presumably its data evicting the
    kernels' weights from the caches; not measured: no hardware counters here).

    ``chain``: the synaptic layers' steps (``compiled.Program.chain``, two or more when
    ``early``); ``panels``: every layer's weights in panels, layer ``l``'s from
    ``panel_starts[l]`` (``compiled.Program.panel_buffer``); the other arguments as
    :func:`run_steps`'s. Returns :func:`input_batch`'s (bad, clipped): with bad inputs nothing
    ran.
    """
    n = src.shape[0]
    n_chain = chain.shape[0]
    a = np.empty((n, steps[0, OUT_SIZE]), np.float32)
    bad, clipped = input_batch(
        src, steps[0], popf, fanout, a, rec, record, counts, n_layers, n_pops
    )  # fmt: skip
    if bad:
        return bad, clipped
    # the last layer that passes intensities on: the one before a readout that decides early
    # reads spike times instead
    passing = n_chain - 2 if early else n_chain - 1
    for layer in range(n_chain):
        row = steps[chain[layer]]
        if early and layer == n_chain - 1:
            early_batch(
                a, row, weights, fanout, popf, popd, readout_table, margin, logits, decided,
                counts, n_layers, n_pops,
            )  # fmt: skip
            break
        z = np.empty((n, row[OUT_SIZE]), np.float32)
        scatter_chunks(a, row, panels[panel_starts[layer] :], z, chunk)
        p = row[POP_OUT]
        following = layer + 1 if layer < passing else -1
        nxt = np.empty_like(z) if p >= 0 else z  # the readout writes `logits` only
        encode_batch(
            z, row, weights, popf, nxt, logits, rec, record, rec_offsets[max(p, 0)], counts,
            n_layers, n_pops, fanout, steps[chain[following], F_OFF] if following > 0 else 0,
            following,
        )  # fmt: skip
        a = nxt
    return 0, clipped


# Entries of the control array of :func:`run` (int64): the steps to run, whether the readout
# decides early, the scratch size, whether spike times are recorded, the numbers of synaptic
# layers and of populations; then each population's column in ``rec``.
C_START, C_STOP, C_EARLY, C_MAX_SIZE, C_RECORD, C_LAYERS, C_POPS, C_REC = range(8)


def control(
    start: int,
    stop: int,
    early: bool,
    max_size: int,
    record: bool,
    n_layers: int,
    n_pops: int,
    rec_offsets: np.ndarray,
) -> np.ndarray:
    """The control array of :func:`run` (see ``C_START`` ...)."""
    head = [start, stop, int(early), max_size, int(record), n_layers, n_pops]
    return np.concatenate([np.array(head, np.int64), rec_offsets.astype(np.int64)])


def plan64(popd: np.ndarray, margin: float) -> np.ndarray:
    """The float64 table of :func:`run`: each population's scale, then the plan's margin."""
    return np.concatenate([popd.astype(np.float64), [float(margin)]])


@_jit(nogil=True)
def run(
    src,
    steps,
    weights,
    fanout,
    popf,
    table64,
    readout_table,
    ctl,
    out,
    logits,
    decided,
    rec,
    counts,
):  # type: ignore[no-untyped-def]
    """:func:`run_steps` in one compiled call, its scalars packed in ``ctl`` (:func:`control`)
    and the float64 scales and margin in ``table64`` (:func:`plan64`): numba's dispatcher
    costs ~0.1 µs per argument, a sizeable share of a single sample's run."""
    start, stop, max_size = ctl[C_START], ctl[C_STOP], ctl[C_MAX_SIZE]
    early, record = ctl[C_EARLY] != 0, ctl[C_RECORD] != 0
    n_layers, n_pops = ctl[C_LAYERS], ctl[C_POPS]
    rec_offsets = ctl[C_REC:]
    popd = table64[:n_pops]
    margin = table64[n_pops]
    if start == 0:  # raw inputs: count what a caller may not have checked, before any work
        signed = steps[0, FLAG] != 0
        threshold = popf[0, P_SAT]
        bad = 0
        clipped = 0
        for s in range(src.shape[0]):
            for i in range(src.shape[1]):
                v = src[s, i]
                bad += (not abs(v) <= FLOAT32_MAX) | ((v < 0) & (not signed))
                clipped += abs(v) > threshold
        if bad:
            return bad, clipped
    else:
        clipped = 0
    buf = np.empty((5, max_size), np.float32)
    idx = np.empty(max_size, np.int64)
    keys = np.empty(4 * max_size + 65, np.int64)
    work = np.empty((4, readout_table.shape[1]), np.float64)
    for s in range(src.shape[0]):
        _sample(
            s, src, start, stop, steps, weights, fanout, popf, popd, rec_offsets, readout_table,
            early, margin, out, logits, decided, rec, record, counts, n_layers, n_pops, buf, idx,
            keys, work,
        )  # fmt: skip
    return 0, clipped


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="powersave")


def in_blocks(block: Callable[[int, int], T], n: int, threads: int) -> list[T]:
    """``block(lo, hi)`` over ``threads`` contiguous blocks of ``range(n)``, run by concurrent
    Python threads (kernels that release the GIL; numba's ``parallel=True`` on the interpreter
    costs about a minute of compilation, this none). One block, in this thread, when
    ``threads <= 1``."""
    threads = min(threads, n)
    if threads <= 1:
        return [block(0, n)]
    bounds = np.linspace(0, n, threads + 1).astype(int).tolist()
    return list(_pool(threads).map(block, bounds[:-1], bounds[1:]))


def run_steps(
    src: np.ndarray,
    start: int,
    stop: int,
    steps: np.ndarray,
    weights: np.ndarray,
    fanout: np.ndarray,
    popf: np.ndarray,
    popd: np.ndarray,
    rec_offsets: np.ndarray,
    readout_table: np.ndarray,
    early: bool,
    margin: float,
    max_size: int,
    out: np.ndarray,
    logits: np.ndarray,
    decided: np.ndarray,
    rec: np.ndarray,
    record: bool,
    counts: np.ndarray,
    n_layers: int,
    n_pops: int,
    threads: int = 1,
) -> tuple[int, int]:
    """Run every sample of ``src`` through steps ``[start, stop)`` of the table, in place.

    Args:
        src: ``(N, F)`` float32: the raw inputs when ``start == 0``, else the (cut) spike times
            of the population entering step ``start``, flattened in C order.
        steps, weights, fanout: the step table and flat buffers of the compiled program.
        popf: ``(P, 4)`` float32 per population: scale, window end, saturation threshold and
            cut-off time; ``popd``: ``(P,)`` float64 scales (the early decision's ``a_now``).
        rec_offsets: ``(P,)`` column of each population in ``rec``.
        readout_table: ``(C + 1 + H, C')`` float64: ``sum_i max(0, w_ir - w_il)`` of the
            readout in rows ``l < C``, ``sum_i |w_ic|`` in row ``C``, ``W^T`` in float64 below,
            columns padded with zeros to ``C'`` (see ``compiled.Program``).
        early, margin: the plan's early decision.
        max_size: the largest population or potential buffer.
        out: ``(N, F_out)`` times after the last step when it is not the readout.
        logits: ``(N, classes)`` float64 readout potentials; ``decided``: ``(N,)`` decision times
            (written only with an early decision).
        rec: ``(N, R)`` float32 spike times before cut-offs, written when ``record``.
        counts: ``(N, layers + 2 P + 1)`` int64 counters, added to: synaptic operations per
            layer, spikes sent per population, neurons saturated per population, and the
            readout's operations without the early decision. With one row, every sample adds
            to it.
        n_layers, n_pops: the number of synaptic layers and of populations.
        threads: split the batch into this many blocks run by concurrent threads.

    Returns:
        From step 0 (raw inputs): the number of input values that are not finite (or negative,
        for an unsigned input), in which case nothing was run, and the number above the input
        scale (they saturate). ``(0, 0)`` from a later step.
    """
    n = src.shape[0]
    threads = min(threads, n)
    if counts.shape[0] == 1 and n > 1:
        threads = 1  # one row of counters that every sample adds to: one thread, no lost updates
    row = steps[start]
    if early and 0 < start == stop - 1 and row[KIND] == K_DENSE and row[POP_OUT] < 0:
        # The readout alone (a Dense layer with no output population), deciding early (after
        # a dense chain): a kernel of its own.
        def readout(a: int, b: int) -> tuple[int, int]:
            early_batch(
                src[a:b], row, weights, fanout, popf, popd, readout_table, margin,
                logits[a:b], decided[a:b], counts[a:b], n_layers, n_pops,
            )  # fmt: skip
            return 0, 0

        in_blocks(readout, n, threads)
        return 0, 0
    ctl = control(start, stop, early, max_size, record, n_layers, n_pops, rec_offsets)
    table64 = plan64(popd, margin)

    def block(a: int, b: int) -> tuple[int, int]:
        return run(  # type: ignore[no-any-return]
            src[a:b], steps, weights, fanout, popf, table64, readout_table, ctl,
            out[a:b] if out.shape[0] == n else out, logits[a:b], decided[a:b],
            rec[a:b] if record else rec, counts[a:b],
        )  # fmt: skip

    found = in_blocks(block, n, threads)
    return sum(int(f[0]) for f in found), sum(int(f[1]) for f in found)
