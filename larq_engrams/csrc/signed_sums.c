/* Sign-selected sums of real inputs: the first binary layer and the router's random
 * features, whose weights are all +-1.
 *
 *     x . w = sum_{w_i = +1} x_i - sum_{w_i = -1} x_i
 *
 * Each term is an input with its sign flipped or not (a product by +-1, exact in floating
 * point); an input that is 0 adds nothing and is skipped, so the cost follows the nonzero
 * inputs (about a fifth of a digit's pixels). The innermost loops run over output units or
 * filters, so that the compiler vectorises them; on x86-64 Linux with GCC an AVX2 clone is
 * picked at load time.
 *
 * C99, no heap: built beside engram_bits.c into the runtime's kernel library (ctypes).
 */
#include <stdint.h>

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
#define LE_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LE_VECTOR_CLONES
#endif

/* z[b] = x[b] W: x (batch, n), W (n, units) of +-1 (row-major), z (batch, units). */
LE_VECTOR_CLONES
void le_signed_dense(const float *restrict x, const float *restrict w, int32_t batch, int32_t n, int32_t units,
                     float *restrict z) {
    for (int32_t b = 0; b < batch; ++b) {
        const float *xb = x + (int64_t)b * n;
        float *zb = z + (int64_t)b * units;
        for (int32_t u = 0; u < units; ++u) zb[u] = 0.0f;
        for (int32_t i = 0; i < n; ++i) {
            const float v = xb[i];
            if (v == 0.0f) continue;
            const float *wi = w + (int64_t)i * units;
            for (int32_t u = 0; u < units; ++u) zb[u] += v * wi[u];
        }
    }
}

#define LE_FILTER_BLOCK 64 /* filters summed at a time: a fixed count the compiler keeps in vector registers */

/* out[b] = the sum over each p x p pooling window of relu(conv(x[b], W)), valid positions,
 * whole windows only, flattened as (grid_h, grid_w, filters): x (batch, height, width),
 * one channel of width <= 64, W (k k, padded) of +-1 in patch order (row, column), its
 * `padded` columns a multiple of LE_FILTER_BLOCK (zeros past `filters`). The caller
 * scales by the filters' scale / p^2 (relu commutes with a positive scale).
 *
 * Each response sums only the window's nonzero pixels, found from a bit mask per image
 * row. */
LE_VECTOR_CLONES
void le_signed_conv_pool(const float *restrict x, const float *restrict w, int32_t batch, int32_t height,
                         int32_t width, int32_t k, int32_t p, int32_t filters, int32_t padded,
                         float *restrict out) {
    const int32_t grid_h = (height - k + 1) / p, grid_w = (width - k + 1) / p;
    const uint64_t window = k >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << k) - 1;
    uint64_t nonzero[height];
    for (int32_t b = 0; b < batch; ++b) {
        const float *xb = x + (int64_t)b * height * width;
        for (int32_t r = 0; r < height; ++r) {
            uint64_t mask = 0;
            for (int32_t q = 0; q < width; ++q) mask |= (uint64_t)(xb[r * width + q] != 0.0f) << q;
            nonzero[r] = mask;
        }
        float *ob = out + (int64_t)b * grid_h * grid_w * filters;
        for (int64_t m = 0; m < (int64_t)grid_h * grid_w * filters; ++m) ob[m] = 0.0f;
        for (int32_t f0 = 0; f0 < filters; f0 += LE_FILTER_BLOCK) {
            const int32_t count = filters - f0 < LE_FILTER_BLOCK ? filters - f0 : LE_FILTER_BLOCK;
            for (int32_t i = 0; i < grid_h * p; ++i) {
                for (int32_t j = 0; j < grid_w * p; ++j) {
                    float acc[LE_FILTER_BLOCK] = {0.0f};
                    for (int32_t a = 0; a < k; ++a) {
                        uint64_t taps = (nonzero[i + a] >> j) & window;
                        while (taps) {
                            const int32_t c = LE_CTZ64(taps);
                            taps &= taps - 1;
                            const float v = xb[(i + a) * width + j + c];
                            const float *wt = w + (int64_t)(a * k + c) * padded + f0;
                            for (int32_t f = 0; f < LE_FILTER_BLOCK; ++f) acc[f] += v * wt[f];
                        }
                    }
                    float *pooled = ob + ((int64_t)(i / p) * grid_w + j / p) * filters + f0;
                    for (int32_t f = 0; f < count; ++f) pooled[f] += acc[f] > 0.0f ? acc[f] : 0.0f;
                }
            }
        }
    }
}
