r"""A clipper's policy inside the scale launch: this step's threshold from a small device state.

Each program of the scale launch calls :func:`policy_coef` once it has reduced the partials to
the norm.  It reads the clipper's *policy buffer* (one float64 tensor; the layout is in
``launch_settings``: a ticket word, the non-finite mode, the count and two statistics, the
hyper-parameters, and for the percentile the window), computes this step's threshold and clip
coefficient, and returns the coefficient.  Every program runs the same arithmetic on the same
bytes, so all of them get the same coefficient without a grid-wide synchronisation.

The arithmetic is op for op the torch-op reference in ``fastclip.adaptive`` (the CPU fallback):
the norm rounded to its dtype and widened to float64, the same float64 operations in the same
order, each IEEE-rounded (the scale kernel is compiled without FMA contraction), the threshold
rounded back to the norm's dtype.  So thresholds, coefficients, state and gradients are bitwise
those of the reference.

Who writes what.  The state must not change while another program of the launch may still read
it, and the programs of a launch do not all run at once.  So each program, once it has read the
state, takes a ticket (an acq_rel atomic add on the ticket word, after a CTA barrier so that every
thread's reads are done); the program that draws the last ticket knows that all others have read
the state.  It writes the new state (only for a finite norm: a non-finite norm never enters the
statistics), the step's threshold, coefficient, clipped flag and found_inf (program 0 writes the
norm, as in ``clip_``), and resets the ticket to 0 for the next launch.

Policies (``P`` = the norm of this step, in float64; settings words in ``POLICY_SETTINGS``):

* fixed: ``c = threshold`` (a state word, so it can be changed in place).
* mean: ``c = warmup_max_norm`` while ``count < warmup_steps``, then ``factor * sum / n`` with
  ``n = count`` (``running``) or ``min(count, warmup_steps)``; ``sum += min(P, c)`` while counted.
* zclip: warm-up by Welford's running mean and sum of squared deviations (in step order, a fixed
  order both paths share); then z-score spikes on the EMA mean and variance (ZClip's rule), with
  the standard deviation raised to ``min_std`` where it is smaller.
* percentile over a window of ``L <= POLICY_MAX_WINDOW`` norms: the buffer holds the ring of the
  last ``L`` norms and two sorted copies of it (read copy ``count % 2``, the last program writes
  the other).  A program counts the ranks at which the oldest norm leaves and ``P`` enters the
  sorted window (one pass over it) and reads the two order statistics of numpy's linear
  percentile at their positions after the exchange: no sort, no extra launch.

Bytes per program: reads ~120 (+ 8 * L for the percentile); the last program writes ~60
(+ 8 * L for the percentile's sorted copy).
"""
import triton
import triton.language as tl

from .launch_settings import (NONFINITE_ERROR, NONFINITE_SKIP, POLICY_FIXED, POLICY_MEAN, POLICY_PERCENTILE,
                              POLICY_SETTINGS, POLICY_WORD_ARRAYS, POLICY_WORD_COUNT, POLICY_WORD_NONFINITE,
                              POLICY_WORD_SETTINGS, POLICY_WORD_STAT0, POLICY_WORD_STAT1, POLICY_WORD_TICKET,
                              POLICY_ZCLIP)


def _setting(policy: int, name: str) -> tl.constexpr:
    names = [entry.split(":")[0] for entry in POLICY_SETTINGS[policy]]
    return tl.constexpr(POLICY_WORD_SETTINGS + names.index(name))


FIXED = tl.constexpr(POLICY_FIXED)
MEAN = tl.constexpr(POLICY_MEAN)
ZCLIP = tl.constexpr(POLICY_ZCLIP)
PERCENTILE = tl.constexpr(POLICY_PERCENTILE)
SKIP = tl.constexpr(NONFINITE_SKIP)
ERROR = tl.constexpr(NONFINITE_ERROR)

TICKET = tl.constexpr(POLICY_WORD_TICKET)
MODE = tl.constexpr(POLICY_WORD_NONFINITE)
COUNT = tl.constexpr(POLICY_WORD_COUNT)
STAT0 = tl.constexpr(POLICY_WORD_STAT0)
STAT1 = tl.constexpr(POLICY_WORD_STAT1)
ARRAYS = tl.constexpr(POLICY_WORD_ARRAYS)

