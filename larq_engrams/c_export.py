r"""`save_c`: a trained engram BNN as C99 source for a device without Python.

Writes three files into a folder:

- `engram_model.h`: the API and sizes;
- `engram_model.c`: every engram's sub-network and the router as `const` arrays (flash,
  not RAM), and the code that runs them, with static buffers only (no heap);
- `engram_bits.c`: the XNOR-popcount kernels (`larq_engrams/csrc/engram_bits.c`, the
  same file the NumPy runtime's C path uses).

```c
#include "engram_model.h"
float scores[LE_CLASSES];
int32_t task;
int32_t label = le_infer(x, scores, &task);        /* no task id: the router picks the engram */
int32_t label = le_task_logits(x, 2, scores);      /* task 2's engram: its logits */
```

The computation is the NumPy runtime's (`larq_engrams.runtime`, docs/deploying.md): per
engram, the first layer z_j = sum_i x_i s_ij as additions and subtractions of the real
inputs selected by the sign bits (a double accumulator), BatchNorm as float scale and
offset, its sign bits packed; every later layer in integers, z = n - 2 popcount(x XOR w)
against an integer threshold; the output z times the output BatchNorm's scale plus
offset. The router's features are sign-selected sums as well (dense: relu(x R); conv:
the pooled random filters), its scores float dot products, and "infer" is the runtime's
product of experts over the chosen engram's classes (`floored_log_softmax`, libm's
`expf` and `logf`). With a router shortlist of k below the engrams' count, each
engram's mean group is scored first and only the k best engrams' groups after it
(`InputDiscriminant.shortlisted`; K M + k C M multiply-adds instead of K C M). Agreement with the runtime is checked on every example by the tests;
as in the runtime, a first-layer unit whose float sum lies within rounding of its
threshold can differ.
"""
import os
import shutil

import numpy as np

from larq_engrams import runtime

__all__ = ["save_c"]

_KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "engram_bits.c")


def _float(value):
    """A C float literal that round-trips float32 (9 significant digits)."""
    if not np.isfinite(value):
        return "-1e30f" if value < 0 else "1e30f"
    text = f"{float(value):.9g}"
    return text + ("f" if any(c in text for c in ".e") else ".0f")


def _floats(values):
    return ", ".join(_float(v) for v in np.asarray(values, np.float32).ravel())


def _ints(values):
    return ", ".join(str(int(v)) for v in np.asarray(values).ravel())


def _words(values):
    return ", ".join(f"0x{int(v):016x}ULL" for v in np.asarray(values, np.uint64).ravel())


class _Writer:
    def __init__(self):
        self.lines = []
        self.const_bytes = 0

    def array(self, ctype, name, values, literal):
        values = np.asarray(values)
        self.const_bytes += values.size * {"uint64_t": 8, "float": 4, "int32_t": 4, "int8_t": 1,
                                           "uint8_t": 1}[ctype]
        body = literal(values) if values.size else "0"
        self.lines.append(f"static const {ctype} {name}[{max(values.size, 1)}] = {{{body}}};")


def save_c(model, folder):
    """Writes `model` (a trained `EngramModel` with its router) as C99 source into
    `folder` (see the module docstring); returns a dict of sizes: `const_bytes` (the
    arrays, flash), `buffer_bytes` (the static working buffers, RAM)."""
    from larq_engrams.export import packed_arrays  # TensorFlow: only where the model is

    if not hasattr(model, "engram_layers"):
        raise ValueError("save_c: exports an EngramModel (its engrams and router); for a plain BNN use save_packed")
    arrays, manifest = packed_arrays(model)
    net = runtime.PackedNetwork(manifest, arrays, kernels="numpy")
    if not net.has_router:
        raise ValueError("save_c: the model has no router (router=False); the C export runs 'infer' with it")
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(_KERNELS, os.path.join(folder, "engram_bits.c"))
    sizes = _write_source(net, folder)
    return sizes


