/* A whole binary network, example by example, in one call: the first layer from the real
 * inputs straight to bits (signed_sums.c), each hidden layer on bits and the output
 * layer's integer sums (engram_bits.c). The runtime calls it once per engram instead of
 * once per layer: the calls, not the arithmetic, were a fifth of its time at batch 100.
 *
 * C99, no heap: the two layers' bits live on the stack.
 */
#include <stdint.h>

void le_signed_dense_bits(const float *restrict x, const uint64_t *restrict negative, int32_t batch, int32_t n,
                          int32_t units, int32_t words, const float *restrict scale, const float *restrict offset,
                          int32_t out_words, uint64_t *restrict out);
void le_xnor_threshold_bits(const uint64_t *x, const uint64_t *w, int32_t batch, int32_t units, int32_t words,
                            int32_t n, const int32_t *threshold, const int8_t *direction, int32_t out_words,
                            uint64_t *out);
void le_xnor_dot(const uint64_t *x, const uint64_t *w, int32_t batch, int32_t units, int32_t words, int32_t n,
                 int32_t *z);

/* z (batch, classes): the output layer's sums n_L - 2 popcount(h_L XOR w_out) for inputs x
 * (batch, n). The first layer: `first_negative` (n, ceil(n_1 / 64)) sign words, BatchNorm as
 * scale and offset; then `hidden` binary layers, layer l with widths[l] inputs and
 * widths[l + 1] units, weights w[l] (units, words of inputs), thresholds t[l], directions d[l];
 * w_out (classes, words of n_L). */
void le_binary_network(const float *restrict x, int32_t batch, int32_t n, const uint64_t *first_negative,
                       const float *scale, const float *offset, int32_t hidden, const int32_t *widths,
                       const uint64_t *const *w, const int32_t *const *t, const int8_t *const *d,
                       const uint64_t *w_out, int32_t classes, int32_t *z) {
    int32_t max_words = 1;
    for (int32_t l = 0; l <= hidden; ++l)
        if ((widths[l] + 63) / 64 > max_words) max_words = (widths[l] + 63) / 64;
    uint64_t bits[2][max_words];
    for (int32_t b = 0; b < batch; ++b) {
        int32_t in = 0;
        le_signed_dense_bits(x + (int64_t)b * n, first_negative, 1, n, widths[0], (widths[0] + 63) / 64, scale,
                             offset, (widths[0] + 63) / 64, bits[0]);
        for (int32_t l = 0; l < hidden; ++l) {
            le_xnor_threshold_bits(bits[in], w[l], 1, widths[l + 1], (widths[l] + 63) / 64, widths[l], t[l], d[l],
                                   (widths[l + 1] + 63) / 64, bits[1 - in]);
            in = 1 - in;
        }
        le_xnor_dot(bits[in], w_out, 1, classes, (widths[hidden] + 63) / 64, widths[hidden], z + (int64_t)b * classes);
    }
}
