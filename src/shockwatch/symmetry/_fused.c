/* The monitor's per-step kernel: per-unit sums of x * y for several pairs (x, y) in one pass.

   Each tensor is viewed as a contiguous (O, I, K) block (O = size of dim 0, I = size of dim 1, K =
   the rest; a 1-D tensor is (1, n, 1)). For every pair p:
       out[p * stride + row[t] + o] += sum_{i,k} x_p[o,i,k] y_p[o,i,k]   (row[t] >= 0: dim 0's units)
       out[p * stride + col[t] + i] += sum_{o,k} x_p[o,i,k] y_p[o,i,k]   (col[t] >= 0: dim 1's units)
   Products and sums are taken in double (a float32 product is exact in double). The pairs of one
   row of O are taken one after the other while that row (I * K elements) is in L1, so a y shared
   by the pairs (the gradient) is read from memory once:
   the whole call reads each distinct tensor once, where an eager framework writes and re-reads a
   product per pair.

   sw_sumsq: sum over tensors of |a - b|^2 (b NULL: |a|^2), accumulated in double.

   Compiled with -fopenmp-simd: the "omp simd reduction" pragmas let the compiler vectorise the
   double accumulations (a reassociation it may not do on its own) without an OpenMP runtime. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define UNITS(TYPE, NAME)                                                                         \
    static int NAME(int64_t n_pairs, int64_t n_tensors, const int64_t *shape, const int64_t *row,   \
                    const int64_t *col, const void *const *xs, const void *const *ys, double *out,  \
                    int64_t stride, void *const *copy_to, const void *const *moved_from,           \
                    double *moved, int64_t t_begin, int64_t t_end) {                              \
        double moved_sq = 0.0;                                                                    \
        for (int64_t t = t_begin; t < t_end; ++t) {                                               \
            const int64_t O = shape[3 * t], I = shape[3 * t + 1], K = shape[3 * t + 2];          \
            const int64_t n = I * K;                                                              \
            /* dim-1 sums: per (i, k) over o first, in a contiguous row of n doubles that every  \
               o adds to (one flat, vectorised loop); folded over k into the units at the end */  \
            /* (K == 1: the units themselves, one per i, are that row) */                          \
            const int scratch = col[t] >= 0 && K > 1;                                             \
            double *per_ik = 0;                                                                   \
            if (scratch && !(per_ik = calloc((size_t)(n_pairs * n), sizeof(double)))) return 1;   \
            /* three pairs sharing y (the monitor's pre-step pass: theta, g, b against g), K = 1:   \
               one loop over the row reads y once and updates the three pairs' units together */    \
            const int fused3 = n_pairs == 3 && K == 1 && !moved_from && ys[t] == ys[n_tensors + t] \
                               && ys[t] == ys[2 * n_tensors + t];                                 \
            const int moved1 = n_pairs == 1 && K == 1 && moved_from && xs[t] == ys[t];          \
            for (int64_t o = 0; o < O; ++o) {                                                     \
                if (fused3) {                                                                     \
                    const TYPE *y = (const TYPE *)ys[t] + o * n;                                  \
                    const TYPE *x0 = (const TYPE *)xs[t] + o * n;                                 \
                    const TYPE *x1 = (const TYPE *)xs[n_tensors + t] + o * n;                     \
                    const TYPE *x2 = (const TYPE *)xs[2 * n_tensors + t] + o * n;                 \
                    double t0 = 0.0, t1 = 0.0, t2 = 0.0;                                          \
                    if (col[t] >= 0) {                                                            \
                        double *a0 = out + col[t], *a1 = a0 + stride, *a2 = a1 + stride;          \
                        _Pragma("omp simd reduction(+ : t0, t1, t2)")                             \
                        for (int64_t j = 0; j < n; ++j) {                                         \
                            const double v = (double)y[j];                                        \
                            const double s0 = (double)x0[j] * v, s1 = (double)x1[j] * v,         \
                                         s2 = (double)x2[j] * v;                                  \
                            t0 += s0; t1 += s1; t2 += s2;                                         \
                            a0[j] += s0; a1[j] += s1; a2[j] += s2;                                \
                        }                                                                         \
                    } else {                                                                      \
                        _Pragma("omp simd reduction(+ : t0, t1, t2)")                             \
                        for (int64_t j = 0; j < n; ++j) {                                         \
                            const double v = (double)y[j];                                        \
                            t0 += (double)x0[j] * v; t1 += (double)x1[j] * v; t2 += (double)x2[j] * v; \
                        }                                                                         \
                    }                                                                             \
                    if (row[t] >= 0) {                                                            \
                        out[row[t] + o] += t0;                                                    \
                        out[stride + row[t] + o] += t1;                                           \
                        out[2 * stride + row[t] + o] += t2;                                       \
                    }                                                                             \
                    if (copy_to && (const TYPE *)copy_to[t] + o * n != x0)                        \
                        memcpy((TYPE *)copy_to[t] + o * n, x0, (size_t)n * sizeof(TYPE));         \
                    continue;                                                                     \
                }                                                                                 \
                if (moved1) { /* the post-step pass: (theta, theta) and |theta - theta_t| together */ \
                    const TYPE *x = (const TYPE *)xs[t] + o * n;                                  \
                    const TYPE *m = (const TYPE *)moved_from[t] + o * n;                          \
                    double total = 0.0, d2 = 0.0;                                                 \
                    if (col[t] >= 0) {                                                            \
                        double *acc = out + col[t];                                               \
                        _Pragma("omp simd reduction(+ : total, d2)")                              \
                        for (int64_t j = 0; j < n; ++j) {                                         \
                            const double v = (double)x[j], d = v - (double)m[j];                  \
                            total += v * v;                                                       \
                            acc[j] += v * v;                                                      \
                            d2 += d * d;                                                          \
                        }                                                                         \
                    } else {                                                                      \
                        _Pragma("omp simd reduction(+ : total, d2)")                              \
                        for (int64_t j = 0; j < n; ++j) {                                         \
                            const double v = (double)x[j], d = v - (double)m[j];                  \
                            total += v * v;                                                       \
                            d2 += d * d;                                                          \
                        }                                                                         \
                    }                                                                             \
                    if (row[t] >= 0) out[row[t] + o] += total;                                    \
                    moved_sq += d2;                                                               \
                    if (copy_to && (const TYPE *)copy_to[t] + o * n != x)                         \
                        memcpy((TYPE *)copy_to[t] + o * n, x, (size_t)n * sizeof(TYPE));          \
                    continue;                                                                     \
                }                                                                                 \
                for (int64_t p = 0; p < n_pairs; ++p) {                                           \
                    const TYPE *x = (const TYPE *)xs[p * n_tensors + t] + o * n;                  \
                    const TYPE *y = (const TYPE *)ys[p * n_tensors + t] + o * n;                  \
                    double total = 0.0;                                                           \
                    if (col[t] >= 0) {                                                            \
                        double *acc = scratch ? per_ik + p * n : out + p * stride + col[t];      \
                        _Pragma("omp simd reduction(+ : total)")                                  \
                        for (int64_t j = 0; j < n; ++j) {                                         \
                            const double s = (double)x[j] * (double)y[j];                         \
                            total += s;                                                           \
                            acc[j] += s;                                                          \
                        }                                                                         \
                    } else {                                                                      \
                        _Pragma("omp simd reduction(+ : total)")                                  \
                        for (int64_t j = 0; j < n; ++j) total += (double)x[j] * (double)y[j];     \
                    }                                                                             \
                    if (row[t] >= 0) out[p * stride + row[t] + o] += total;                       \
                    if (p == 0 && moved_from) { /* |x_0 - m|^2 while the row is in L1 */          \
                        const TYPE *m = (const TYPE *)moved_from[t] + o * n;                      \
                        double d2 = 0.0;                                                          \
                        _Pragma("omp simd reduction(+ : d2)")                                     \
                        for (int64_t j = 0; j < n; ++j) {                                         \
                            const double d = (double)x[j] - (double)m[j];                         \
                            d2 += d * d;                                                          \
                        }                                                                         \
                        moved_sq += d2;                                                           \
                    }                                                                             \
                    if (p == 0 && copy_to && (const TYPE *)copy_to[t] + o * n != x)               \
                        memcpy((TYPE *)copy_to[t] + o * n, x, (size_t)n * sizeof(TYPE));          \
                }                                                                                 \
            }                                                                                     \
            if (per_ik) {                                                                         \
                for (int64_t p = 0; p < n_pairs; ++p) {                                           \
                    double *units = out + p * stride + col[t];                                    \
                    const double *acc = per_ik + p * n;                                           \
                    for (int64_t i = 0; i < I; ++i) {                                             \
                        double s = 0.0;                                                           \
                        for (int64_t k = 0; k < K; ++k) s += acc[i * K + k];                      \
                        units[i] += s;                                                            \
                    }                                                                             \
                }                                                                                 \
                free(per_ik);                                                                     \
            }                                                                                     \
        }                                                                                         \
        if (moved) *moved = moved_sq;                                                             \
        return 0;                                                                                 \
    }

