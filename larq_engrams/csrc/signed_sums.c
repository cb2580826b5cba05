/* Sign-selected sums of real inputs: the first binary layer and the router's random
 * features, whose weights are all +-1.
 *
 *     x . w = sum_{w_i = +1} x_i - sum_{w_i = -1} x_i
 *
 * Each term is an input with its sign flipped or not (a product by +-1, exact in floating
 * point); an input that is 0 adds nothing and is skipped, so the cost follows the nonzero
 * inputs (about a fifth of a digit's pixels). The innermost loops run over output units or
 * filters, in blocks of 64 held in registers; on x86-64 Linux with GCC an AVX-512 or AVX2
 * clone is picked at load time.
 *
 * C99, no heap: built beside engram_bits.c into the runtime's kernel library (ctypes).
 */
#include <stddef.h>
#include <stdint.h>
#include <math.h>

#if defined(__GNUC__) || defined(__clang__)
#define LE_CTZ64(v) ((int32_t)__builtin_ctzll(v))
#else
static int32_t LE_CTZ64(uint64_t v) {
    int32_t n = 0;
    while (!(v & 1u)) { v >>= 1; ++n; }
    return n;
}
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LE_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LE_VECTOR_CLONES
#endif

#define LE_BLOCK 64 /* output units or filters summed at a time, held in registers */

#if defined(__GNUC__) || defined(__clang__)
/* 16 floats: one AVX-512 register, two AVX2 ones; the compiler splits it as the target
 * allows. The sums keep the scalar code's order, so every target gives the same bits. */
typedef float le_v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t le_i16 __attribute__((vector_size(64), aligned(4)));
typedef struct { le_v16 v[LE_BLOCK / 16]; } le_block;
static inline void le_block_zero(le_block *a) {
    for (int32_t q = 0; q < LE_BLOCK / 16; ++q) a->v[q] = (le_v16){0};
}
static inline void le_block_add(le_block *a, float v, const float *w) { /* a += v w */
    const le_v16 *wv = (const le_v16 *)w;
    for (int32_t q = 0; q < LE_BLOCK / 16; ++q) a->v[q] += v * wv[q];
}
static inline void le_block_add_signed(le_block *a, float v, uint64_t negative) { /* a += v (-1)^bit */
    const le_i16 lane = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    const le_i16 sign = (le_i16){0} + (int32_t)0x80000000, value = (le_i16)((le_v16){0} + v);
    for (int32_t q = 0; q < LE_BLOCK / 16; ++q) { /* flip v's sign bit where the weight is -1: exact */
        const le_i16 bits = (le_i16){0} + (int32_t)((negative >> (16 * q)) & 0xFFFF);
        a->v[q] += (le_v16)(value ^ (((bits & lane) != 0) & sign));
    }
}
static inline void le_block_add_relu(le_block *s, const le_block *a) { /* s += max(a, 0) */
    const le_v16 zero = {0};
    for (int32_t q = 0; q < LE_BLOCK / 16; ++q) s->v[q] += (le_v16)((a->v[q] > zero) & (le_i16)a->v[q]);
}
static inline void le_block_scale(le_block *a, float s) {
    for (int32_t q = 0; q < LE_BLOCK / 16; ++q) a->v[q] *= s;
}
/* s += max(a - m w, 0) i: a patch-normalized response, rectified (i > 0), in one pass */
static inline void le_block_add_relu_normalized(le_block *s, const le_block *a, float m, const float *w, float i) {
    const le_v16 zero = {0};
    const le_v16 *wv = (const le_v16 *)w;
    for (int32_t q = 0; q < LE_BLOCK / 16; ++q) {
        const le_v16 t = (a->v[q] - m * wv[q]) * i;
        s->v[q] += (le_v16)((t > zero) & (le_i16)t);
    }
}
static inline void le_block_store(const le_block *a, float *out, int32_t count) {
    float lanes[LE_BLOCK];
    for (int32_t q = 0; q < LE_BLOCK / 16; ++q) *(le_v16 *)(lanes + 16 * q) = a->v[q];
    __builtin_memcpy(out, lanes, sizeof(float) * (size_t)count);
}
#else
typedef struct { float v[LE_BLOCK]; } le_block;
static void le_block_zero(le_block *a) {
    for (int32_t f = 0; f < LE_BLOCK; ++f) a->v[f] = 0.0f;
}
static void le_block_add(le_block *a, float v, const float *w) {
    for (int32_t f = 0; f < LE_BLOCK; ++f) a->v[f] += v * w[f];
}
static void le_block_add_signed(le_block *a, float v, uint64_t negative) {
    for (int32_t f = 0; f < LE_BLOCK; ++f) a->v[f] += (negative >> f) & 1 ? -v : v;
}
static void le_block_add_relu(le_block *s, const le_block *a) {
    for (int32_t f = 0; f < LE_BLOCK; ++f) s->v[f] += a->v[f] > 0.0f ? a->v[f] : 0.0f;
}
static void le_block_scale(le_block *a, float s) {
    for (int32_t f = 0; f < LE_BLOCK; ++f) a->v[f] *= s;
}
static void le_block_add_relu_normalized(le_block *s, const le_block *a, float m, const float *w, float i) {
    for (int32_t f = 0; f < LE_BLOCK; ++f) {
        const float t = (a->v[f] - m * w[f]) * i;
        s->v[f] += t > 0.0f ? t : 0.0f;
    }
}
static void le_block_store(const le_block *a, float *out, int32_t count) {
    for (int32_t f = 0; f < count; ++f) out[f] = a->v[f];
}
#endif

