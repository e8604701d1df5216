/* The beam search's common step in one call (service/runtime/beam.py, `_beam_search`), and two more
 * pieces of the host's work between the graphs' runs: the cache's history reordered
 * (reorder_history) and a batch's output layer gathered (take_columns), each below.
 *
 * A step of one sentence decodes in well under a millisecond, and each numpy operation of the
 * host's selection costs microseconds whatever its size: this does the common step's selection
 * and bookkeeping in one pass over the step's candidates. It decides nothing of its own. The rules
 * are beam.py's, which keeps the full selection for every other step and the numpy form of this one
 * where the module is not built; tests/test_common_step.py holds the two to the same hypotheses.
 *
 * select_common(ids, log_probs, scores, hist, k, eos, window, next_rows, last, next_scores, next_hist,
 *               ended_rows, ended_scores, ended_sentences[, history, length, next_ids]) -> (status, ended)
 *   ids [n*beams, >=2k] int64, log_probs [n*beams, >=2k] float32: each row's best continuations
 *   scores [n, beams] float64: each row's score so far; hist [n*beams, L] int64: its tokens so far
 *   writes next_rows [n*k] int64, last [n*k] int64, next_scores [n, k] float64, next_hist [n*k, L+1] int64,
 *   and the first `ended` of ended_rows, ended_scores, ended_sentences [n*k] (int64, float64, int64)
 * Each sentence's 2k best of its beams' candidates in rank order: score descending, then lower token
 * id, then lower beam (beam.py's lexsort). An EOS among the first K ends the row it extends (written
 * to the ended arrays, sentence by sentence, in rank order); any other candidate goes on, the first
 * K of them chosen. Status 0 when the step cannot be taken so (a score of -inf or NaN comes before
 * K candidates go on: beam.py's full selection then takes it; the outputs mean nothing), 1 when it
 * is, 2 when it is unless a chosen token closes a repetition loop: one of them is among the last
 * `window` tokens of the row it extends (the caller asks beam.py's `runaway`; window 0: no guard).
 * Whether a sentence is done once its rows end is the caller's to decide.
 * With history (the cache's int32 [n*k, capacity]), length and next_ids (int64 [n*k, 1], the bound
 * input of the next step), a step taken whole (status 1, no row ended, k rows per sentence already)
 * is also committed: each row's first `length` history positions taken from the row it extends
 * (reorder_history) and its token written to next_ids; status 3 says so.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_CANDIDATES 256 /* beams * 2k at MAX_BEAM = 8: 8 * 16 */

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

/* The struct format of a buffer's items, without its byte-order prefix. */
static const char *item_format(const Py_buffer *view) {
    const char *got = view->format ? view->format : "B";
    return (got[0] == '=' || got[0] == '<' || got[0] == '@') ? got + 1 : got;
}

static int get_buffer(PyObject *obj, Buffer *buffer, const char *name, const char *format, int ndim, int writable) {
    int flags = PyBUF_RECORDS_RO | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &buffer->view, flags) < 0) {
        return -1;
    }
    buffer->held = 1;
    const char *got = item_format(&buffer->view);
    int int64_ok = strcmp(format, "q") == 0 && (strcmp(got, "q") == 0 || (strcmp(got, "l") == 0 && sizeof(long) == 8));
    if (buffer->view.ndim != ndim || !(int64_ok || strcmp(got, format) == 0)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a %d-d array of format %s, got %d-d of %s", name, ndim, format,
                     buffer->view.ndim, got);
        return -1;
    }
    return 0;
}

static void release(Buffer *buffers, int count) {
    for (int i = 0; i < count; i++) {
        if (buffers[i].held) {
            PyBuffer_Release(&buffers[i].view);
        }
    }
}

#define AT(buffer, type, i, j) (*(type *)((char *)(buffer).view.buf + (i) * (buffer).view.strides[0] + (j) * (buffer).view.strides[1]))
#define AT1(buffer, type, i) (*(type *)((char *)(buffer).view.buf + (i) * (buffer).view.strides[0]))

