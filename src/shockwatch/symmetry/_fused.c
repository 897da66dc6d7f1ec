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
            /* three pairs sharing y (the monitor's pre-step pass: theta, g, b against g): one loop \
               over the row reads y once and updates the three pairs' units (or, K > 1, their      \
               per-(i, k) rows) together */                                                       \
            const int fused3 = n_pairs == 3 && !moved_from && ys[t] == ys[n_tensors + t]         \
                               && ys[t] == ys[2 * n_tensors + t];                                 \
            const int moved1 = n_pairs == 1 && moved_from && xs[t] == ys[t];                    \
            for (int64_t o = 0; o < O; ++o) {                                                     \
                if (fused3) {                                                                     \
                    const TYPE *y = (const TYPE *)ys[t] + o * n;                                  \
                    const TYPE *x0 = (const TYPE *)xs[t] + o * n;                                 \
                    const TYPE *x1 = (const TYPE *)xs[n_tensors + t] + o * n;                     \
                    const TYPE *x2 = (const TYPE *)xs[2 * n_tensors + t] + o * n;                 \
                    double t0 = 0.0, t1 = 0.0, t2 = 0.0;                                          \
                    if (col[t] >= 0) {                                                            \
                        double *a0 = scratch ? per_ik : out + col[t];                             \
                        double *a1 = a0 + (scratch ? n : stride), *a2 = a1 + (scratch ? n : stride); \
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
                        double *acc = scratch ? per_ik : out + col[t];                            \
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
   threads > 1 (and built with OpenMP): the tensors are shared among that many OpenMP threads, one
   tensor at a time (each tensor's units are its own entries of out: no two threads write one). In
   a process where torch runs on GNU OpenMP the kernel's libgomp.so.1 is torch's, already loaded, so
   the team is torch's own intra-op threads, still spinning after the backward pass (a separate
   pool of threads was slower: benchmarks/RESULTS.md). The result is the same on any number of
   threads, to the bit. Returns 0, or 1 where scratch memory could not be allocated. */
int sw_units(int64_t dtype, int64_t n_pairs, int64_t n_tensors, const int64_t *shape, const int64_t *row,
             const int64_t *col, const void *const *xs, const void *const *ys, double *out, int64_t stride,
             void *const *copy_to, const void *const *moved_from, double *moved, int64_t threads) {
    int (*units)(int64_t, int64_t, const int64_t *, const int64_t *, const int64_t *, const void *const *,
                 const void *const *, double *, int64_t, void *const *, const void *const *, double *, int64_t,
                 int64_t) = dtype == 0 ? units_f32 : units_f64;
    /* |x - moved_from|^2 per tensor, added in tensor order after the loop: the same bits on any
       number of threads (a reduction in the threads' order made two runs differ in the last digit) */
    double *parts = moved ? calloc((size_t)(n_tensors > 0 ? n_tensors : 1), sizeof(double)) : 0;
    if (moved && !parts) return 1;
    int failed = 0;
#pragma omp parallel for num_threads(threads > 1 ? threads : 1) schedule(dynamic, 1) reduction(| : failed) if (threads > 1 && n_tensors > 1)
    for (int64_t t = 0; t < n_tensors; ++t)
        failed |= units(n_pairs, n_tensors, shape, row, col, xs, ys, out, stride, copy_to, moved_from,
                        moved ? parts + t : 0, t, t + 1);
    if (moved) {
        double total = 0.0;
        for (int64_t t = 0; t < n_tensors; ++t) total += parts[t];
        *moved = total;
        free(parts);
    }
    return failed;
}

/* 1 where the kernel was built with OpenMP (sw_units can share its tensors among threads), else 0. */
int sw_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
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