/* Lists x's nonzero inputs (their indices, in order); returns how many. */
static int32_t nonzero_inputs(const float *x, int32_t n, int32_t *nonzero) {
    int32_t count = 0;
    for (int32_t i = 0; i < n; ++i)
        if (x[i] != 0.0f) nonzero[count++] = i;
    return count;
}

/* lanes = x W[:, 64 block : 64 block + 64], summed over x's `count` listed nonzero inputs
 * in order; W's signs are bits, `negative` (n, words): bit u % 64 of word u / 64 of row
 * i is 1 where W[i, u] = -1. Each term is x_i with its sign bit flipped or not. */
typedef void (*le_block_sums_fn)(const float *x, const int32_t *nonzero, int32_t count, const uint64_t *negative,
                                 int32_t words, int32_t block, float *lanes);

LE_VECTOR_CLONES
static void block_sums(const float *x, const int32_t *nonzero, int32_t count, const uint64_t *negative,
                       int32_t words, int32_t block, float *lanes) {
    le_block acc;
    le_block_zero(&acc);
    for (int32_t q = 0; q < count; ++q) {
        const int32_t i = nonzero[q];
        le_block_add_signed(&acc, x[i], negative[(int64_t)i * words + block]);
    }
    le_block_store(&acc, lanes, LE_BLOCK);
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
/* The same sums with AVX-512's 16-bit lane masks: a blend of v and -v per register (GCC
 * does not find it from the portable code, which takes half as long again). */
__attribute__((target("avx512f")))
static void block_sums_avx512(const float *x, const int32_t *nonzero, int32_t count, const uint64_t *negative,
                              int32_t words, int32_t block, float *lanes) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int32_t q = 0; q < count; ++q) {
        const int32_t i = nonzero[q];
        const uint64_t bits = negative[(int64_t)i * words + block];
        const __m512 v = _mm512_set1_ps(x[i]), minus_v = _mm512_sub_ps(_mm512_setzero_ps(), v);
        a0 = _mm512_add_ps(a0, _mm512_mask_blend_ps((__mmask16)bits, v, minus_v));
        a1 = _mm512_add_ps(a1, _mm512_mask_blend_ps((__mmask16)(bits >> 16), v, minus_v));
        a2 = _mm512_add_ps(a2, _mm512_mask_blend_ps((__mmask16)(bits >> 32), v, minus_v));
        a3 = _mm512_add_ps(a3, _mm512_mask_blend_ps((__mmask16)(bits >> 48), v, minus_v));
    }
    _mm512_storeu_ps(lanes, a0);
    _mm512_storeu_ps(lanes + 16, a1);
    _mm512_storeu_ps(lanes + 32, a2);
    _mm512_storeu_ps(lanes + 48, a3);
}