/* Whether candidate a ranks before candidate b: higher score (NaN last), then lower id, then lower beam. */
static int ranks_before(double score_a, int64_t id_a, Py_ssize_t beam_a, double score_b, int64_t id_b, Py_ssize_t beam_b) {
    int nan_a = isnan(score_a), nan_b = isnan(score_b);
    if (nan_a != nan_b) {
        return nan_b;
    }
    if (!nan_a && score_a != score_b) {
        return score_a > score_b;
    }
    if (id_a != id_b) {
        return id_a < id_b;
    }
    return beam_a < beam_b;
}

/* Row i of int32 history [R, capacity] takes the first `length` positions of row rows[i] (int64 [R]), a
 * row of the same sentence (of `beams` rows each). 0, or -1 with an exception set. */
static int reorder_rows(Buffer *history, Buffer *rows, Py_ssize_t beams, Py_ssize_t length) {
    Py_ssize_t count = rows->view.shape[0];
    if (count != history->view.shape[0] || beams < 1 || length < 0 || length > history->view.shape[1] ||
        history->view.strides[1] != sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "reorder_history: the arrays' shapes do not agree");
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t row = AT1(*rows, int64_t, i);
        if (row < 0 || row >= count || row / beams != i / beams) {
            PyErr_SetString(PyExc_ValueError, "a row cannot continue a row of another sentence");
            return -1;
        }
    }
    /* Each sentence's rows are gathered through a copy of its own: a row may be read after it is written. */
    int32_t stack[64 * 64];
    size_t bytes = (size_t)beams * (size_t)length * sizeof(int32_t);
    int32_t *copy = bytes <= sizeof(stack) ? stack : PyMem_Malloc(bytes);
    if (copy == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t first = 0; first < count; first += beams) {
        for (Py_ssize_t j = 0; j < beams && first + j < count; j++) {
            memcpy(copy + j * length, &AT(*history, int32_t, first + j, 0), (size_t)length * sizeof(int32_t));
        }
        for (Py_ssize_t j = 0; j < beams && first + j < count; j++) {
            Py_ssize_t from = AT1(*rows, int64_t, first + j) - first;
            memcpy(&AT(*history, int32_t, first + j, 0), copy + from * length, (size_t)length * sizeof(int32_t));
        }
    }
    if (copy != stack) {
        PyMem_Free(copy);
    }
    return 0;
}