def _write_source(net, folder):
    w = _Writer()
    tasks = net.allocated_tasks
    inputs, classes = net.input_size, net.num_classes
    widths_all, max_words = [], 1
    for k, task in enumerate(tasks):
        layers, output = net.engram_network(task)
        first = layers[0]
        n1 = first.kernel.shape[1]
        widths = [n1] + [layer.kernel.shape[1] for layer in layers[1:]]
        widths_all.append(widths)
        max_words = max(max_words, *(-(-n // 64) for n in widths))
        w.array("uint64_t", f"e{k}_w0", runtime.sign_words(first.kernel.T < 0), _words)
        w.array("float", f"e{k}_scale0", first.scale, _floats)
        w.array("float", f"e{k}_offset0", first.offset, _floats)
        for i, layer in enumerate(layers[1:], start=1):
            weights, threshold, direction = layer.bit_operands()
            w.array("uint64_t", f"e{k}_w{i}", weights, _words)
            w.array("int32_t", f"e{k}_t{i}", threshold, _ints)
            w.array("int8_t", f"e{k}_d{i}", direction, _ints)
        w.array("uint64_t", f"e{k}_wout", output.words(), _words)
        w.array("int32_t", f"e{k}_widths", widths, _ints)
        hidden = len(layers) - 1
        w.lines.append(f"static const uint64_t *const e{k}_w[{max(hidden, 1)}] = "
                       f"{{{', '.join(f'e{k}_w{i}' for i in range(1, hidden + 1)) or '0'}}};")
        w.lines.append(f"static const int32_t *const e{k}_t[{max(hidden, 1)}] = "
                       f"{{{', '.join(f'e{k}_t{i}' for i in range(1, hidden + 1)) or '0'}}};")
        w.lines.append(f"static const int8_t *const e{k}_d[{max(hidden, 1)}] = "
                       f"{{{', '.join(f'e{k}_d{i}' for i in range(1, hidden + 1)) or '0'}}};")
    w.array("float", "out_scale", net.output_scale, _floats)
    w.array("float", "out_offset", net.output_offset, _floats)
    w.array("uint8_t", "engram_classes", net.engram_classes[tasks].astype(np.uint8), _ints)
    # The router: its projection's sign bits (one row of words per feature or filter).
    projection = net.router_projection
    scale = float(net.manifest["router"]["projection_scale"])
    w.array("uint64_t", "router_bits", runtime.sign_words(projection.T < 0), _words)
    kernel = net.router_kernel[tasks]  # (K, C, M)
    w.array("float", "router_kernel", kernel, _floats)
    w.array("float", "router_bias", net.router_bias[tasks], _floats)
    task_evidence = net.router_class_kernel is not None  # each task's own class evidence
    if task_evidence:
        w.array("float", "router_class_kernel", net.router_class_kernel[tasks], _floats)
        w.array("float", "router_class_bias", net.router_class_bias[tasks], _floats)
    shortlist = net.manifest["router"].get("shortlist")
    shortlist = shortlist if shortlist is not None and shortlist < len(tasks) else None  # else: every engram
    if shortlist is not None:  # each engram's mean group, scored first (runtime.engram_means)
        mean_kernel, mean_bias = runtime.engram_means(kernel, net.router_bias[tasks])
        w.array("float", "router_mean_kernel", mean_kernel, _floats)
        w.array("float", "router_mean_bias", mean_bias, _floats)
    features = kernel.shape[-1]
    conv = net.router_conv
    entries = ",\n    ".join(
        f"{{e{k}_w0, e{k}_scale0, e{k}_offset0, {len(widths_all[k]) - 1}, e{k}_widths, e{k}_w, e{k}_t, e{k}_d, "
        f"e{k}_wout}}" for k in range(len(tasks)))
    defines = {
        "LE_INPUTS": inputs, "LE_CLASSES": classes, "LE_ENGRAMS": len(tasks), "LE_FEATURES": features,
        "LE_MAX_WORDS": max_words, "LE_INPUT_WORDS": -(-inputs // 64),
    }
    buffer_bytes = (8 * 2 * max_words + 4 * features + 4 * len(tasks) * classes + 4 * classes
                    + (8 * len(tasks) if shortlist is not None else 0))
    header = _HEADER.format(
        defines="\n".join(f"#define {k} {v}" for k, v in defines.items()),
        task_ids=_ints(tasks), buffer_bytes=buffer_bytes)
    conv_defines = "#define LE_TASK_EVIDENCE 1" if task_evidence else ""
    if shortlist is not None:
        conv_defines += f"\n#define LE_SHORTLIST {int(shortlist)}"
    if conv:
        height, width, channels = (list(conv["image_shape"]) + [1])[:3]
        conv_defines = "\n".join(f"#define {k} {v}" for k, v in {
            "LE_CONV": 1, "LE_H": height, "LE_W": width, "LE_C": channels, "LE_K": conv["kernel_size"],
            "LE_POOL": conv["pool"], "LE_FILTERS": conv["filters"],
            "LE_PATCH_WORDS": -(-(conv["kernel_size"] ** 2 * channels) // 64)}.items()) + "\n" + conv_defines
        if conv.get("patch_floor") is not None:
            conv_defines = f"#define LE_PATCH_FLOOR {_float(conv['patch_floor'])}\n" + conv_defines
    source = _SOURCE.format(
        conv_defines=conv_defines, arrays="\n".join(w.lines), engrams=entries,
        projection_scale=_float(scale), lda_weight=_float(net.manifest["lda_weight"]),
        restrict=int(bool(net.manifest["restrict_to_engram_classes"])), empty=_float(runtime.HAS_DATA_ABOVE),
        empty_score=_float(runtime.EMPTY_GROUP_SCORE))
    with open(os.path.join(folder, "engram_model.h"), "w") as f:
        f.write(header)
    with open(os.path.join(folder, "engram_model.c"), "w") as f:
        f.write(source)
    return {"const_bytes": w.const_bytes, "buffer_bytes": buffer_bytes}


_HEADER = """/* A trained engram BNN, written by larq_engrams.c_export.save_c. C99, no heap. */
#ifndef LARQ_ENGRAMS_MODEL_H
#define LARQ_ENGRAMS_MODEL_H
#include <stdint.h>

{defines}

/* The task id of each engram, in order. */
static const int32_t le_task_ids[LE_ENGRAMS] = {{{task_ids}}};

/* Engram `task`'s logits for one input x[LE_INPUTS]; returns their argmax, or -1 for a
 * task without an engram. */
int32_t le_task_logits(const float *x, int32_t task, float *logits);

/* "infer": the router picks the engram; `scores` are the log-probabilities the Keras
 * model returns in "infer" mode. Returns the class; `*task` the engram's task id. */
int32_t le_infer(const float *x, float *scores, int32_t *task);

/* Static working buffers: {buffer_bytes} bytes. */
#endif
"""

_SOURCE = r"""/* Written by larq_engrams.c_export.save_c: see engram_model.h. */
#include <math.h>
#include "engram_model.h"
#include "engram_bits.c"
{conv_defines}

typedef struct {{
    const uint64_t *w0;                 /* first layer: (n_1, words of LE_INPUTS), bit 1 = -1 */
    const float *scale0, *offset0;      /* its BatchNorm as z * scale + offset */
    int32_t hidden;                     /* binary hidden layers after the first */
    const int32_t *widths;              /* n_1 .. n_L */
    const uint64_t *const *w;           /* (n_l, words of n_(l-1)) */
    const int32_t *const *t;            /* integer thresholds */
    const int8_t *const *d;             /* directions */
    const uint64_t *wout;               /* (LE_CLASSES, words of n_L) */
}} le_engram;

{arrays}

static const le_engram engrams[LE_ENGRAMS] = {{
    {engrams}
}};

static uint64_t bits[2][LE_MAX_WORDS];
static float features[LE_FEATURES];
static float groups[LE_ENGRAMS * LE_CLASSES];
static int32_t zout[LE_CLASSES];

static int32_t bit_of(const uint64_t *row, int32_t i) {{ return (int32_t)((row[i >> 6] >> (i & 63)) & 1u); }}

/* sum_i x_i s_i over the sign bits of `row` (a double accumulator: additions only). */
static float signed_sum(const float *x, const uint64_t *row, int32_t n) {{
    double acc = 0.0;
    for (int32_t i = 0; i < n; ++i) acc += bit_of(row, i) ? -(double)x[i] : (double)x[i];
    return (float)acc;
}}

static void engram_logits(const le_engram *e, const float *x, float *logits) {{
    int32_t n = e->widths[0], words = (n + 63) / 64;
    for (int32_t k = 0; k < words; ++k) bits[0][k] = 0;
    for (int32_t j = 0; j < n; ++j) {{
        float zj = signed_sum(x, e->w0 + (int64_t)j * LE_INPUT_WORDS, LE_INPUTS);
        if (!(zj * e->scale0[j] + e->offset0[j] >= 0.0f)) bits[0][j >> 6] |= (uint64_t)1 << (j & 63);
    }}
    int32_t in = 0;
    for (int32_t l = 0; l < e->hidden; ++l) {{
        int32_t n_in = e->widths[l], n_out = e->widths[l + 1];
        le_xnor_threshold_bits(bits[in], e->w[l], 1, n_out, (n_in + 63) / 64, n_in, e->t[l], e->d[l],
                               (n_out + 63) / 64, bits[1 - in]);
        in = 1 - in;
    }}
    int32_t last = e->widths[e->hidden];
    le_xnor_dot(bits[in], e->wout, 1, LE_CLASSES, (last + 63) / 64, last, zout);
    for (int32_t c = 0; c < LE_CLASSES; ++c) logits[c] = (float)zout[c] * out_scale[c] + out_offset[c];
}}

static int32_t argmax(const float *v, int32_t n) {{
    int32_t best = 0;
    for (int32_t i = 1; i < n; ++i) if (v[i] > v[best]) best = i;
    return best;
}}

int32_t le_task_logits(const float *x, int32_t task, float *logits) {{
    for (int32_t k = 0; k < LE_ENGRAMS; ++k) {{
        if (le_task_ids[k] == task) {{
            engram_logits(&engrams[k], x, logits);
            return argmax(logits, LE_CLASSES);
        }}
    }}
    return -1;
}}

static void router_features(const float *x) {{
#ifdef LE_CONV
    /* avgpool(relu(conv(x, filters))): each filter over every k x k window (normalized
       first with LE_PATCH_FLOOR), in place. */
    int32_t grid_h = (LE_H - LE_K + 1) / LE_POOL, grid_w = (LE_W - LE_K + 1) / LE_POOL;
    float patch[LE_K * LE_K * LE_C];
    for (int32_t m = 0; m < LE_FEATURES; ++m) features[m] = 0.0f;
    for (int32_t gi = 0; gi < grid_h; ++gi)
        for (int32_t gj = 0; gj < grid_w; ++gj)
            for (int32_t pi = 0; pi < LE_POOL; ++pi)
                for (int32_t pj = 0; pj < LE_POOL; ++pj) {{
                    int32_t i0 = gi * LE_POOL + pi, j0 = gj * LE_POOL + pj, p = 0;
                    for (int32_t a = 0; a < LE_K; ++a)
                        for (int32_t b = 0; b < LE_K; ++b)
                            for (int32_t c = 0; c < LE_C; ++c)
                                patch[p++] = x[((i0 + a) * LE_W + (j0 + b)) * LE_C + c];
#ifdef LE_PATCH_FLOOR
                    {{ /* the patch normalized for contrast: (u - mean(u)) / sqrt(var(u) + eps) */
                        float mean = 0.0f, var = 0.0f;
                        for (int32_t q = 0; q < p; ++q) mean += patch[q];
                        mean /= (float)p;
                        for (int32_t q = 0; q < p; ++q) var += (patch[q] - mean) * (patch[q] - mean);
                        float inv = 1.0f / sqrtf(var / (float)p + LE_PATCH_FLOOR);
                        for (int32_t q = 0; q < p; ++q) patch[q] = (patch[q] - mean) * inv;
                    }}
#endif
                    for (int32_t f = 0; f < LE_FILTERS; ++f) {{
                        float v = signed_sum(patch, router_bits + (int64_t)f * LE_PATCH_WORDS, LE_K * LE_K * LE_C)
                                  * {projection_scale};
                        if (v > 0.0f) features[(gi * grid_w + gj) * LE_FILTERS + f] += v / (LE_POOL * LE_POOL);
                    }}
                }}
#else
    for (int32_t m = 0; m < LE_FEATURES; ++m) {{
        float v = signed_sum(x, router_bits + (int64_t)m * LE_INPUT_WORDS, LE_INPUTS) * {projection_scale};
        features[m] = v > 0.0f ? v : 0.0f;
    }}
#endif
}}

/* log-probabilities with 1 - eps of the mass on the allowed entries, eps spread over the others. */
static void floored_log_softmax(const float *v, const int32_t *allowed, float *out) {{
    float eps = 1e-3f / LE_CLASSES, top = -1e30f, sum = 0.0f;
    int32_t outside = 0;
    for (int32_t c = 0; c < LE_CLASSES; ++c) if (allowed[c] && v[c] > top) top = v[c];
    for (int32_t c = 0; c < LE_CLASSES; ++c) {{
        if (allowed[c]) sum += expf(v[c] - top); else ++outside;
    }}
    float inside = logf(sum), rest = logf(eps / (float)(outside > 0 ? outside : 1));
    for (int32_t c = 0; c < LE_CLASSES; ++c)
        out[c] = allowed[c] ? v[c] - top - inside + logf(1.0f - eps) : rest;
}}

static void log_softmax(const float *v, float *out) {{
    float top = v[argmax(v, LE_CLASSES)], sum = 0.0f;
    for (int32_t c = 0; c < LE_CLASSES; ++c) sum += expf(v[c] - top);
    for (int32_t c = 0; c < LE_CLASSES; ++c) out[c] = v[c] - top - logf(sum);
}}

#ifdef LE_SHORTLIST
static float means[LE_ENGRAMS], ranked[LE_ENGRAMS];

/* The LE_SHORTLIST-th largest of each engram's mean group score a_s(x): the engrams
 * scoring at least this compete (K M + k C M multiply-adds instead of K C M). */
static float shortlist_threshold(void) {{
    for (int32_t s = 0; s < LE_ENGRAMS; ++s) {{
        float a = router_mean_bias[s];
        const float *k = router_mean_kernel + (int64_t)s * LE_FEATURES;
        for (int32_t m = 0; m < LE_FEATURES; ++m) a += features[m] * k[m];
        means[s] = ranked[s] = a;
    }}
    for (int32_t i = 0; i < LE_SHORTLIST; ++i) {{  /* partial selection sort: the k largest first */
        int32_t top = i;
        for (int32_t j = i + 1; j < LE_ENGRAMS; ++j) if (ranked[j] > ranked[top]) top = j;
        float v = ranked[i]; ranked[i] = ranked[top]; ranked[top] = v;
    }}
    return ranked[LE_SHORTLIST - 1];
}}
#endif

int32_t le_infer(const float *x, float *scores, int32_t *task) {{
    router_features(x);
    int32_t best = 0;
    float best_score = -1e30f;
#ifdef LE_SHORTLIST
    float threshold = shortlist_threshold();
#endif
    for (int32_t g = 0; g < LE_ENGRAMS * LE_CLASSES; ++g) {{
#ifdef LE_SHORTLIST
        if (means[g / LE_CLASSES] < threshold) {{ groups[g] = {empty_score}; continue; }}  /* not shortlisted */
#endif
        float s = router_bias[g];
        const float *k = router_kernel + (int64_t)g * LE_FEATURES;
        for (int32_t m = 0; m < LE_FEATURES; ++m) s += features[m] * k[m];
        groups[g] = s;
        if (s > best_score) {{ best_score = s; best = g / LE_CLASSES; }}
    }}
    *task = le_task_ids[best];
#ifdef LE_TASK_EVIDENCE
    for (int32_t c = 0; c < LE_CLASSES; ++c) {{  /* the chosen task's own class evidence */
        int32_t g = best * LE_CLASSES + c;
        float s = router_class_bias[g];
        const float *k = router_class_kernel + (int64_t)g * LE_FEATURES;
        for (int32_t m = 0; m < LE_FEATURES; ++m) s += features[m] * k[m];
        groups[g] = s;
    }}
#endif
    float logits[LE_CLASSES], log_probs[LE_CLASSES], lda[LE_CLASSES];
    int32_t known[LE_CLASSES], any = 0;
    engram_logits(&engrams[best], x, logits);
    for (int32_t c = 0; c < LE_CLASSES; ++c) {{
        known[c] = engram_classes[best * LE_CLASSES + c];
        any |= known[c];
    }}
    if (!{restrict} && !({lda_weight} > 0.0f)) {{
        for (int32_t c = 0; c < LE_CLASSES; ++c) scores[c] = logits[c];
        return argmax(scores, LE_CLASSES);
    }}
    log_softmax(logits, log_probs);
    if ({lda_weight} > 0.0f) {{
        int32_t has_data[LE_CLASSES];
        for (int32_t c = 0; c < LE_CLASSES; ++c) has_data[c] = groups[best * LE_CLASSES + c] > {empty};
        floored_log_softmax(groups + best * LE_CLASSES, has_data, lda);
        for (int32_t c = 0; c < LE_CLASSES; ++c) log_probs[c] += {lda_weight} * lda[c];
    }}
    if (!{restrict}) {{
        log_softmax(log_probs, scores);
        return argmax(scores, LE_CLASSES);
    }}
    if (!any) for (int32_t c = 0; c < LE_CLASSES; ++c) known[c] = 1;
    floored_log_softmax(log_probs, known, scores);
    return argmax(scores, LE_CLASSES);
}}
"""
