/* The sampler's step apart from its big products, in C (trainer/native.py builds and loads
 * it; trainer/sampler.py calls it: _Stepper for the LSTM, Generation for the draw). Torch runs
 * each layer's big product (int8 or float); the rest of a step here is what ~70 small torch
 * calls did: each costs a few microseconds of dispatch, about what its arithmetic costs for one
 * reply.
 *
 * Every array is float32 (ids: int64), C-contiguous, rows first; a NULL pointer means "not in
 * this model". Gate order is PyTorch's: i, f, g, o, with g's pre-activation doubled (so that
 * tanh(g) = 2 sigmoid(2 g) - 1 comes out of the one sigmoid). */

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) by Cephes' expf scheme: 2^k e^r, |r| <= ln2 / 2, degree-6 polynomial; within 1.7e-6
 * of e^x relative, as built (-87..88), and written so that the compiler vectorises it (no libm
 * call, no branch). */
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float k = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } two = { .i = ((int32_t)k + 127) << 23 };
    return p * two.f;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

/* 16 floats as one value (GCC's and Clang's vector extension; split into narrower
 * instructions where the CPU has no 512-bit ones), at any float's address. */
typedef float lanes __attribute__((vector_size(64), aligned(4)));
typedef float sums __attribute__((vector_size(64)));  /* the same, kept in a register */

/* out (m) += a (k) @ w (k, m) */
static inline void row_times(long k, long m, const float *restrict a, const float *restrict w,
                             float *restrict out) {
    for (long p = 0; p < k; p++) {
        const float s = a[p];
        const float *restrict wp = w + p * m;
        for (long j = 0; j < m; j++) out[j] += s * wp[j];
    }
}

/* out (m) += w (m, k) @ a (k) */
static inline void times_row(long m, long k, const float *restrict w, const float *restrict a,
                             float *restrict out) {
    for (long j = 0; j < m; j++) {
        const float *restrict wj = w + j * k;
        float s = 0.0f;
        for (long p = 0; p < k; p++) s += wj[p] * a[p];
        out[j] += s;
    }
}

/* The widest adapter (r) and habits (q) these take; the caller checks (mimic_max_rank). */
#define MAX_RANK 256

long mimic_max_rank(void) { return MAX_RANK; }

/* Rows i0 .. i0 + R - 1 of gates (G wide): + table[ids] and ctx_g where given, + u @ w_u
 * where u (R, r) is, 16 gates at a time summed in registers, each lane of w_u read once for
 * the R rows. R is 4 or 1, known where this is inlined. */
static inline void add_to_gates(const long R, long i0, long G, long r, float *restrict gates,
                                const float *restrict table, const int64_t *restrict ids,
                                const float *restrict ctx_g, const float *restrict u,
                                const float *restrict w_u) {
    float *g[4];
    const float *t1[4], *t2[4];
    for (long q = 0; q < R; q++) {
        g[q] = gates + (i0 + q) * G;
        t1[q] = table ? table + ids[i0 + q] * G : NULL;
        t2[q] = ctx_g ? ctx_g + (i0 + q) * G : NULL;
    }
    long j = 0;
    for (; j + 16 <= G; j += 16) {
        sums acc[4];
        for (long q = 0; q < R; q++) {
            acc[q] = *(const lanes *)(g[q] + j);
            if (t1[q]) acc[q] += *(const lanes *)(t1[q] + j);
            if (t2[q]) acc[q] += *(const lanes *)(t2[q] + j);
        }
        if (u)
            for (long p = 0; p < r; p++) {
                const sums w = *(const lanes *)(w_u + p * G + j);
                for (long q = 0; q < R; q++) acc[q] += u[q * r + p] * w;
            }
        for (long q = 0; q < R; q++) *(lanes *)(g[q] + j) = acc[q];
    }
    for (; j < G; j++)
        for (long q = 0; q < R; q++) {
            float s = g[q][j] + (t1[q] ? t1[q][j] : 0.0f) + (t2[q] ? t2[q][j] : 0.0f);
            if (u)
                for (long p = 0; p < r; p++) s += u[q * r + p] * w_u[p * G + j];
            g[q][j] = s;
        }
}

/* One layer for n rows, after its big product: gates (n, 4H) hold it (and the layer's bias).
 * Adds, where given: table[ids] (layer 0's input rows), ctx_g (what each row's context adds
 * to layer 0), and the adapter's u @ w_u (r, 4H), with u = (table_a[ids] + ca) * b for layer
 * 0, (a @ x) * b for the others (x (n, hin): the layer below's new output, a (r, hin)). Then
 * c, h (n, H) step in place; with `next` (n, 2 H), each row's new h and the layer above's h
 * (h_above) are written there side by side: the layer above's int8 product reads them so. */