static PyObject *select_common(PyObject *self, PyObject *args) {
    (void)self;
    enum { BUFFERS = 11 };
    PyObject *objects[BUFFERS];
    PyObject *history_object = NULL, *next_ids_object = NULL;
    Py_ssize_t k, window, history_length = 0;
    long long eos;
    if (!PyArg_ParseTuple(args, "OOOOnLnOOOOOOO|OnO", &objects[0], &objects[1], &objects[2], &objects[3], &k, &eos,
                          &window, &objects[4], &objects[5], &objects[6], &objects[7], &objects[8], &objects[9],
                          &objects[10], &history_object, &history_length, &next_ids_object)) {
        return NULL;
    }
    if ((history_object == NULL) != (next_ids_object == NULL)) {
        PyErr_SetString(PyExc_TypeError, "select_common: history, length and next_ids come together");
        return NULL;
    }
    static const char *names[BUFFERS] = {"ids",         "log_probs",    "scores",       "hist",
                                         "next_rows",   "last",         "next_scores",  "next_hist",
                                         "ended_rows",  "ended_scores", "ended_sentences"};
    static const char *formats[BUFFERS] = {"q", "f", "d", "q", "q", "q", "d", "q", "q", "d", "q"};
    static const int ndims[BUFFERS] = {2, 2, 2, 2, 1, 1, 2, 2, 1, 1, 1};
    Buffer b[BUFFERS];
    memset(b, 0, sizeof(b));
    for (int i = 0; i < BUFFERS; i++) {
        if (get_buffer(objects[i], &b[i], names[i], formats[i], ndims[i], i >= 4) < 0) {
            release(b, BUFFERS);
            return NULL;
        }
    }
    Buffer ids = b[0], log_probs = b[1], scores = b[2], hist = b[3];
    Buffer next_rows = b[4], last = b[5], next_scores = b[6], next_hist = b[7];
    Buffer ended_rows = b[8], ended_scores = b[9], ended_sentences = b[10];
    Py_ssize_t n = scores.view.shape[0], beams = scores.view.shape[1], width = 2 * k;
    Py_ssize_t rows = n * beams, length = hist.view.shape[1], candidates = beams * width;
    if (k < 1 || beams < 1 || candidates > MAX_CANDIDATES || ids.view.shape[0] != rows ||
        log_probs.view.shape[0] != rows || ids.view.shape[1] < width || log_probs.view.shape[1] < width ||
        hist.view.shape[0] != rows || next_rows.view.shape[0] != n * k || last.view.shape[0] != n * k ||
        next_scores.view.shape[0] != n || next_scores.view.shape[1] != k || next_hist.view.shape[0] != n * k ||
        next_hist.view.shape[1] != length + 1 || ended_rows.view.shape[0] != n * k ||
        ended_scores.view.shape[0] != n * k || ended_sentences.view.shape[0] != n * k || window < 0) {
        release(b, BUFFERS);
        PyErr_SetString(PyExc_ValueError, "select_common: the arrays' shapes do not agree");
        return NULL;
    }
    int status = 1;
    Py_ssize_t ended = 0;
    double cand[MAX_CANDIDATES];
    int64_t cand_id[MAX_CANDIDATES];
    char taken[MAX_CANDIDATES];
    for (Py_ssize_t s = 0; s < n && status; s++) {
        for (Py_ssize_t c = 0; c < candidates; c++) {
            Py_ssize_t row = s * beams + c / width, j = c % width;
            cand[c] = AT(scores, double, s, c / width) + (double)AT(log_probs, float, row, j);
            cand_id[c] = AT(ids, int64_t, row, j);
            taken[c] = 0;
        }
        /* The sentence's 2K best in rank order, until K go on: an EOS among the first K ends its row. */
        Py_ssize_t going = 0, seen = 0;
        for (Py_ssize_t pick = 0; pick < width && going < k; pick++) {
            Py_ssize_t best = -1;
            for (Py_ssize_t c = 0; c < candidates; c++) {
                if (!taken[c] && (best < 0 || ranks_before(cand[c], cand_id[c], c / width, cand[best], cand_id[best], best / width))) {
                    best = c;
                }
            }
            taken[best] = 1;
            double score = cand[best];
            int64_t token = cand_id[best];
            if (isnan(score) || score == -INFINITY) {
                break; /* every candidate after it is impossible too: fewer than K go on */
            }
            seen++;
            Py_ssize_t parent = s * beams + best / width;
            if (token == eos) {
                if (seen <= k) {
                    AT1(ended_rows, int64_t, ended) = parent;
                    AT1(ended_scores, double, ended) = score;
                    AT1(ended_sentences, int64_t, ended) = s;
                    ended++;
                }
                continue;
            }
            Py_ssize_t out = s * k + going;
            AT1(next_rows, int64_t, out) = parent;
            AT1(last, int64_t, out) = token;
            AT(next_scores, double, s, going) = score;
            for (Py_ssize_t t = 0; t < length; t++) {
                int64_t previous = AT(hist, int64_t, parent, t);
                AT(next_hist, int64_t, out, t) = previous;
                if (t >= length - window && previous == token) {
                    status = 2;
                }
            }
            AT(next_hist, int64_t, out, length) = token;
            going++;
        }
        if (going < k) {
            status = 0;
        }
    }
    if (status == 1 && ended == 0 && beams == k && history_object != NULL) {
        Buffer commit[2];
        memset(commit, 0, sizeof(commit));
        if (get_buffer(history_object, &commit[0], "history", "i", 2, 1) < 0 ||
            get_buffer(next_ids_object, &commit[1], "next_ids", "q", 2, 1) < 0) {
            release(commit, 2);
            release(b, BUFFERS);
            return NULL;
        }
        if (commit[1].view.shape[0] != n * k || commit[1].view.shape[1] != 1) {
            PyErr_SetString(PyExc_ValueError, "select_common: next_ids is not one column of the rows");
            release(commit, 2);
            release(b, BUFFERS);
            return NULL;
        }
        if (reorder_rows(&commit[0], &next_rows, k, history_length) < 0) {
            release(commit, 2);
            release(b, BUFFERS);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < n * k; i++) {
            AT(commit[1], int64_t, i, 0) = AT1(last, int64_t, i);
        }
        release(commit, 2);
        status = 3;
    }
    release(b, BUFFERS);
    return Py_BuildValue("(in)", status, status ? ended : (Py_ssize_t)0);
}

