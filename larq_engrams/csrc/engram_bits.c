/* Binary layers computed on their bits: XNOR (as XOR) and popcount over 64-bit words.
 *
 * A +-1 vector of n entries is stored as ceil(n / 64) little-endian words, bit i of the
 * vector in bit (i % 64) of word i / 64, 1 for -1 (sign negative), 0 for +1; the padding
 * bits past n are 0 in every operand. For two such vectors x and w,
 *
 *     x . w = (n - d) - d = n - 2 d,     d = popcount(x XOR w)   (entries that differ)
 *
 * exactly, in integers. A hidden layer then folds BatchNorm and sign into an integer
 * threshold t and a direction s per unit (larq_engrams.export): its output is +1 iff
 * s z >= s t, packed again into the next layer's input bits.
 *
 * C99, no heap, no libc beyond <stdint.h>: the same file is built as the NumPy runtime's
 * kernel library (ctypes) and copied into `larq_engrams.export.save_c`'s C export.
 */
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define LE_POPCOUNT64(v) ((int32_t)__builtin_popcountll(v))
#else
static int32_t LE_POPCOUNT64(uint64_t v) {
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int32_t)((v * 0x0101010101010101ULL) >> 56);
}
#endif

/* z[b][u] = n - 2 popcount(x[b] XOR w[u]): x (batch, words), w (units, words). */
void le_xnor_dot(const uint64_t *x, const uint64_t *w, int32_t batch, int32_t units, int32_t words, int32_t n,
                 int32_t *z) {
    for (int32_t b = 0; b < batch; ++b) {
        const uint64_t *xb = x + (int64_t)b * words;
        int32_t *zb = z + (int64_t)b * units;
        for (int32_t u = 0; u < units; ++u) {
            const uint64_t *wu = w + (int64_t)u * words;
            int32_t differ = 0;
            for (int32_t k = 0; k < words; ++k) differ += LE_POPCOUNT64(xb[k] ^ wu[k]);
            zb[u] = n - 2 * differ;
        }
    }
}

/* out[b] = the sign bits of step(s_u z[b][u] >= s_u t_u) over the units, packed into
 * out_words words (1 for -1; padding 0). */
void le_threshold_bits(const int32_t *z, const int32_t *threshold, const int8_t *direction, int32_t batch,
                       int32_t units, int32_t out_words, uint64_t *out) {
    for (int32_t b = 0; b < batch; ++b) {
        const int32_t *zb = z + (int64_t)b * units;
        uint64_t *ob = out + (int64_t)b * out_words;
        for (int32_t k = 0; k < out_words; ++k) ob[k] = 0;
        for (int32_t u = 0; u < units; ++u) {
            int32_t on = direction[u] > 0 ? zb[u] >= threshold[u] : zb[u] <= threshold[u];
            if (!on) ob[u >> 6] |= (uint64_t)1 << (u & 63);
        }
    }
}

/* A chain of binary layers on bits: x (batch, words of n_0) through `layers` hidden layers
 * (weights w_l (n_l, words of n_{l-1}), thresholds, directions), then the output layer
 * w_out (classes, words of n_L) into integer z_out (batch, classes). `scratch` holds two
 * (batch, words of max n_l) buffers. */
void le_binary_chain(const uint64_t *x, int32_t batch, int32_t layers, const int32_t *widths,
                     const uint64_t *const *weights, const int32_t *const *thresholds,
                     const int8_t *const *directions, const uint64_t *w_out, int32_t classes,
                     int32_t *z_scratch, uint64_t *bits_scratch, int32_t max_words, int32_t *z_out) {
    const uint64_t *in = x;
    uint64_t *buffers[2] = {bits_scratch, bits_scratch + (int64_t)batch * max_words};
    for (int32_t l = 0; l < layers; ++l) {
        int32_t n_in = widths[l], n_out = widths[l + 1];
        int32_t in_words = (n_in + 63) / 64, out_words = (n_out + 63) / 64;
        le_xnor_dot(in, weights[l], batch, n_out, in_words, n_in, z_scratch);
        le_threshold_bits(z_scratch, thresholds[l], directions[l], batch, n_out, out_words, buffers[l & 1]);
        in = buffers[l & 1];
    }
    le_xnor_dot(in, w_out, batch, classes, (widths[layers] + 63) / 64, widths[layers], z_out);
}