UNITS(float, units_f32)
UNITS(double, units_f64)

/* dtype: 0 float32, 1 float64 (every tensor of the call). out: (n_pairs, stride), zeroed by the
   caller. In the same pass over pair 0's x (each row read once, while in L1): copy_to (or NULL) gets
   a copy of every x tensor; moved_from (or NULL) gives *moved = sum |x - moved_from|^2.
   Single-threaded: splitting the tensors over two threads was slower in the training loop on a
   2-core machine (benchmarks/RESULTS.md), where torch's own threads hold the other core.
   Returns 0, or 1 where scratch memory could not be allocated. */
int sw_units(int64_t dtype, int64_t n_pairs, int64_t n_tensors, const int64_t *shape, const int64_t *row,
             const int64_t *col, const void *const *xs, const void *const *ys, double *out, int64_t stride,
             void *const *copy_to, const void *const *moved_from, double *moved) {
    return (dtype == 0 ? units_f32 : units_f64)(n_pairs, n_tensors, shape, row, col, xs, ys, out, stride, copy_to,
                                                moved_from, moved, 0, n_tensors);
}

#define SUMSQ(TYPE, NAME)                                                                         \
    static double NAME(int64_t n, const int64_t *numel, const void *const *as, const void *const *bs) { \
        double total = 0.0;                                                                       \
        for (int64_t t = 0; t < n; ++t) {                                                         \
            const TYPE *a = (const TYPE *)as[t];                                                  \
            const int64_t m = numel[t];                                                           \
            if (bs == 0) {                                                                        \
                _Pragma("omp simd reduction(+ : total)")                                          \
                for (int64_t j = 0; j < m; ++j) total += (double)a[j] * (double)a[j];             \
            } else {                                                                              \
                const TYPE *b = (const TYPE *)bs[t];                                              \
                _Pragma("omp simd reduction(+ : total)")                                          \
                for (int64_t j = 0; j < m; ++j) {                                                 \
                    const double d = (double)a[j] - (double)b[j];                                 \
                    total += d * d;                                                               \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        return total;                                                                             \
    }

SUMSQ(float, sumsq_f32)
SUMSQ(double, sumsq_f64)

double sw_sumsq(int64_t dtype, int64_t n, const int64_t *numel, const void *const *as, const void *const *bs) {
    return dtype == 0 ? sumsq_f32(n, numel, as, bs) : sumsq_f64(n, numel, as, bs);
}

/* Unit sums -> per-group sums: out[p] = (signed[groups], unsigned[groups], whole), zeroed by the caller.
   signed[row[e]] += sign[e] units[p, position[e]], unsigned[row[e]] += units[p, position[e]] over the
   plan's entries e; whole = sum of units[p, cover[c]] (each parameter's inner product once). */
void sw_scatter(int64_t n_pairs, int64_t n_units, const double *units, int64_t n_entries, const int64_t *position,
                const int64_t *row, const double *sign, int64_t n_cover, const int64_t *cover, int64_t groups,
                double *out) {
    for (int64_t p = 0; p < n_pairs; ++p) {
        const double *u = units + p * n_units;
        double *signed_sums = out + p * (2 * groups + 1), *unsigned_sums = signed_sums + groups;
        for (int64_t e = 0; e < n_entries; ++e) {
            const double v = u[position[e]];
            signed_sums[row[e]] += sign[e] * v;
            unsigned_sums[row[e]] += v;
        }
        double whole = 0.0;
        for (int64_t c = 0; c < n_cover; ++c) whole += u[cover[c]];
        signed_sums[2 * groups] = whole;
    }
}

/* The conservation tracker's exact discrete law of torch.optim.SGD with momentum, one step for n
   groups, and Appendix B's oscillator advanced beside it (mechanics/tracker.py, _momentum_step and
   _advance_oscillator: the same operations in the same order, so the two agree to round-off). Per
   group: eta, lam, mu, tau, nest (the settings of its param group); state q (charge), p = <theta_A,
   b_A>, b = |b_A|^2, osc = (Q, dQ/dt) of the oscillator with its propagator E (2x2, row-major) and
   drive r. quadratic = 0: the translation block (linear, no inputs: g_sq, old_b_g and b unused);
   1: scale and rescale, inputs g_sq = |g_A|^2 and old_b_g = <b_A, g_A> (the buffer before the step;
   unused at the first step, where b' = d). One call a step in place of ~40 NumPy operations, each of
   which costs microseconds when run right after a training step. */
void sw_momentum_law(int64_t n, int64_t quadratic, int64_t first, int64_t any_nesterov, const double *eta,
                     const double *lam, const double *mu, const double *tau, const double *nest,
                     const double *g_sq, const double *old_b_g, double *q, double *p, double *b,
                     const double *E, const double *r, double *osc) {
    for (int64_t k = 0; k < n; ++k) {
        double drive_per_mass = 0.0;
        if (!quadratic) {
            const double d_sum = lam[k] * q[k];
            const double b_sum = first ? d_sum : mu[k] * p[k] + (1 - tau[k]) * d_sum;
            const double u_sum = nest[k] > 0 ? d_sum + mu[k] * b_sum : b_sum;
            q[k] = q[k] - eta[k] * u_sum;
            p[k] = b_sum;
        } else {
            const double d_sq = g_sq[k] + lam[k] * lam[k] * q[k];
            double theta_b, b_sq, d_b;
            if (first) {
                theta_b = lam[k] * q[k];
                b_sq = d_sq;
                d_b = d_sq;
            } else {
                const double d_old_b = old_b_g[k] + lam[k] * p[k];
                theta_b = mu[k] * p[k] + (1 - tau[k]) * lam[k] * q[k];
                b_sq = mu[k] * mu[k] * b[k] + 2 * mu[k] * (1 - tau[k]) * d_old_b + (1 - tau[k]) * (1 - tau[k]) * d_sq;
                d_b = mu[k] * d_old_b + (1 - tau[k]) * d_sq;
            }
            double theta_u = theta_b, u_sq = b_sq, u_b = b_sq;
            if (any_nesterov && nest[k] > 0) {
                theta_u = lam[k] * q[k] + mu[k] * theta_b;
                u_sq = d_sq + 2 * mu[k] * d_b + mu[k] * mu[k] * b_sq;
                u_b = d_b + mu[k] * b_sq;
            }
            q[k] = q[k] - 2 * eta[k] * theta_u + eta[k] * eta[k] * u_sq;
            p[k] = theta_b - eta[k] * u_b;
            b[k] = b_sq;
            drive_per_mass = 2 * u_sq / ((1 - tau[k]) * (1 - tau[k]));
        }
        const double *e = E + 4 * k;
        const double x0 = osc[2 * k], x1 = osc[2 * k + 1];
        osc[2 * k] = e[0] * x0 + e[1] * x1 + drive_per_mass * r[2 * k];
        osc[2 * k + 1] = e[2] * x0 + e[3] * x1 + drive_per_mass * r[2 * k + 1];
    }
}

/* max_k |a_k - b_k| / max(denominator_k * scale, floor) over n groups (b NULL: |a_k|), with NumPy's
   semantics: a NaN anywhere (in a, b, the denominator or the scale) makes the result NaN (np.maximum
   and max propagate it; fmax would not). The monitor's per-kind maxima (gradient breaking, charge
   drift, law error) in one call each in place of five NumPy operations. n = 0: -infinity. */
double sw_max_ratio(int64_t n, const double *a, const double *b, const double *denominator, double scale,
                    double floor_value) {
    double best = -INFINITY;
    int nan_seen = 0;
    for (int64_t k = 0; k < n; ++k) {
        double den = denominator[k] * scale;
        if (den != den) {
            nan_seen = 1;
            continue;
        }
        if (den < floor_value) den = floor_value;
        const double r = fabs(b ? a[k] - b[k] : a[k]) / den;
        if (r != r) nan_seen = 1;
        else if (r > best) best = r;
    }
    return nan_seen ? NAN : best;
}

/* ------------------------------------------------------------------------------------------------
   The monitor's per-step engine: everything the every-step observables need, in one call before
   the optimizer step and one after it, on a plan (sw_engine) the monitor fills once and updates
   only where an address changed (the gradients every step). It composes the kernels above: the
   point is not new arithmetic but fewer Python calls, each of which costs microseconds right
   after a training step (benchmarks/RESULTS.md). monitor/_engine.py builds the plan; the monitor's
   Python path (fused_sums + ConservationTracker) is the reference it is tested against. */

typedef struct {
    int64_t dtype;                 /* 0 float32, 1 float64: every tensor */
    /* the unit plan of the parameters scale/rescale groups read (_NativeLayout) */
    int64_t n_grouped, n_units, groups;
    const int64_t *shape, *row, *col;
    int64_t n_entries;
    const int64_t *position, *entry_row;
    const double *entry_sign;
    int64_t n_cover;
    const int64_t *cover;
    void **theta, **grad, **buffer, **copy; /* n_grouped each; buffer unread when with_buffer = 0 */
    /* the parameters no group reads: norms and the copy only */
    int64_t n_rest;
    const int64_t *rest_numel;
    void **rest_theta, **rest_grad, **rest_copy;
    /* translation charges, host_charges' gathers: tensor viewed as (A, D, B) around the gathered
       dim; index[start .. start + count) (index NULL: whole, d = j), each into row[start + j] */
    int64_t n_gathers;
    void **gather_tensor;
    const int64_t *gather_shape, *gather_start, *gather_count, *gather_index, *gather_row;
    const double *gather_sign;
    /* groups per kind: translation, scale, rescale (rows' columns in that order) */
    int64_t n_translation, n_scale, n_rescale;
    /* law: 0 none (drift only), 1 SGD with momentum (sw_momentum_law), 2 SGD (engine_sgd_law) */
    int64_t law, nesterov;
    /* per block (translation, quadratic); law 1: eta, lam, mu, tau, nest, q, p, b, E, r, osc;
       law 2: eta, lam, q (discrete), integral, decay time, initial charge */
    double *law_arrays[2][11];
    /* scratch and state the Python side owns */
    double *pre_units, *pre_scattered;   /* (3, n_units), (3, 2 groups + 1) */
    double *post_units, *post_scattered; /* (1, n_units), (1, 2 groups + 1) */
    double *root_size;                   /* sqrt |xi_k|^2 at the last record, scale + rescale groups */
    const double *start_charge, *start_size; /* at construction, every group (start_size floored) */
    double *rows;                        /* (n_rows, every group): charge, size[, discrete[, continuous]] */
    int64_t n_rows;
} sw_engine;

static double engine_sumsq(int64_t dtype, int64_t n, const int64_t *numel, void *const *as, void *const *bs) {
    return n == 0 ? 0.0 : sw_sumsq(dtype, n, numel, (const void *const *)as, (const void *const *)bs);
}

static void engine_copy(int64_t dtype, int64_t n, const int64_t *numel, void *const *from, void *const *to) {
    const size_t item = dtype == 0 ? sizeof(float) : sizeof(double);
    for (int64_t t = 0; t < n; ++t)
        if (to[t] != from[t]) memcpy(to[t], from[t], (size_t)numel[t] * item);
}

/* host_charges for translation: charge[row] += sign sum x, size[row] += sign sum |x| (float64). */
#define GATHER(TYPE, NAME)                                                                        \
    static void NAME(const sw_engine *e, double *charge, double *size) {                          \
        for (int64_t g = 0; g < e->n_gathers; ++g) {                                              \
            const TYPE *x = (const TYPE *)e->gather_tensor[g];                                    \
            const int64_t A = e->gather_shape[3 * g], D = e->gather_shape[3 * g + 1],            \
                          B = e->gather_shape[3 * g + 2];                                         \
            const int64_t start = e->gather_start[g];                                             \
            for (int64_t j = 0; j < e->gather_count[g]; ++j) {                                    \
                const int64_t d = e->gather_index ? e->gather_index[start + j] : j;              \
                double s = 0.0, a = 0.0;                                                          \
                for (int64_t i = 0; i < A; ++i) {                                                 \
                    const TYPE *block = x + (i * D + d) * B;                                      \
                    for (int64_t k = 0; k < B; ++k) {                                             \
                        s += (double)block[k];                                                    \
                        a += fabs((double)block[k]);                                              \
                    }                                                                             \
                }                                                                                 \
                charge[e->gather_row[start + j]] += e->gather_sign[g] * s;                        \
                size[e->gather_row[start + j]] += e->gather_sign[g] * a;                          \
            }                                                                                     \
        }                                                                                         \
    }

GATHER(float, gather_f32)
GATHER(double, gather_f64)

/* ConservationTracker.update's law for SGD without momentum, one step (the same operations in the
   same order): translation q' = (1 - eta lam) q; scale and rescale q' = (1 - eta lam)^2 q + eta^2 G
   and the continuous law's integral I' = e^{-2 lam eta} (I + eta^2 G); per block the decay time
   T' = T + lam eta. */
static void engine_sgd_law(int64_t n, int quadratic, const double *g_sq, double *const *a) {
    const double *eta = a[0], *lam = a[1];
    double *q = a[2], *integral = a[3], *decay_time = a[4];
    for (int64_t k = 0; k < n; ++k) {
        const double shrink = 1 - eta[k] * lam[k];
        if (!quadratic) {
            q[k] = shrink * q[k];
        } else {
            q[k] = shrink * shrink * q[k] + eta[k] * eta[k] * g_sq[k];
            integral[k] = exp(-2 * lam[k] * eta[k]) * (integral[k] + eta[k] * eta[k] * g_sq[k]);
        }
        decay_time[k] = decay_time[k] + lam[k] * eta[k];
    }
}

/* Before the optimizer step, at (theta_t, g_t, b_t): pairs (theta, g), (g, g)[, (b, g)] over the
   grouped tensors, theta copied as it is read; |g| over the rest and theta copied there too.
   out = (|g|, gradient breaking of scale, of rescale): max_k |<theta_A, g_A>| / (|xi_k| |g|),
   NaN for a kind without groups. Returns 0, or 1 where scratch memory could not be allocated. */
int sw_engine_pre(const sw_engine *e, int64_t with_buffer, double *out) {
    const int64_t pairs = with_buffer ? 3 : 2, width = 2 * e->groups + 1;
    void *xs[3 * e->n_grouped + 1], *ys[3 * e->n_grouped + 1];
    for (int64_t t = 0; t < e->n_grouped; ++t) {
        xs[t] = e->theta[t];
        xs[e->n_grouped + t] = e->grad[t];
        xs[2 * e->n_grouped + t] = e->buffer[t];
        ys[t] = ys[e->n_grouped + t] = ys[2 * e->n_grouped + t] = e->grad[t];
    }
    memset(e->pre_units, 0, sizeof(double) * (size_t)(pairs * e->n_units));
    memset(e->pre_scattered, 0, sizeof(double) * (size_t)(3 * width));
    if (sw_units(e->dtype, pairs, e->n_grouped, e->shape, e->row, e->col, (const void *const *)xs,
                 (const void *const *)ys, e->pre_units, e->n_units, e->copy, 0, 0))
        return 1;
    sw_scatter(pairs, e->n_units, e->pre_units, e->n_entries, e->position, e->entry_row, e->entry_sign,
               e->n_cover, e->cover, e->groups, e->pre_scattered);
    const double rest_sq = engine_sumsq(e->dtype, e->n_rest, e->rest_numel, e->rest_grad, 0);
    engine_copy(e->dtype, e->n_rest, e->rest_numel, e->rest_theta, e->rest_copy);
    double whole = e->pre_scattered[width + 2 * e->groups] + rest_sq; /* the (g, g) pair's + the rest */
    /* round-off below zero clamps to 0; a NaN stays NaN (issue 17: "whole > 0 ? whole : 0" logged a
       NaN gradient as |g| = 0 and the monitor never saw it) */
    const double grad_norm = sqrt(whole < 0.0 ? 0.0 : whole);
    out[0] = grad_norm;
    out[1] = e->n_scale ? sw_max_ratio(e->n_scale, e->pre_scattered, 0, e->root_size, grad_norm, 1e-300) : NAN;
    out[2] = e->n_rescale ? sw_max_ratio(e->n_rescale, e->pre_scattered + e->n_scale, 0, e->root_size + e->n_scale,
                                         grad_norm, 1e-300) : NAN;
    return 0;
}

/* After the step, at theta_{t+1}: the (theta, theta) pair (signed and unsigned charges) with
   |theta_{t+1} - theta_t| against the copy, the rest's norms, the translation charges; the law
   advanced one step (first: the optimizer's first step, b' = d); the record's rows; out =
   (|theta|, |dtheta|, |dtheta|/|theta|, drift per kind (3), law error per kind (3); NaN for a kind
   without groups or a run without a law). */
int sw_engine_post(const sw_engine *e, int64_t first, double *out) {
    const int64_t width = 2 * e->groups + 1, total = e->n_translation + e->groups;
    double moved_sq = 0.0;
    memset(e->post_units, 0, sizeof(double) * (size_t)e->n_units);
    memset(e->post_scattered, 0, sizeof(double) * (size_t)width);
    if (sw_units(e->dtype, 1, e->n_grouped, e->shape, e->row, e->col, (const void *const *)e->theta,
                 (const void *const *)e->theta, e->post_units, e->n_units, 0, (const void *const *)e->copy, &moved_sq))
        return 1;
    sw_scatter(1, e->n_units, e->post_units, e->n_entries, e->position, e->entry_row, e->entry_sign, e->n_cover,
               e->cover, e->groups, e->post_scattered);
    const double rest_sq = engine_sumsq(e->dtype, e->n_rest, e->rest_numel, e->rest_theta, 0);
    const double rest_moved = engine_sumsq(e->dtype, e->n_rest, e->rest_numel, e->rest_theta, e->rest_copy);
    double whole = e->post_scattered[2 * e->groups] + rest_sq;
    const double param_norm = sqrt(whole < 0.0 ? 0.0 : whole); /* NaN stays NaN, as for |g| */
    /* sqrt(moved)^2 + rest: as the Python path, which takes the two norms and squares them back */
    const double moved = sqrt(moved_sq), rest_norm = sqrt(rest_moved);
    const double update_norm = sqrt(moved * moved + rest_norm * rest_norm);
    out[0] = param_norm;
    out[1] = update_norm;
    out[2] = update_norm / (param_norm > 1e-300 ? param_norm : 1e-300);
    /* the law, as ConservationTracker._momentum_step_native: translation block, then quadratic */
    if (e->law == 1) {
        const double *g_sq = e->pre_scattered + width, *old_b_g = e->pre_scattered + 2 * width;
        for (int block = 0; block < 2; ++block) {
            const int64_t n = block == 0 ? e->n_translation : e->groups;
            double *const *a = e->law_arrays[block];
            if (n == 0) continue;
            sw_momentum_law(n, block, first, e->nesterov, a[0], a[1], a[2], a[3], a[4],
                            block ? g_sq : a[5], block ? (first ? g_sq : old_b_g) : a[5], a[5], a[6], a[7],
                            a[8], a[9], a[10]);
        }
    }
    if (e->law == 2) {
        const double *g_sq = e->pre_scattered + width;
        if (e->n_translation) engine_sgd_law(e->n_translation, 0, g_sq, e->law_arrays[0]);
        if (e->groups) engine_sgd_law(e->groups, 1, g_sq, e->law_arrays[1]);
    }
    /* rows: charge, size[, discrete[, continuous: the oscillator's Q (law 1), e^{-T} Q_0 for
       translation and e^{-2T} Q_0 + I for scale and rescale (law 2)]]; translation columns first */
    double *charge = e->rows, *size = e->rows + total;
    memset(charge, 0, sizeof(double) * (size_t)(2 * total));
    (e->dtype == 0 ? gather_f32 : gather_f64)(e, charge, size);
    memcpy(charge + e->n_translation, e->post_scattered, sizeof(double) * (size_t)e->groups);
    memcpy(size + e->n_translation, e->post_scattered + e->groups, sizeof(double) * (size_t)e->groups);
    const int q_slot = e->law == 1 ? 5 : 2;
    if (e->n_rows > 2) {
        double *discrete = e->rows + 2 * total;
        memcpy(discrete, e->law_arrays[0][q_slot], sizeof(double) * (size_t)e->n_translation);
        memcpy(discrete + e->n_translation, e->law_arrays[1][q_slot], sizeof(double) * (size_t)e->groups);
    }
    if (e->n_rows > 3 && e->law == 1) {
        double *continuous = e->rows + 3 * total;
        for (int64_t k = 0; k < e->n_translation; ++k) continuous[k] = e->law_arrays[0][10][2 * k];
        for (int64_t k = 0; k < e->groups; ++k) continuous[e->n_translation + k] = e->law_arrays[1][10][2 * k];
    }
    if (e->n_rows > 3 && e->law == 2) {
        double *continuous = e->rows + 3 * total;
        double *const *t = e->law_arrays[0], *const *a = e->law_arrays[1];
        for (int64_t k = 0; k < e->n_translation; ++k) continuous[k] = exp(-t[4][k]) * t[5][k];
        for (int64_t k = 0; k < e->groups; ++k)
            continuous[e->n_translation + k] = exp(-2 * a[4][k]) * a[5][k] + a[3][k];
    }
    for (int64_t k = 0; k < e->groups; ++k) e->root_size[k] = sqrt(size[e->n_translation + k]);
    const int64_t counts[3] = {e->n_translation, e->n_scale, e->n_rescale};
    int64_t begin = 0;
    for (int kind = 0; kind < 3; ++kind) {
        const int64_t n = counts[kind];
        out[3 + kind] = n ? sw_max_ratio(n, charge + begin, e->start_charge + begin, e->start_size + begin, 1.0, 1e-300)
                          : NAN;
        out[6 + kind] = n && e->n_rows > 2 ? sw_max_ratio(n, charge + begin, e->rows + 2 * total + begin,
                                                          size + begin, 1.0, 1e-300) : NAN;
        begin += n;
    }
    return 0;
}
