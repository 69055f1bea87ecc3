"""The student's feature kernel, compiled (numba, no GIL): padded slots in, the four feature
blocks and the two masks out, for B slots in one call.

``features`` is the arithmetic of ``service.serialize.tensors`` (whose docstrings name every
feature): one loop over the slots, each slot computed on its own users and resources only, so a
slot's tensors are bitwise the same alone and in any padded batch. Sums are taken in index order
(compiled without fast-math, so never reassociated). Every bit quantity is divided by the slot's
bit scale ``u_ref`` in float64 before the float32 cast, so scaling all of them by one factor
gives the same features to float64 rounding.

Compiled on first use (``service.jit.kernel``: no GIL, cached on disk); the serving process
compiles it, or loads it from the cache, when it loads a student model.
"""

from __future__ import annotations

import math

import numpy as np

from service.jit import kernel

#: ln(1 + 4096): the count normaliser of the global block
LOG_MAX_COUNT = math.log1p(4096.0)
#: ln(1 + 1000): the staleness normaliser (slots)
LOG_STALE = math.log1p(1000.0)
#: SE normaliser (bit/s/Hz): above the highest entry of the TS 38.214 MCS tables (7.4063)
SE_SCALE = 8.0
_TINY = np.float32(1e-30)


@kernel
def _stats(values: np.ndarray, mask: np.ndarray, count: int) -> tuple[float, float, float, float]:
    """(max, min, mean, std) of ``values`` [K] where ``mask``, in index order; zeros when none."""
    if count == 0:
        return 0.0, 0.0, 0.0, 0.0
    top, low, total, total_sq = -np.inf, np.inf, 0.0, 0.0
    for k in range(values.shape[0]):
        if mask[k]:
            v = values[k]
            top = max(top, v)
            low = min(low, v)
            total += v
            total_sq += v * v
    mean = total / count
    return top, low, mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


