/* Sign-selected sums of real inputs: the first binary layer and the router's random
 * features, whose weights are all +-1.
 *
 *     x . w = sum_{w_i = +1} x_i - sum_{w_i = -1} x_i
 *
 * Each term is an input with its sign flipped or not (a product by +-1, exact in floating
 * point); an input that is 0 adds nothing and is skipped, so the cost follows the nonzero
 * inputs (about a fifth of a digit's pixels). The loops run over the output units, so that
 * the compiler vectorises them; on x86-64 with GCC an AVX2 clone is picked at load time.
 *
 * C99, no heap: built beside engram_bits.c into the runtime's kernel library (ctypes).
 */
#include <stdint.h>

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

/* out[b] = the sum over each p x p pooling window of relu(conv(x[b], W)), valid positions,
 * whole windows only, flattened as (grid_h, grid_w, filters): x (batch, height, width,
 * channels), W (k k channels, filters) of +-1 in patch order (row, column, channel). The
 * caller scales by the filters' scale / p^2 (relu commutes with a positive scale).
 *
 * Each nonzero input is scattered into the responses of the positions whose window holds
 * it (`scratch`: grid_h p x grid_w p x filters floats), which are then rectified and pooled. */
LE_VECTOR_CLONES
void le_signed_conv_pool(const float *restrict x, const float *restrict w, int32_t batch, int32_t height, int32_t width,
                         int32_t channels, int32_t k, int32_t p, int32_t filters, float *restrict out,
                         float *restrict scratch) {
    const int32_t grid_h = (height - k + 1) / p, grid_w = (width - k + 1) / p;
    const int32_t rows = grid_h * p, cols = grid_w * p;  /* the positions that some pooling window takes */
    for (int32_t b = 0; b < batch; ++b) {
        const float *xb = x + (int64_t)b * height * width * channels;
        for (int64_t m = 0; m < (int64_t)rows * cols * filters; ++m) scratch[m] = 0.0f;
        for (int32_t r = 0; r < rows + k - 1; ++r) {
            const int32_t a_lo = r - rows + 1 > 0 ? r - rows + 1 : 0, a_hi = r < k - 1 ? r : k - 1;
            for (int32_t q = 0; q < cols + k - 1; ++q) {
                const int32_t b_lo = q - cols + 1 > 0 ? q - cols + 1 : 0, b_hi = q < k - 1 ? q : k - 1;
                for (int32_t c = 0; c < channels; ++c) {
                    const float v = xb[((int64_t)r * width + q) * channels + c];
                    if (v == 0.0f) continue;
                    for (int32_t a = a_lo; a <= a_hi; ++a) {
                        for (int32_t bb = b_lo; bb <= b_hi; ++bb) {
                            float *z = scratch + ((int64_t)(r - a) * cols + (q - bb)) * filters;
                            const float *wt = w + ((int64_t)(a * k + bb) * channels + c) * filters;
                            for (int32_t f = 0; f < filters; ++f) z[f] += v * wt[f];
                        }
                    }
                }
            }
        }
        float *ob = out + (int64_t)b * grid_h * grid_w * filters;
        for (int64_t m = 0; m < (int64_t)grid_h * grid_w * filters; ++m) ob[m] = 0.0f;
        for (int32_t i = 0; i < rows; ++i) {
            for (int32_t j = 0; j < cols; ++j) {
                const float *z = scratch + ((int64_t)i * cols + j) * filters;
                float *pooled = ob + ((int64_t)(i / p) * grid_w + j / p) * filters;
                for (int32_t f = 0; f < filters; ++f) pooled[f] += z[f] > 0.0f ? z[f] : 0.0f;
            }
        }
    }
}
