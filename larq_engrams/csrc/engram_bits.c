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

/* Without -mpopcnt, GCC calls a library routine for each popcount: on x86-64 Linux a
 * clone with the POPCNT instruction is picked at load time (the C export builds as is). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LE_POPCOUNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define LE_POPCOUNT_CLONES
#endif

/* x . w = n - 2 popcount(x XOR w) over `words` words. */
static inline int32_t xnor_sum(const uint64_t *x, const uint64_t *w, int32_t words, int32_t n) {
    int32_t differ = 0;
    for (int32_t k = 0; k < words; ++k) differ += LE_POPCOUNT64(x[k] ^ w[k]);
    return n - 2 * differ;
}

/* Whether a unit with sum z, integer threshold t and direction s is +1: s z >= s t. */
static inline int32_t unit_on(int32_t z, int32_t t, int8_t s) {
    return s > 0 ? z >= t : z <= t;
}

/* z[b][u] = n - 2 popcount(x[b] XOR w[u]): x (batch, words), w (units, words). */
LE_POPCOUNT_CLONES
void le_xnor_dot(const uint64_t *x, const uint64_t *w, int32_t batch, int32_t units, int32_t words, int32_t n,
                 int32_t *z) {
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t u = 0; u < units; ++u)
            z[(int64_t)b * units + u] = xnor_sum(x + (int64_t)b * words, w + (int64_t)u * words, words, n);
}

/* out[b] = the sign bits of step(s_u z[b][u] >= s_u t_u) over the units, packed into
 * out_words words (1 for -1; padding 0). */
void le_threshold_bits(const int32_t *z, const int32_t *threshold, const int8_t *direction, int32_t batch,
                       int32_t units, int32_t out_words, uint64_t *out) {
    for (int32_t b = 0; b < batch; ++b) {
        const int32_t *zb = z + (int64_t)b * units;
        uint64_t *ob = out + (int64_t)b * out_words;
        for (int32_t k = 0; k < out_words; ++k) ob[k] = 0;
        for (int32_t u = 0; u < units; ++u)
            ob[u >> 6] |= (uint64_t)!unit_on(zb[u], threshold[u], direction[u]) << (u & 63);
    }
}

/* A hidden binary layer in one pass: le_xnor_dot then le_threshold_bits, without the sums
 * in between. */
LE_POPCOUNT_CLONES
void le_xnor_threshold_bits(const uint64_t *x, const uint64_t *w, int32_t batch, int32_t units, int32_t words,
                            int32_t n, const int32_t *threshold, const int8_t *direction, int32_t out_words,
                            uint64_t *out) {
    for (int32_t b = 0; b < batch; ++b) {
        const uint64_t *xb = x + (int64_t)b * words;
        uint64_t *ob = out + (int64_t)b * out_words;
        for (int32_t k = 0; k < out_words; ++k) ob[k] = 0;
        for (int32_t u = 0; u < units; ++u)
            ob[u >> 6] |= (uint64_t)!unit_on(xnor_sum(xb, w + (int64_t)u * words, words, n), threshold[u],
                                             direction[u]) << (u & 63);
    }
}