@kernel
def features(
    util_t: np.ndarray,  # float64 [B, R, N] utility^T on admissible pairs, 0 elsewhere
    elig: np.ndarray,  # bool [B, N]
    avail: np.ndarray,  # bool [B, R]
    num_ue: np.ndarray,  # int64 [B]
    num_res: np.ndarray,  # int64 [B]
    cap: np.ndarray,  # int64 [B] max resources per user
    slot: np.ndarray,  # int64 [B]
    spectrum: np.ndarray,  # bool [B]
    buf: np.ndarray,  # float64 [B, N] queued bits
    has_buf: np.ndarray,  # bool [B]
    p_rx: np.ndarray,  # float64 [B, N] dBm
    has_prx: np.ndarray,  # bool [B]
    bw: np.ndarray,  # float64 [B, R] Hz
    se_user: np.ndarray,  # float64 [B, N] best SE on an available resource, bit/s/Hz (0 unknown)
    has_hist: np.ndarray,  # bool [B]
    avg_served: np.ndarray,  # float64 [B, N]
    cum: np.ndarray,  # float64 [B, N] x_u
    last: np.ndarray,  # int64 [B, N] last served slot, -1 never
    known: np.ndarray,  # bool [B, N]
    present: np.ndarray,  # float64 [B, N] slots present (1 where unknown)
    u_ref: np.ndarray,  # float64 [B] the slot's bit scale
    g: np.ndarray,  # out float32 [B, G]
    uf: np.ndarray,  # out float32 [B, N, Fu]
    rf: np.ndarray,  # out float32 [B, R, Fr]
    pc: np.ndarray,  # out float32 [B, Fp, R, N]
    user_mask: np.ndarray,  # out float32 [B, N]
    res_mask: np.ndarray,  # out float32 [B, R]
) -> None:
    """Fill the output blocks of every slot (its padding with zeros)."""
    cap_n, cap_r = util_t.shape[2], util_t.shape[1]
    row_max = np.empty(cap_n, np.float32)
    row_sum = np.empty(cap_n, np.float32)
    col_max = np.empty(cap_r, np.float32)
    col_sum = np.empty(cap_r, np.float32)
    inv_row = np.empty(cap_n, np.float32)  # 1 / the user's best, per user of the slot
    avg = np.empty(cap_n)
    inv_avg = np.empty(cap_n)
    values = np.empty(max(cap_n, cap_r))
    for b in range(util_t.shape[0]):
        n, r = num_ue[b], num_res[b]
        g[b] = 0.0
        uf[b] = 0.0
        rf[b] = 0.0
        pc[b] = 0.0
        user_mask[b] = 0.0
        res_mask[b] = 0.0
        n_elig, n_avail = 0, 0
        for j in range(n):
            n_elig += elig[b, j]
        for i in range(r):
            n_avail += avail[b, i]
        inv_avail = np.float32(1.0 / max(n_avail, 1))
        inv_elig = np.float32(1.0 / max(n_elig, 1))
        scale = u_ref[b]

        # ---- pairs: admissible utility / slot max, its row and column maxima and sums
        row_max[:n] = -np.inf
        row_sum[:n] = 0.0
        total, total_sq, adm_min = 0.0, 0.0, np.inf
        for i in range(r):
            cmax, csum = np.float32(-np.inf), np.float32(0.0)
            for j in range(n):
                a = np.float32(util_t[b, i, j] / scale)
                pc[b, 0, i, j] = a
                cmax = max(cmax, a)
                csum += a
                row_max[j] = max(row_max[j], a)
                row_sum[j] += a
                total += float(a)
                total_sq += float(a) * float(a)
                if avail[b, i] and elig[b, j]:
                    adm_min = min(adm_min, float(a))
                    pc[b, 4, i, j] = 1.0
            col_max[i] = cmax
            col_sum[i] = csum
        for j in range(n):
            inv_row[j] = np.float32(1.0) / max(row_max[j], _TINY)
        for i in range(r):
            inv_col = np.float32(1.0) / max(col_max[i], _TINY)
            for j in range(n):
                a = pc[b, 0, i, j]
                pc[b, 1, i, j] = a * inv_row[j]
                pc[b, 2, i, j] = a * inv_col
                pc[b, 3, i, j] = min(a, np.float32(buf[b, j] / scale)) if has_buf[b] else a

        # ---- users
        prx_top = -np.inf
        for j in range(n):
            prx_top = max(prx_top, p_rx[b, j])
        s, q, rate_sum = 0.0, 0.0, 0.0
        for j in range(n):
            x = cum[b, j]
            s += x
            q += x * x
            rate_sum += x / present[b, j]
        hist = has_hist[b]
        mean_x = s / n if hist else 0.0
        mean_rate = rate_sum / n
        for j in range(n):
            row_mean = row_sum[j] * inv_avail
            avg[j] = max(avg_served[b, j] / scale if hist else np.float64(row_mean), 1e-12)
            inv_avg[j] = 1.0 / avg[j]
            if elig[b, j]:  # (users who may own nothing keep 0 in the utility, power, buffer and PF terms)
                uf[b, j, 0] = 1.0
                uf[b, j, 1] = row_max[j]
                uf[b, j, 2] = row_mean
                if has_prx[b]:
                    uf[b, j, 3] = (p_rx[b, j] - prx_top) / 10.0
                if has_buf[b]:
                    need = (buf[b, j] / scale) * np.float64(inv_row[j])
                    uf[b, j, 4] = math.log1p(need)
                    uf[b, j, 5] = min(need, n_avail) / max(n_avail, 1)
                if hist:
                    uf[b, j, 6] = math.log1p(avg[j])
                    uf[b, j, 7] = math.log1p(row_max[j] / avg[j])
                else:
                    uf[b, j, 6] = math.log1p(row_mean)
                    uf[b, j, 7] = math.log1p(row_max[j] * (np.float32(1.0) / max(row_mean, _TINY)))
                uf[b, j, 13] = se_user[b, j] * (1.0 / SE_SCALE)
            x = cum[b, j]
            if hist:
                uf[b, j, 8] = 1.0 - s * x / q if q > 0 else 0.0
                uf[b, j, 9] = x / max(mean_x, 1.0) - 1.0
                age = 1000 if last[b, j] < 0 else min(max(slot[b] - last[b, j], 0), 1000)
                uf[b, j, 10] = math.log1p(age) * (1.0 / LOG_STALE)
                uf[b, j, 11] = known[b, j]
                uf[b, j, 12] = (x / present[b, j]) / mean_rate - 1.0 if mean_rate > 0 else 0.0
            else:
                uf[b, j, 10] = 1.0
            user_mask[b, j] = elig[b, j]

        # ---- pair channel 5: the PF priority utility / average, relative to the slot's largest
        pf_max = 0.0
        for i in range(r):
            for j in range(n):
                pf_max = max(pf_max, np.float64(pc[b, 0, i, j]) * inv_avg[j])
        pf_scale = 1.0 / pf_max if pf_max > 0.0 else 0.0
        for i in range(r):
            for j in range(n):
                pc[b, 5, i, j] = np.float64(pc[b, 0, i, j]) * inv_avg[j] * pf_scale

        # ---- resources
        bw_ref = -np.inf
        for i in range(r):
            if avail[b, i] or n_avail == 0:
                bw_ref = max(bw_ref, bw[b, i])
        for i in range(r):
            res_mask[b, i] = avail[b, i]
            values[i] = bw[b, i] * (1.0 / bw_ref)
            if avail[b, i]:
                rf[b, i, 0] = 1.0
                rf[b, i, 1] = values[i]
                rf[b, i, 2] = col_max[i]
                rf[b, i, 3] = col_sum[i] * inv_elig

        # ---- global statistics
        g[b, 0] = spectrum[b]
        g[b, 1] = not spectrum[b]
        g[b, 2] = math.log1p(n_elig) / LOG_MAX_COUNT
        g[b, 3] = math.log1p(n_avail) / LOG_MAX_COUNT
        g[b, 4] = n_elig / n
        g[b, 5] = n_avail / r
        g[b, 6] = math.log((1.0 + n_elig) / (1.0 + n_avail))
        g[b, 7] = min(cap[b], n_avail) / max(n_avail, 1)
        g[b, 8] = cap[b] == 1
        if n_elig > 0 and n_avail > 0:  # over the admissible pairs (the others are 0)
            count = n_elig * n_avail
            mean = total / count
            g[b, 9] = adm_min
            g[b, 10] = mean
            g[b, 11] = math.sqrt(max(total_sq / count - mean * mean, 0.0))
        _, g[b, 12], g[b, 13], g[b, 14] = _stats(values[:r], avail[b, :r], n_avail)
        if has_buf[b]:
            g[b, 15] = 1.0
            for j in range(n):
                values[j] = math.log1p(buf[b, j] / scale)
            g[b, 16], g[b, 17], g[b, 18], g[b, 19] = _stats(values[:n], elig[b, :n], n_elig)
        if has_prx[b]:
            top, _, mean_prx, std_prx = _stats(p_rx[b, :n], np.ones(n, np.bool_), n)
            snr_shift = -174.0 + 10.0 * math.log10(bw_ref)  # mean SNR on the widest channel, dB
            g[b, 20] = std_prx / 10.0
            g[b, 21] = (top - snr_shift) / 100.0
            g[b, 22] = (mean_prx - snr_shift) / 100.0
        g[b, 23] = s * s / (n * q) if hist and q > 0 else 1.0
        g[b, 24] = math.log1p(mean_x) / 10.0