/* reorder_history(history, rows, beams, length): row i of int32 history [R, capacity] takes the first
 * `length` positions of row rows[i] (int64 [R]), a row of the same sentence (of `beams` rows each);
 * service/runtime/kv_cache.py, SelfAttentionCache.reorder. */
static PyObject *reorder_history(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[2];
    Py_ssize_t beams, length;
    if (!PyArg_ParseTuple(args, "OOnn", &objects[0], &objects[1], &beams, &length)) {
        return NULL;
    }
    Buffer b[2];
    memset(b, 0, sizeof(b));
    if (get_buffer(objects[0], &b[0], "history", "i", 2, 1) < 0 || get_buffer(objects[1], &b[1], "rows", "q", 1, 0) < 0 ||
        reorder_rows(&b[0], &b[1], beams, length) < 0) {
        release(b, 2);
        return NULL;
    }
    release(b, 2);
    Py_RETURN_NONE;
}

/* take_columns(rows, vocab, out): out [D, U] = rows[vocab].T, for rows [V, D] and vocab int64 [U] (each
 * in [0, V)), rows and out both int8 or both float32, C-contiguous; service/runtime/shortlist.py, a
 * batch's output layer. The step reads the projection's columns [D, U]; gathered from its rows, a
 * batch reads U·D values rather than all V·D of the columns' layout, and 16 rows at a time are
 * written transposed. */
#define TRANSPOSE_BLOCK 16
#if defined(__SSE2__)
#include <emmintrin.h>
/* Bytes d..d+15 of rows src[0..15], written transposed: byte c of row j to out[c * stride + j]. */
static void transpose_16x16(const int8_t *const *src, size_t d, int8_t *out, size_t stride) {
    __m128i rows[16], pairs[8][2], quads[4][4], octets[2][8];
    for (int j = 0; j < 16; j++) {
        rows[j] = _mm_loadu_si128((const __m128i *)(src[j] + d));
    }
    for (int p = 0; p < 8; p++) { /* rows 2p, 2p+1; columns 0-7, 8-15 */
        pairs[p][0] = _mm_unpacklo_epi8(rows[2 * p], rows[2 * p + 1]);
        pairs[p][1] = _mm_unpackhi_epi8(rows[2 * p], rows[2 * p + 1]);
    }
    for (int q = 0; q < 4; q++) { /* rows 4q to 4q+3; columns 4k to 4k+3 */
        for (int h = 0; h < 2; h++) {
            quads[q][2 * h] = _mm_unpacklo_epi16(pairs[2 * q][h], pairs[2 * q + 1][h]);
            quads[q][2 * h + 1] = _mm_unpackhi_epi16(pairs[2 * q][h], pairs[2 * q + 1][h]);
        }
    }
    for (int o = 0; o < 2; o++) { /* rows 8o to 8o+7; columns 2m, 2m+1 */
        for (int k = 0; k < 4; k++) {
            octets[o][2 * k] = _mm_unpacklo_epi32(quads[2 * o][k], quads[2 * o + 1][k]);
            octets[o][2 * k + 1] = _mm_unpackhi_epi32(quads[2 * o][k], quads[2 * o + 1][k]);
        }
    }
    for (int m = 0; m < 8; m++) {
        _mm_storeu_si128((__m128i *)(out + (size_t)(2 * m) * stride), _mm_unpacklo_epi64(octets[0][m], octets[1][m]));
        _mm_storeu_si128((__m128i *)(out + (size_t)(2 * m + 1) * stride), _mm_unpackhi_epi64(octets[0][m], octets[1][m]));
    }
}
#endif