MEAN_WARMUP_STEPS = _setting(POLICY_MEAN, "warmup_steps")
MEAN_FACTOR = _setting(POLICY_MEAN, "factor")
MEAN_WARMUP_MAX_NORM = _setting(POLICY_MEAN, "warmup_max_norm")
MEAN_RUNNING = _setting(POLICY_MEAN, "running")
Z_WARMUP_STEPS = _setting(POLICY_ZCLIP, "warmup_steps")
Z_ALPHA = _setting(POLICY_ZCLIP, "alpha")
Z_ONE_MINUS_ALPHA = _setting(POLICY_ZCLIP, "one_minus_alpha")
Z_THRESH = _setting(POLICY_ZCLIP, "z_thresh")
Z_CLIP_FACTOR = _setting(POLICY_ZCLIP, "clip_factor")
Z_MAX_NORM = _setting(POLICY_ZCLIP, "max_norm")
Z_EPS = _setting(POLICY_ZCLIP, "eps")
Z_CLIP_TO_MEAN = _setting(POLICY_ZCLIP, "clip_to_mean")
Z_SKIP_UPDATE = _setting(POLICY_ZCLIP, "skip_update_on_spike")
Z_MIN_STD = _setting(POLICY_ZCLIP, "min_std")
P_WINDOW = _setting(POLICY_PERCENTILE, "window")
P_QUANTILE = _setting(POLICY_PERCENTILE, "quantile")

#: elements of the percentile window a program reads per loop iteration
WINDOW_BLOCK = tl.constexpr(1024)


@triton.jit
def clip_coef(threshold, norm, NORM_FP64: tl.constexpr):
    """torch's ``threshold / (norm + 1e-6)`` (not clamped), IEEE-rounded in the norm's dtype."""
    if NORM_FP64:
        coef = threshold / (norm + 1e-6)  # fp64 division is IEEE-rounded already
    else:
        coef = tl.div_rn(threshold, norm + 1e-6)  # fp32 `/` would be the approximate div.full
    return coef


@triton.jit
def _torch_min(a, b):
    """torch.minimum / torch.clamp(max=) on scalars: NaN stays NaN, a tie returns ``a`` (std::min)."""
    return tl.where(a != a, a, tl.where(b < a, b, a))


@triton.jit
def _mean_threshold(words, floats, count, x, finite):
    """MeanClipper: (threshold, new sum)."""
    warmup_steps = tl.load(words + MEAN_WARMUP_STEPS)
    running = tl.load(words + MEAN_RUNNING) != 0
    total = tl.load(floats + STAT0)
    warming = count < warmup_steps
    averaged = tl.where(running, count, tl.minimum(count, warmup_steps))
    mean = total / tl.maximum(averaged, 1).to(tl.float64)
    threshold = tl.where(warming, tl.load(floats + MEAN_WARMUP_MAX_NORM), mean * tl.load(floats + MEAN_FACTOR))
    counted = finite & (running | warming)
    new_total = total + tl.where(counted, _torch_min(x, threshold), 0.0)
    return threshold, new_total