@kernel
def extremes(
    g: np.ndarray,  # float32 [B, G]
    uf: np.ndarray,  # float32 [B, N, Fu]
    rf: np.ndarray,  # float32 [B, R, Fr]
    pc: np.ndarray,  # float32 [B, Fp, R, N]
    user_mask: np.ndarray,  # float32 [B, N]
    num_ue: np.ndarray,  # int64 [B]
    num_res: np.ndarray,  # int64 [B]
) -> tuple[np.ndarray, np.ndarray]:
    """Per slot, the min and max of every feature, concatenated [B, G + Fu + Fr + Fp] each: users
    over the slot's eligible ones, resources and pairs over all of the slot's own (never its
    padding); +inf / -inf for a block with no rows; a NaN value is skipped; a zero extreme may be
    +0.0 or -0.0 (they compare equal)."""
    size, num_g, num_u, num_r, num_p = g.shape[0], g.shape[1], uf.shape[2], rf.shape[2], pc.shape[1]
    width = num_g + num_u + num_r + num_p
    low = np.full((size, width), np.inf, np.float32)
    high = np.full((size, width), -np.inf, np.float32)
    for b in range(size):
        n, r = num_ue[b], num_res[b]
        for k in range(num_g):
            low[b, k] = high[b, k] = g[b, k]
        for j in range(n):
            if user_mask[b, j] > 0:
                for k in range(num_u):
                    low[b, num_g + k] = min(low[b, num_g + k], uf[b, j, k])
                    high[b, num_g + k] = max(high[b, num_g + k], uf[b, j, k])
        base = num_g + num_u
        for i in range(r):
            for k in range(num_r):
                low[b, base + k] = min(low[b, base + k], rf[b, i, k])
                high[b, base + k] = max(high[b, base + k], rf[b, i, k])
        base += num_r
        body = n - n % 4
        for k in range(num_p):
            # four independent running extremes (no chain of dependent min / max through every
            # element), then merged: min and max do not depend on the order they see the values in
            lo0 = lo1 = lo2 = lo3 = low[b, base + k]
            hi0 = hi1 = hi2 = hi3 = high[b, base + k]
            for i in range(r):
                row = pc[b, k, i]
                for j in range(0, body, 4):
                    lo0, hi0 = min(lo0, row[j]), max(hi0, row[j])
                    lo1, hi1 = min(lo1, row[j + 1]), max(hi1, row[j + 1])
                    lo2, hi2 = min(lo2, row[j + 2]), max(hi2, row[j + 2])
                    lo3, hi3 = min(lo3, row[j + 3]), max(hi3, row[j + 3])
                for j in range(body, n):
                    lo0, hi0 = min(lo0, row[j]), max(hi0, row[j])
            low[b, base + k] = min(min(lo0, lo1), min(lo2, lo3))
            high[b, base + k] = max(max(hi0, hi1), max(hi2, hi3))
    return low, high