static void take_columns_int8(const int8_t *rows, size_t width, const int64_t *vocab, size_t count, int8_t *out) {
    size_t u = 0;
    for (; u + TRANSPOSE_BLOCK <= count; u += TRANSPOSE_BLOCK) {
        const int8_t *src[TRANSPOSE_BLOCK];
        for (int j = 0; j < TRANSPOSE_BLOCK; j++) {
            src[j] = rows + (size_t)vocab[u + j] * width;
        }
        size_t d = 0;
#if defined(__SSE2__)
        for (; d + 16 <= width; d += 16) {
            transpose_16x16(src, d, out + d * count + u, count);
        }
#endif
        for (; d < width; d++) {
            for (int j = 0; j < TRANSPOSE_BLOCK; j++) {
                out[d * count + u + (size_t)j] = src[j][d];
            }
        }
    }
    for (; u < count; u++) {
        const int8_t *src = rows + (size_t)vocab[u] * width;
        for (size_t d = 0; d < width; d++) {
            out[d * count + u] = src[d];
        }
    }
}

static void take_columns_float(const float *rows, size_t width, const int64_t *vocab, size_t count, float *out) {
    for (size_t u = 0; u < count; u += TRANSPOSE_BLOCK) {
        size_t block = count - u < TRANSPOSE_BLOCK ? count - u : TRANSPOSE_BLOCK;
        const float *src[TRANSPOSE_BLOCK];
        for (size_t j = 0; j < block; j++) {
            src[j] = rows + (size_t)vocab[u + j] * width;
        }
        for (size_t d = 0; d < width; d++) {
            for (size_t j = 0; j < block; j++) {
                out[d * count + u + j] = src[j][d];
            }
        }
    }
}

static PyObject *take_columns(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[3];
    if (!PyArg_ParseTuple(args, "OOO", &objects[0], &objects[1], &objects[2])) {
        return NULL;
    }
    /* float32 rows, or else int8 ones, and out of the same */
    Py_buffer peek;
    if (PyObject_GetBuffer(objects[0], &peek, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    const char *format = strcmp(item_format(&peek), "f") == 0 ? "f" : "b";
    PyBuffer_Release(&peek);
    Buffer b[3];
    memset(b, 0, sizeof(b));
    if (get_buffer(objects[0], &b[0], "rows", format, 2, 0) < 0 || get_buffer(objects[1], &b[1], "vocab", "q", 1, 0) < 0 ||
        get_buffer(objects[2], &b[2], "out", format, 2, 1) < 0) {
        release(b, 3);
        return NULL;
    }
    Buffer rows = b[0], vocab = b[1], out = b[2];
    Py_ssize_t count = vocab.view.shape[0], width = rows.view.shape[1], item = rows.view.itemsize;
    if (out.view.shape[0] != width || out.view.shape[1] != count || !PyBuffer_IsContiguous(&rows.view, 'C') ||
        !PyBuffer_IsContiguous(&vocab.view, 'C') || !PyBuffer_IsContiguous(&out.view, 'C')) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "take_columns: out must be [rows' width, vocab's length]; all C-contiguous");
        return NULL;
    }
    const int64_t *ids = (const int64_t *)vocab.view.buf;
    for (Py_ssize_t u = 0; u < count; u++) {
        if (ids[u] < 0 || ids[u] >= rows.view.shape[0]) {
            release(b, 3);
            PyErr_Format(PyExc_IndexError, "take_columns: vocabulary id %lld outside the %zd rows", (long long)ids[u],
                         rows.view.shape[0]);
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    if (item == 1) {
        take_columns_int8(rows.view.buf, (size_t)width, ids, (size_t)count, out.view.buf);
    } else {
        take_columns_float(rows.view.buf, (size_t)width, ids, (size_t)count, out.view.buf);
    }
    Py_END_ALLOW_THREADS
    release(b, 3);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"select_common", select_common, METH_VARARGS, "The beam search's common step (see the module's source)."},
    {"reorder_history", reorder_history, METH_VARARGS, "The self-attention cache's rows reordered in place."},
    {"take_columns", take_columns, METH_VARARGS, "A batch's output layer columns from the projection's rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_common_step", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__common_step(void) { return PyModule_Create(&module); }