static le_block_sums_fn pick_block_sums(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? block_sums_avx512 : block_sums;
}
#else
static le_block_sums_fn pick_block_sums(void) { return block_sums; }
#endif

/* z[b] = x[b] W: x (batch, n), W's signs as `negative` (n, words) bits (block_sums), z
 * (batch, units). The nonzero inputs are listed once per example; each block of 64 units
 * then sums them in registers. */
void le_signed_dense(const float *restrict x, const uint64_t *restrict negative, int32_t batch, int32_t n,
                     int32_t units, int32_t words, float *restrict z) {
    const le_block_sums_fn block_sums = pick_block_sums();
    int32_t nonzero[n > 0 ? n : 1];
    float lanes[LE_BLOCK];
    for (int32_t b = 0; b < batch; ++b) {
        const float *xb = x + (int64_t)b * n;
        const int32_t count = nonzero_inputs(xb, n, nonzero);
        float *zb = z + (int64_t)b * units;
        for (int32_t u0 = 0; u0 < units; u0 += LE_BLOCK) {
            block_sums(xb, nonzero, count, negative, words, u0 / LE_BLOCK, lanes);
            for (int32_t u = u0; u < units && u < u0 + LE_BLOCK; ++u) zb[u] = lanes[u - u0];
        }
    }
}

/* The first binary layer straight to the next layer's input bits: unit u is +1 iff
 * (x W)_u scale_u + offset_u >= 0 (BatchNorm folded; the product and the sum each rounded
 * to float32, as NumPy does), packed as engram_bits.c's words (1 for -1; padding 0):
 * out (batch, out_words). */
void le_signed_dense_bits(const float *restrict x, const uint64_t *restrict negative, int32_t batch, int32_t n,
                          int32_t units, int32_t words, const float *restrict scale, const float *restrict offset,
                          int32_t out_words, uint64_t *restrict out) {
    float z[units > 0 ? units : 1];
    for (int32_t b = 0; b < batch; ++b) {
        le_signed_dense(x + (int64_t)b * n, negative, 1, n, units, words, z);
        uint64_t *ob = out + (int64_t)b * out_words;
        for (int32_t k = 0; k < out_words; ++k) ob[k] = 0;
        for (int32_t u = 0; u < units; ++u) {
            const float scaled = z[u] * scale[u];
            if (!(scaled + offset[u] >= 0.0f)) ob[u >> 6] |= (uint64_t)1 << (u & 63);
        }
    }
}

/* The k x k window at (i, j)'s nonzero taps as one mask, bit a k + c for (row a, column
 * c): a position's taps are then one loop (a loop per row costs a mispredicted exit per
 * row). */
static inline uint64_t window_taps(const uint64_t *nonzero, int32_t i, int32_t j, int32_t k, uint64_t window) {
    uint64_t taps = 0;
    for (int32_t a = 0; a < k; ++a) taps |= ((nonzero[i + a] >> j) & window) << (a * k);
    return taps;
}