void mimic_layer(long n, long H, long r, float *restrict gates, const float *restrict table,
                 const int64_t *restrict ids, const float *restrict ctx_g,
                 const float *restrict table_a, const float *restrict ca,
                 const float *restrict x, long hin, const float *restrict a,
                 const float *restrict b, const float *restrict w_u, float *restrict c,
                 float *restrict h, float *restrict next, const float *restrict h_above) {
    const long G = 4 * H;
    float u[4 * MAX_RANK];
    for (long i0 = 0; i0 < n; i0 += 4) {
        const long R = n - i0 < 4 ? n - i0 : 4;
        for (long q = 0; b && q < R; q++) {
            const long i = i0 + q;
            float *restrict uq = u + q * r;
            if (table_a) {
                const float *restrict t = table_a + ids[i] * r, *restrict t2 = ca + i * r;
                for (long p = 0; p < r; p++) uq[p] = t[p] + t2[p];
            } else {
                memset(uq, 0, sizeof(float) * r);
                times_row(r, hin, a, x + i * hin, uq);
            }
            for (long p = 0; p < r; p++) uq[p] *= b[i * r + p];
        }
        if (R == 4)
            add_to_gates(4, i0, G, r, gates, table, ids, ctx_g, b ? u : NULL, w_u);
        else
            for (long q = 0; q < R; q++)
                add_to_gates(1, i0 + q, G, r, gates, table, ids, ctx_g, b ? u + q * r : NULL,
                             w_u);
        for (long i = i0; i < i0 + R; i++) {
            float *restrict g = gates + i * G;
            for (long j = 0; j < G; j++) g[j] = sigmoid(g[j]);
            float *restrict ci = c + i * H, *restrict hi = h + i * H;
            const float *si = g, *sf = g + H, *sg = g + 2 * H, *so = g + 3 * H;
            for (long j = 0; j < H; j++) {
                /* c = f c + i tanh(g) = f c + 2 i sigmoid(2 g) - i; h = o tanh(c) */
                const float cj = ci[j] * sf[j] + 2.0f * si[j] * sg[j] - si[j];
                ci[j] = cj;
                hi[j] = so[j] * (2.0f * sigmoid(2.0f * cj) - 1.0f);
            }
            if (next) {
                memcpy(next + i * 2 * H, hi, sizeof(float) * H);
                memcpy(next + i * 2 * H + H, h_above + i * H, sizeof(float) * H);
            }
        }
    }
}

/* The output layer for n rows of the last layer's x (n, H): out (n, V) = bias + w (V, H) @ x,
 * plus, where given, the adapter's u (V, r) @ ((a (r, H) @ x) * b (n, r)) and each row's
 * habits: (habit_in (q, H) @ x) times its own hw (q, V), plus its hb (V). */
void mimic_head(long n, long H, long V, const float *restrict x, const float *restrict w,
                const float *restrict bias, long r, const float *restrict a,
                const float *restrict b, const float *restrict u, long q,
                const float *restrict habit_in, const float *restrict hw,
                const float *restrict hb, float *restrict out) {
    float z[MAX_RANK];
    /* The main product four rows at a time: each row of w read once for the four. */
    long i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *restrict x0 = x + i * H, *restrict x1 = x0 + H, *restrict x2 = x1 + H,
                    *restrict x3 = x2 + H;
        for (long j = 0; j < V; j++) {
            const float *restrict wj = w + j * H;
            float t0 = bias[j], t1 = bias[j], t2 = bias[j], t3 = bias[j];
            for (long p = 0; p < H; p++) {
                t0 += wj[p] * x0[p];
                t1 += wj[p] * x1[p];
                t2 += wj[p] * x2[p];
                t3 += wj[p] * x3[p];
            }
            out[i * V + j] = t0;
            out[(i + 1) * V + j] = t1;
            out[(i + 2) * V + j] = t2;
            out[(i + 3) * V + j] = t3;
        }
    }
    for (; i < n; i++) {
        memcpy(out + i * V, bias, sizeof(float) * V);
        times_row(V, H, w, x + i * H, out + i * V);
    }
    for (i = 0; i < n; i++) {
        const float *restrict xi = x + i * H;
        float *restrict o = out + i * V;
        if (b) {
            memset(z, 0, sizeof(float) * r);
            times_row(r, H, a, xi, z);
            for (long p = 0; p < r; p++) z[p] *= b[i * r + p];
            times_row(V, r, u, z, o);
        }
        if (hw) {
            memset(z, 0, sizeof(float) * q);
            times_row(q, H, habit_in, xi, z);
            row_times(q, V, z, hw + i * q * V, o);
            const float *restrict t = hb + i * V;
            for (long j = 0; j < V; j++) o[j] += t[j];
        }
    }
}