@triton.jit
def _zclip_threshold(words, floats, count, x, finite):
    """ZClipper: (threshold, new mean, new variance)."""
    warmup_steps = tl.load(words + Z_WARMUP_STEPS)
    z_thresh = tl.load(floats + Z_THRESH)
    mean = tl.load(floats + STAT0)
    var = tl.load(floats + STAT1)
    warming = count < warmup_steps
    record = warming & finite
    # warm-up: Welford's running mean and sum of squared deviations, one norm per step
    delta = x - mean
    run_mean = mean + delta / (count + 1).to(tl.float64)
    run_m2 = var + delta * (x - run_mean)
    init = record & (count == warmup_steps - 1)  # this norm completes the warm-up
    # z-score phase, on the statistics of the previous steps
    active = (~warming) & finite
    std = tl.sqrt(var)  # float64: sqrt.rn.f64, IEEE-rounded like torch.sqrt
    min_std = tl.load(floats + Z_MIN_STD)
    std = tl.where(std < min_std, min_std, std)  # the floor (0: none); a NaN std stays NaN
    z = (x - mean) / (std + tl.load(floats + Z_EPS))
    spike = active & (z > z_thresh)
    adaptive = (mean + (z_thresh * std) / (z / z_thresh)) * tl.load(floats + Z_CLIP_FACTOR)
    clip_val = tl.where(tl.load(words + Z_CLIP_TO_MEAN) != 0, mean, adaptive)
    threshold = _torch_min(tl.where(spike, clip_val, float("inf")), tl.load(floats + Z_MAX_NORM))
    update = active & ~(spike & (tl.load(words + Z_SKIP_UPDATE) != 0))
    u = tl.where(spike, clip_val, x)
    alpha = tl.load(floats + Z_ALPHA)
    one_minus_alpha = tl.load(floats + Z_ONE_MINUS_ALPHA)
    new_mean = mean * alpha + u * one_minus_alpha
    dev = u - new_mean
    new_var = var * alpha + (dev * dev) * one_minus_alpha
    mean_out = tl.where(record, run_mean, tl.where(update, new_mean, mean))
    var_at_warmup = tl.where(init, run_m2 / warmup_steps.to(tl.float64), run_m2)
    var_out = tl.where(record, var_at_warmup, tl.where(update, new_var, var))
    return threshold, mean_out, var_out


@triton.jit
def _sorted_after(now, window, j, k_old, k_new, x):
    """Element(s) ``j`` of the sorted window once the oldest norm (rank ``k_old`` in ``now``) is
    taken out and ``x`` put in at rank ``k_new``: reads ``now`` at j - 1, j, j + 1."""
    prev = tl.load(now + j - 1, mask=(j >= 1) & (j <= window), other=float("inf"))
    here = tl.load(now + j, mask=j < window, other=float("inf"))
    after = tl.load(now + j + 1, mask=j + 1 < window, other=float("inf"))
    without_j = tl.where(j < k_old, here, after)  # element j once the old norm is out
    without_prev = tl.where(j - 1 < k_old, prev, here)  # element j - 1 once the old norm is out
    return tl.where(j < k_new, without_j, tl.where(j == k_new, x, without_prev))


@triton.jit
def _percentile_threshold(words, floats, count, x, finite):
    """PercentileClipper with a window: (threshold, rank of the leaving norm, rank of x)."""
    window = tl.load(words + P_WINDOW)
    ring = floats + ARRAYS
    old = tl.load(ring + count % window)  # +inf while the ring is not full
    now = ring + window + (count % 2) * window
    offs = tl.arange(0, WINDOW_BLOCK)
    below_old = tl.zeros([WINDOW_BLOCK], tl.int32)
    below_x = tl.zeros([WINDOW_BLOCK], tl.int32)
    for start in tl.range(0, window, WINDOW_BLOCK):
        s = tl.load(now + start + offs, mask=start + offs < window, other=float("inf"))
        below_old += (s < old).to(tl.int32)
        below_x += (s < x).to(tl.int32)
    k_old = tl.sum(below_old, axis=0)  # `old` is in the window: now[k_old] == old
    k_new = tl.sum(below_x, axis=0) - (old < x).to(tl.int32)
    # numpy's 'linear' percentile of the n recorded norms (the reference's arithmetic)
    n = tl.minimum(count + finite.to(tl.int64), window)
    index = (n - 1).to(tl.float64) * tl.load(floats + P_QUANTILE)
    lo = tl.floor(index)
    t = index - lo
    last = tl.maximum(n - 1, 0)
    lo_i = tl.minimum(tl.maximum(lo.to(tl.int64), 0), last)
    hi_i = tl.minimum(lo_i + 1, last)
    a = tl.where(finite, _sorted_after(now, window, lo_i, k_old, k_new, x), tl.load(now + lo_i))
    b = tl.where(finite, _sorted_after(now, window, hi_i, k_old, k_new, x), tl.load(now + hi_i))
    diff = b - a
    # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
    value = tl.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
    threshold = tl.where(n > 0, value, float("inf"))  # no finite norm yet: no clipping
    return threshold, k_old, k_new