/* out[b] = `scale` times the sum over each p x p pooling window of relu(conv(x[b], W)),
 * valid positions, whole windows only, flattened as (grid_h, grid_w, filters): x (batch,
 * height, width), one channel of width <= 64, k <= 8, W (k k, padded) of +-1 in patch
 * order (row, column), its `padded` columns a multiple of LE_BLOCK (zeros past `filters`).
 * The caller's scale is the filters' scale / p^2 (relu commutes with a positive scale),
 * one float32 product per output, as NumPy's. With `contrast_floor` eps > 0 each k x k
 * window u is normalized first, n(u) = (u - mean(u)) / sqrt(var(u) + eps), computed as
 * n(u) . W = (u . W - mean(u) 1^T W) / sqrt(var(u) + eps): the sums over u stay sparse.
 *
 * Each response sums only the window's nonzero pixels, found from a bit mask per image
 * row (a window of zeros gives 0, normalized or not); a pooling window's sums stay in
 * registers. */
LE_VECTOR_CLONES
void le_signed_conv_pool(const float *restrict x, const float *restrict w, int32_t batch, int32_t height,
                         int32_t width, int32_t k, int32_t p, int32_t filters, int32_t padded, float scale,
                         float contrast_floor, float *restrict out) {
    const int32_t grid_h = (height - k + 1) / p, grid_w = (width - k + 1) / p;
    const uint64_t window = k >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << k) - 1;
    uint64_t nonzero[height > 0 ? height : 1];
    int32_t offset[64]; /* tap t = a k + c lies a rows and c columns from the window's corner */
    for (int32_t t = 0; t < k * k; ++t) offset[t] = (t / k) * width + t % k;
    for (int32_t b = 0; b < batch; ++b) {
        const float *xb = x + (int64_t)b * height * width;
        for (int32_t r = 0; r < height; ++r) {
            uint64_t mask = 0;
            for (int32_t q = 0; q < width; ++q) mask |= (uint64_t)(xb[r * width + q] != 0.0f) << q;
            nonzero[r] = mask;
        }
        float *ob = out + (int64_t)b * grid_h * grid_w * filters;
        for (int32_t f0 = 0; f0 < filters; f0 += LE_BLOCK) {
            const float *rows[64]; /* tap t's filter weights, block f0 */
            float column_sums[LE_BLOCK] = {0.0f}; /* 1^T W, block f0: for the normalization */
            for (int32_t t = 0; t < k * k; ++t) {
                rows[t] = w + (int64_t)t * padded + f0;
                for (int32_t f = 0; f < LE_BLOCK; ++f) column_sums[f] += rows[t][f];
            }
            for (int32_t gi = 0; gi < grid_h; ++gi) {
                for (int32_t gj = 0; gj < grid_w; ++gj) {
                    le_block pooled;
                    le_block_zero(&pooled);
                    for (int32_t i = gi * p; i < gi * p + p; ++i) {
                        for (int32_t j = gj * p; j < gj * p + p; ++j) {
                            uint64_t taps = window_taps(nonzero, i, j, k, window);
                            if (!taps) continue;
                            le_block acc;
                            le_block_zero(&acc);
                            const float *corner = xb + (int64_t)i * width + j;
                            float sum = 0.0f, squares = 0.0f;
                            while (taps) {
                                const int32_t t = LE_CTZ64(taps);
                                taps &= taps - 1;
                                const float v = corner[offset[t]];
                                le_block_add(&acc, v, rows[t]);
                                sum += v;
                                squares += v * v;
                            }
                            if (contrast_floor > 0.0f) {
                                const float mean = sum / (float)(k * k);
                                const float var = squares / (float)(k * k) - mean * mean;
                                le_block_add_relu_normalized(&pooled, &acc, mean, column_sums,
                                                             1.0f / sqrtf((var > 0.0f ? var : 0.0f) + contrast_floor));
                            } else {
                                le_block_add_relu(&pooled, &acc);
                            }
                        }
                    }
                    le_block_scale(&pooled, scale);
                    le_block_store(&pooled, ob + ((int64_t)gi * grid_w + gj) * filters + f0,
                                   filters - f0 < LE_BLOCK ? filters - f0 : LE_BLOCK);
                }
            }
        }
    }
}