/* e^x, 0 for x below float's range (an odds of -inf is a character ruled out) */
static inline float exp_or_zero(float x) { return x < -87.3f ? 0.0f : exp_approx(x); }

/* log of the sum of e^x[j] (-inf where every x[j] is) */
static float log_sum_exp(long V, const float *restrict x) {
    float m = -INFINITY;
    for (long j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    if (m == -INFINITY) return m;
    float s = 0.0f;
    for (long j = 0; j < V; j++) s += exp_or_zero(x[j] - m);
    return m + logf(s);
}

/* One character for each of n rows: what sampler.Generation.step draws in torch, for a step
 * without greedy rows, top_k or rows yet to write a letter (those stay in torch). Per row:
 * the voice's log-odds (logits + biases, unk ruled out); the end mark's odds (its own,
 * times e^odds, doubling past `long`: sigmoid(log p_end - log(1 - p_end) + odds + max(0,
 * length - long) rate)); with a contrast (its raw logits), among the characters within
 * log_plausible of the likeliest, boost x (log p - log p_contrast) added; then / temps,
 * softmax, scaled to 1 - end, the end mark at `end`. `noise` (n, V) is Exp(1): the row's
 * character is the argmax of p / noise (what torch.multinomial draws), and `drawn` its p.
 * A row that may draw nothing but the end draws it. probs (n, V) is written too. */
void mimic_draw(long n, long V, const float *restrict logits, const float *restrict biases,
                const float *restrict contrast, long unk, long eom, float log_plausible,
                const float *restrict boost, const float *restrict temps,
                const float *restrict length, const float *restrict long_after,
                const float *restrict rate, const float *restrict odds,
                const float *restrict noise, float *restrict probs, int64_t *restrict next,
                float *restrict drawn) {
    float lp[V], v[V];
    for (long i = 0; i < n; i++) {
        const float *restrict x = logits + i * V;
        float *restrict p = probs + i * V;
        for (long j = 0; j < V; j++) lp[j] = x[j] + (biases ? biases[i * V + j] : 0.0f);
        lp[unk] = -INFINITY;
        const float norm = log_sum_exp(V, lp);
        for (long j = 0; j < V; j++) lp[j] -= norm;
        const float past = length[i] - long_after[i];
        const float log_end = lp[eom];
        const float z = log_end - log1pf(-expf(log_end)) + odds[i] + (past > 0 ? past : 0) * rate[i];
        float end = 1.0f / (1.0f + expf(-z));
        lp[eom] = -INFINITY;  /* the words: whether to end is drawn above */
        float likeliest = -INFINITY;
        for (long j = 0; j < V; j++) likeliest = lp[j] > likeliest ? lp[j] : likeliest;
        if (contrast && likeliest > -INFINITY) {
            const float *restrict y = contrast + i * V;
            const float theirs = log_sum_exp(V, y), threshold = likeliest + log_plausible;
            for (long j = 0; j < V; j++)
                v[j] = lp[j] >= threshold ? lp[j] + boost[i] * (lp[j] - (y[j] - theirs))
                                          : -INFINITY;
        } else {
            for (long j = 0; j < V; j++) v[j] = lp[j];
        }
        float top = -INFINITY;
        for (long j = 0; j < V; j++) {
            v[j] /= temps[i];
            top = v[j] > top ? v[j] : top;
        }
        if (top == -INFINITY) {  /* nothing but the end */
            for (long j = 0; j < V; j++) p[j] = 0.0f;
            end = 1.0f;
        } else {
            float s = 0.0f;
            for (long j = 0; j < V; j++) s += (p[j] = exp_or_zero(v[j] - top));
            const float scale = (1.0f - end) / s;
            for (long j = 0; j < V; j++) p[j] *= scale;
        }
        p[eom] = end;
        long best = 0;
        float most = -1.0f;
        for (long j = 0; j < V; j++) {
            const float q = p[j] / noise[i * V + j];
            if (q > most) {
                most = q;
                best = j;
            }
        }
        next[i] = best;
        drawn[i] = p[best];
    }
}