@triton.jit
def _percentile_commit(words, floats, count, x, k_old, k_new):
    """Last program, finite norm: x into the ring, the exchanged sorted window into the other copy."""
    window = tl.load(words + P_WINDOW)
    ring = floats + ARRAYS
    now = ring + window + (count % 2) * window
    nxt = ring + window + ((count + 1) % 2) * window
    offs = tl.arange(0, WINDOW_BLOCK)
    for start in tl.range(0, window, WINDOW_BLOCK):
        j = start + offs
        tl.store(nxt + j, _sorted_after(now, window, j, k_old, k_new, x), mask=j < window)
    tl.store(ring + count % window, x)


@triton.jit
def policy_coef(norm, policy_ptr, values_ptr, clipped_ptr, found_inf_ptr, n_programs,
                POLICY: tl.constexpr, NORM_FP64: tl.constexpr):
    """This step's clip coefficient from the clipper's state (not clamped: >= 1 leaves the grads).

    ``norm`` is this step's norm in its dtype; ``values_ptr`` points at [norm, threshold, coef]
    (norm dtype), ``clipped_ptr`` at a bool, ``found_inf_ptr`` at a float32.  The program that
    draws the last ticket updates the state and writes threshold, coef, clipped and found_inf.
    """
    NORM_DTYPE: tl.constexpr = tl.float64 if NORM_FP64 else tl.float32
    words = policy_ptr.to(tl.pointer_type(tl.int64))
    finite = (norm == norm) & (tl.abs(norm) != float("inf"))  # torch.isfinite, in the norm's dtype
    x = norm.to(tl.float64)  # the statistics are float64, fed with the rounded norm
    count = tl.load(words + COUNT)
    if POLICY == FIXED:
        threshold64 = tl.load(policy_ptr + STAT0)
    elif POLICY == MEAN:
        threshold64, new_sum = _mean_threshold(words, policy_ptr, count, x, finite)
    elif POLICY == ZCLIP:
        threshold64, new_mean, new_var = _zclip_threshold(words, policy_ptr, count, x, finite)
    else:
        threshold64, k_old, k_new = _percentile_threshold(words, policy_ptr, count, x, finite)
    threshold = threshold64.to(NORM_DTYPE)
    mode = tl.load(words + MODE)
    # nonfinite='skip': coef = 0 / (1 + 1e-6) = 0 exactly, as the reference's torch.where pair
    skip = (mode == SKIP) & ~finite
    coef = clip_coef(tl.where(skip, 0.0, threshold), tl.where(skip, 1.0, norm), NORM_FP64)

    # every read of the state is above: the last program to take a ticket may overwrite it
    tl.debug_barrier()
    ticket = tl.atomic_add(words + TICKET, 1)
    if ticket == n_programs - 1:
        if finite:  # a non-finite norm leaves the state bitwise unchanged
            if POLICY != FIXED:
                tl.store(words + COUNT, count + 1)
            if POLICY == MEAN:
                tl.store(policy_ptr + STAT0, new_sum)
            elif POLICY == ZCLIP:
                tl.store(policy_ptr + STAT0, new_mean)
                tl.store(policy_ptr + STAT1, new_var)
            elif POLICY == PERCENTILE:
                _percentile_commit(words, policy_ptr, count, x, k_old, k_new)
        tl.store(values_ptr + 1, threshold)
        tl.store(values_ptr + 2, tl.where(coef > 1.0, 1.0, coef))  # torch.clamp(max=1): NaN stays
        tl.store(clipped_ptr, ~(coef >= 1.0))  # a NaN coefficient rewrites the grads too
        tl.store(found_inf_ptr, tl.where(finite, 0.0, 1.0).to(tl.float32))
        tl.store(words + TICKET, 0)
    # nonfinite='error': leave the grads; the host reads found_inf and raises
    return tl.where((mode == ERROR) & ~finite, 1.0, coef)
