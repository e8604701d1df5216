/* The beam search's common step in one call (service/runtime/beam.py, `_beam_search`), such steps
 * run one after another with the graph's runs between them (common_steps), and three more pieces of
 * the host's work between the graphs' runs: the cache's history reordered (reorder_history), a
 * batch's output layer gathered (take_columns) and a shortlisted step's top-k (top_k), each below.
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

#include "_attention.h"
#include "_cross_attention_exact.h"
#include "_projection.h"
#include "_vector_exp.h"

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

/* One sentence-batch step's selection: the rules of select_common above, over the first `length`
 * tokens of each row of hist (its other columns unread), writing columns 0..length of next_hist.
 * The status (0, 1 or 2); *ended_out: how many rows ended. The callers check the shapes. */
static int select_step(const Buffer *ids, const Buffer *log_probs, const Buffer *scores, const Buffer *hist,
                       Py_ssize_t length, Py_ssize_t k, int64_t eos, Py_ssize_t window, Buffer *next_rows, Buffer *last,
                       Buffer *next_scores, Buffer *next_hist, Buffer *ended_rows, Buffer *ended_scores,
                       Buffer *ended_sentences, Py_ssize_t *ended_out) {
    Py_ssize_t n = scores->view.shape[0], beams = scores->view.shape[1], width = 2 * k;
    Py_ssize_t candidates = beams * width;
    int status = 1;
    Py_ssize_t ended = 0;
    double cand[MAX_CANDIDATES];
    int64_t cand_id[MAX_CANDIDATES];
    char taken[MAX_CANDIDATES];
    for (Py_ssize_t s = 0; s < n && status; s++) {
        for (Py_ssize_t c = 0; c < candidates; c++) {
            Py_ssize_t row = s * beams + c / width, j = c % width;
            cand[c] = AT(*scores, double, s, c / width) + (double)AT(*log_probs, float, row, j);
            cand_id[c] = AT(*ids, int64_t, row, j);
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
                    AT1(*ended_rows, int64_t, ended) = parent;
                    AT1(*ended_scores, double, ended) = score;
                    AT1(*ended_sentences, int64_t, ended) = s;
                    ended++;
                }
                continue;
            }
            Py_ssize_t out = s * k + going;
            AT1(*next_rows, int64_t, out) = parent;
            AT1(*last, int64_t, out) = token;
            AT(*next_scores, double, s, going) = score;
            for (Py_ssize_t t = 0; t < length; t++) {
                int64_t previous = AT(*hist, int64_t, parent, t);
                AT(*next_hist, int64_t, out, t) = previous;
                if (t >= length - window && previous == token) {
                    status = 2;
                }
            }
            AT(*next_hist, int64_t, out, length) = token;
            going++;
        }
        if (going < k) {
            status = 0;
        }
    }
    *ended_out = status ? ended : 0;
    return status;
}

/* A step taken whole, committed: each row's first `length` history positions taken from the row it
 * extends, and its token written to next_ids [n*k, 1]. 0, or -1 with an exception set. */
static int commit_step(Buffer *history, Buffer *next_rows, Py_ssize_t k, Py_ssize_t length, Buffer *next_ids, Buffer *last) {
    Py_ssize_t rows = next_rows->view.shape[0];
    if (next_ids->view.shape[0] != rows || next_ids->view.shape[1] != 1) {
        PyErr_SetString(PyExc_ValueError, "select_common: next_ids is not one column of the rows");
        return -1;
    }
    if (reorder_rows(history, next_rows, k, length) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < rows; i++) {
        AT(*next_ids, int64_t, i, 0) = AT1(*last, int64_t, i);
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
    Py_ssize_t ended = 0;
    int status = select_step(&ids, &log_probs, &scores, &hist, length, k, eos, window, &next_rows, &last, &next_scores,
                             &next_hist, &ended_rows, &ended_scores, &ended_sentences, &ended);
    if (status == 1 && ended == 0 && beams == k && history_object != NULL) {
        Buffer commit[2];
        memset(commit, 0, sizeof(commit));
        if (get_buffer(history_object, &commit[0], "history", "i", 2, 1) < 0 ||
            get_buffer(next_ids_object, &commit[1], "next_ids", "q", 2, 1) < 0 ||
            commit_step(&commit[0], &next_rows, k, history_length, &commit[1], &last) < 0) {
            release(commit, 2);
            release(b, BUFFERS);
            return NULL;
        }
        release(commit, 2);
        status = 3;
    }
    release(b, BUFFERS);
    return Py_BuildValue("(in)", status, ended);
}

/* beam.py's `runaway`: whether `token` after the first `length` tokens of row `row` of hist repeats
 * some n-gram back to back more than max_repeats[n] times (int64 [N+1]; 0: no rule for that n). */
static int closes_loop(const Buffer *hist, Py_ssize_t row, Py_ssize_t length, int64_t token, const Buffer *max_repeats) {
    for (Py_ssize_t n = 1; n < max_repeats->view.shape[0]; n++) {
        int64_t limit = AT1(*max_repeats, int64_t, n);
        Py_ssize_t span = n * (Py_ssize_t)(limit + 1);
        if (limit < 1 || span > length + 1) {
            continue;
        }
        /* the last `span` of the row and the token: each equal to the one n before it */
        int repeats = 1;
        for (Py_ssize_t i = n; i < span && repeats; i++) {
            Py_ssize_t at = length + 1 - span + i, before = at - n;
            int64_t here = at == length ? token : AT(*hist, int64_t, row, at);
            repeats = here == AT(*hist, int64_t, row, before);
        }
        if (repeats) {
            return 1;
        }
    }
    return 0;
}

/* Rows whose logits the host makes at a time: a large batch's logits [R, P] outgrow the caches, which
 * the tile's stay in until ranked and normalised; its scratch may hold one tile's rows. An fp32 step's
 * tile is larger: its packed rows outgrow the caches themselves and are read again for every tile. */
#define PROJECTED_TILE 16
#define FLOAT_PROJECTED_TILE 64

/* A step's scores for the host's top-k (top_k, below): its log_probs; or its logits (`normalised`), each
 * sentence's bias added here, normalised, and EOS's log-prob written; or, for a step that leaves its output
 * projection to the host too (`projected`, and normalised), its rows' int8 codes (or an fp32 step's rows:
 * `floating`, in `codes`), multiplied here by the union's packed columns into `scores` (scratch logits)
 * first. */
typedef struct {
    Buffer scores, vocab;
    int normalised, projected, floating;
    Buffer codes, row_scale, packed, col_sums, col_scale, bias, eos_out;
    Py_ssize_t eos_position;
    int kernel;
} HostScores;
static int get_host_scores(PyObject *scores, PyObject *vocab, PyObject *projection, HostScores *host);
static void release_host_scores(HostScores *host);
static int top_k_shapes_agree(const HostScores *host, const Buffer *values, const Buffer *ids);
static void rows_top_k(HostScores *host, Buffer *values, Buffer *ids);

/* common_steps(run, binding, steps, census, census_at_start, position, top_ids, top_log_probs, history,
 *              next_ids, length, k, eos, window, hist, scores, hist_a, hist_b, scores_a, scores_b,
 *              rows_a, rows_b, last_a, last_b, ended_rows, ended_scores, ended_sentences,
 *              finished, kept_sentences, kept_scores, kept_lengths, kept_tokens, max_repeats[, log_probs,
 *              vocab[, projection]]) -> (committed, ran, length, kept, status, ended)
 * Up to `steps` decoder steps of a search at k rows a sentence whose next ids are bound, each run by
 * `run(binding)` (the session's run_with_iobinding, which gives the interpreter's lock back while the
 * graph runs), then selected and committed here: what beam.py's loop does one step at a time
 * (OnnxModel.step_again, select_common and the hypotheses that end), without its Python between the
 * steps. Before each run the bound position (int32 0-d) is the cache's length; after it, position
 * `length` of every row holds its own key and value (SelfAttentionCache.advance, here on history
 * [n*k, capacity] int32) and the length grows by one. The run's outputs top_ids and top_log_probs
 * [n*k, >=2k] are selected as select_common selects, from hist [n*k, >=L] (its first L columns, L
 * given by hist's shape) and scores [n, k]. A step is taken here where K candidates of every sentence
 * go on and no sentence reaches K ended hypotheses: finished [n] int64 counts each sentence's, and
 * each row that ends is kept (its sentence, score, how many tokens it had, and those tokens in the
 * first columns of a row of kept_tokens [n*k, >= L + steps] int64, in the order ended), as beam.py
 * would append it; and where the repetition guard is on (window > 0), no token that goes on closes a
 * runaway loop (max_repeats [N+1] int64: beam.py's MAX_REPEATS by n, as `runaway` reads it).
 * Each step taken writes its history, scores, rows and last tokens to the _a arrays, the next to the
 * _b ones, and so on in turn (a step's input is the other one's output): hist_a and hist_b are
 * [n*k, >= L + steps + 1] int64, neither of them the memory of `hist` that the first step reads,
 * except that hist_b may be. It stops before a run where the cache is full, or where the census
 * ([1] int64: _Runs.census) differs from census_at_start, except before the first (another search
 * started or ended: the caller picks the session again); and after a run whose step it does not take
 * (ran: 1): nothing of that step is committed but the cache's advance, and its selection is left
 * as select_common leaves it, for the caller's rules (status and ended as select_common returns
 * them; its rows, last tokens, scores and histories in the arrays of the pair the step after the
 * last committed one writes, its ended rows in ended_rows, ended_scores and ended_sentences).
 * committed: the steps taken, whose last wrote the _a arrays if odd; length: the cache's length
 * after them all; kept: the rows that ended in them.
 * With log_probs [n*k, U] float32 and vocab [U] int64 (a step that leaves its top-k to the host), each
 * run's top_ids and top_log_probs are taken from its log_probs here (top_k, below) before the selection;
 * with a projection too, from the logits made here from its rows' codes (top_k's projection), where
 * log_probs is the scratch [n*k, U] they are written to.
 */
static PyObject *common_steps(PyObject *self, PyObject *args) {
    (void)self;
    enum { BUFFERS = 25 };
    PyObject *run, *binding, *o[BUFFERS], *scored[3] = {Py_None, Py_None, Py_None};
    Py_ssize_t steps, length, k, window;
    long long census_at_start, eos;
    if (!PyArg_ParseTuple(args, "OOnOLOOOOOnnLnOOOOOOOOOOOOOOOOOOO|OOO", &run, &binding, &steps, &o[0], &census_at_start,
                          &o[1], &o[2], &o[3], &o[4], &o[5], &length, &k, &eos, &window, &o[6], &o[7], &o[8], &o[9],
                          &o[10], &o[11], &o[12], &o[13], &o[14], &o[15], &o[16], &o[17], &o[18], &o[19], &o[20],
                          &o[21], &o[22], &o[23], &o[24], &scored[0], &scored[1], &scored[2])) {
        return NULL;
    }
    static const char *names[BUFFERS] = {
        "census",   "position", "top_ids",  "top_log_probs", "history",      "next_ids",        "hist",     "scores",
        "hist_a",   "hist_b",   "scores_a", "scores_b",      "rows_a",       "rows_b",          "last_a",   "last_b",
        "ended_rows", "ended_scores", "ended_sentences", "finished", "kept_sentences", "kept_scores", "kept_lengths",
        "kept_tokens", "max_repeats"};
    static const char *formats[BUFFERS] = {"q", "i", "q", "f", "i", "q", "q", "d", "q", "q", "d", "d",
                                           "q", "q", "q", "q", "q", "d", "q", "q", "q", "d", "q", "q", "q"};
    static const int ndims[BUFFERS] = {1, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1};
    static const int writable[BUFFERS] = {0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0};
    Buffer b[BUFFERS];
    memset(b, 0, sizeof(b));
    HostScores host; /* where the host takes the top-k */
    memset(&host, 0, sizeof(host));
    int host_top_k = scored[0] != Py_None;
#define RELEASE_ALL() (release(b, BUFFERS), release_host_scores(&host))
    for (int i = 0; i < BUFFERS; i++) {
        if (get_buffer(o[i], &b[i], names[i], formats[i], ndims[i], writable[i]) < 0) {
            RELEASE_ALL();
            return NULL;
        }
    }
    if (host_top_k && get_host_scores(scored[0], scored[1], scored[2], &host) < 0) {
        RELEASE_ALL();
        return NULL;
    }
    Buffer *census = &b[0], *position = &b[1], *top_ids = &b[2], *top_log_probs = &b[3], *history = &b[4];
    Buffer *next_ids = &b[5], *hist = &b[6], *scores = &b[7];
    Buffer *hists[2] = {&b[8], &b[9]}, *scoring[2] = {&b[10], &b[11]}, *parents[2] = {&b[12], &b[13]};
    Buffer *lasts[2] = {&b[14], &b[15]}, *ended_rows = &b[16], *ended_scores = &b[17], *ended_sentences = &b[18];
    Buffer *finished = &b[19], *kept_sentences = &b[20], *kept_scores = &b[21], *kept_lengths = &b[22];
    Buffer *kept_tokens = &b[23], *max_repeats = &b[24];
    Py_ssize_t n = scores->view.shape[0], rows = n * k, capacity = history->view.shape[1];
    Py_ssize_t hist_length = hist->view.shape[1];
    int shapes_agree = k >= 1 && 2 * k * k <= MAX_CANDIDATES && scores->view.shape[1] == k && census->view.shape[0] >= 1 &&
                       top_ids->view.shape[0] == rows && top_log_probs->view.shape[0] == rows &&
                       top_ids->view.shape[1] >= 2 * k && top_log_probs->view.shape[1] >= 2 * k &&
                       history->view.shape[0] == rows && history->view.strides[1] == sizeof(int32_t) &&
                       next_ids->view.shape[0] == rows && next_ids->view.shape[1] == 1 && hist->view.shape[0] == rows &&
                       ended_rows->view.shape[0] == rows && ended_scores->view.shape[0] == rows &&
                       ended_sentences->view.shape[0] == rows && finished->view.shape[0] == n &&
                       kept_sentences->view.shape[0] == rows && kept_scores->view.shape[0] == rows &&
                       kept_lengths->view.shape[0] == rows &&
                       kept_tokens->view.shape[0] == rows && kept_tokens->view.shape[1] >= hist_length + steps &&
                       window >= 0 && steps >= 0 && length >= 0;
    for (int i = 0; i < 2 && shapes_agree; i++) {
        shapes_agree = hists[i]->view.shape[0] == rows && hists[i]->view.shape[1] >= hist_length + steps + 1 &&
                       scoring[i]->view.shape[0] == n && scoring[i]->view.shape[1] == k &&
                       parents[i]->view.shape[0] == rows && lasts[i]->view.shape[0] == rows;
    }
    if (shapes_agree && host_top_k) {
        shapes_agree = (host.projected || host.scores.view.shape[0] == rows) &&
                       top_k_shapes_agree(&host, top_log_probs, top_ids);
    }
    if (!shapes_agree || hists[0]->view.buf == hist->view.buf) {
        RELEASE_ALL();
        PyErr_SetString(PyExc_ValueError, "common_steps: the arrays' shapes do not agree");
        return NULL;
    }
    Py_ssize_t committed = 0, kept = 0, ran_ended = 0;
    int ran = 0, ran_status = 0;
    const Buffer *from_hist = hist, *from_scores = scores;
    while (committed < steps && length < capacity) {
        if (committed > 0 && *(const int64_t *)census->view.buf != census_at_start) {
            break;
        }
        *(int32_t *)position->view.buf = (int32_t)length;
        PyObject *result = PyObject_CallOneArg(run, binding);
        if (result == NULL) {
            RELEASE_ALL();
            return NULL;
        }
        Py_DECREF(result);
        if (PyErr_CheckSignals() < 0) { /* Ctrl-C in a search on the main thread stops it here */
            RELEASE_ALL();
            return NULL;
        }
        if (host_top_k) {
            Py_BEGIN_ALLOW_THREADS
            rows_top_k(&host, top_log_probs, top_ids);
            Py_END_ALLOW_THREADS
        }
        for (Py_ssize_t r = 0; r < rows; r++) { /* SelfAttentionCache.advance */
            AT(*history, int32_t, r, length) = (int32_t)(r % k);
        }
        length++;
        int to = (int)(committed % 2);
        Py_ssize_t tokens = hist_length + committed, ended = 0;
        int status = select_step(top_ids, top_log_probs, from_scores, from_hist, tokens, k, eos, window, parents[to],
                                 lasts[to], scoring[to], hists[to], ended_rows, ended_scores, ended_sentences, &ended);
        /* A token that goes on among its row's last `window` (status 2): the step is taken here unless
         * one of them closes a runaway loop (beam.py's `_runaway_among`). */
        int take = status != 0;
        for (Py_ssize_t i = 0; status == 2 && take && i < rows; i++) {
            int64_t token = AT1(*lasts[to], int64_t, i);
            take = !closes_loop(from_hist, AT1(*parents[to], int64_t, i), tokens, token, max_repeats);
        }
        /* The rows that end, by sentence: taken here only where none reaches K. */
        for (Py_ssize_t e = 0; take && e < ended;) {
            int64_t sentence = AT1(*ended_sentences, int64_t, e);
            Py_ssize_t count = 0;
            for (; e < ended && AT1(*ended_sentences, int64_t, e) == sentence; e++) {
                count++;
            }
            take = AT1(*finished, int64_t, sentence) + count < k;
        }
        if (!take) {
            ran = 1;
            ran_status = status;
            ran_ended = ended;
            break;
        }
        for (Py_ssize_t e = 0; e < ended; e++, kept++) {
            int64_t sentence = AT1(*ended_sentences, int64_t, e), row = AT1(*ended_rows, int64_t, e);
            AT1(*finished, int64_t, sentence) += 1;
            AT1(*kept_sentences, int64_t, kept) = sentence;
            AT1(*kept_scores, double, kept) = AT1(*ended_scores, double, e);
            AT1(*kept_lengths, int64_t, kept) = tokens;
            for (Py_ssize_t t = 0; t < tokens; t++) {
                AT(*kept_tokens, int64_t, kept, t) = AT(*from_hist, int64_t, row, t);
            }
        }
        if (commit_step(history, parents[to], k, length, next_ids, lasts[to]) < 0) {
            RELEASE_ALL();
            return NULL;
        }
        from_hist = hists[to];
        from_scores = scoring[to];
        committed++;
    }
    RELEASE_ALL();
    return Py_BuildValue("(ninnin)", committed, ran, length, kept, ran_status, ran_ended);
#undef RELEASE_ALL
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

/* move_rows(storage, old, new, length): storage[new[i], :, :length] = storage[old[i], :, :length] for
 * each i, storage float32 [rows, heads, capacity, depth] C-contiguous, old and new int64 [n] in [0,
 * rows), new strictly ascending and every new[i] on the same side of old[i] (all at or before, or all
 * at or after): then no row is written before it is read, taken in order of new (ascending where
 * rows move to lower rows, descending where they move to higher ones). A sentence's rows moved in the cache
 * (service/runtime/kv_cache.py, _move): each head's positions one copy, where numpy's fancy
 * assignment gathers the rows into a new array first. Returns False, moving nothing, where the rows
 * do not meet that order (the caller then copies them as numpy does). */
static PyObject *move_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[3];
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "OOOn", &objects[0], &objects[1], &objects[2], &length)) {
        return NULL;
    }
    Buffer b[3];
    memset(b, 0, sizeof(b));
    if (get_buffer(objects[0], &b[0], "storage", "f", 4, 1) < 0 || get_buffer(objects[1], &b[1], "old", "q", 1, 0) < 0 ||
        get_buffer(objects[2], &b[2], "new", "q", 1, 0) < 0) {
        release(b, 3);
        return NULL;
    }
    const Py_ssize_t rows = b[0].view.shape[0], heads = b[0].view.shape[1], capacity = b[0].view.shape[2];
    const Py_ssize_t depth = b[0].view.shape[3], n = b[1].view.shape[0];
    if (!PyBuffer_IsContiguous(&b[0].view, 'C') || b[2].view.shape[0] != n || length < 0 || length > capacity) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "move_rows: a C-contiguous storage, as many new rows as old, a length within it");
        return NULL;
    }
    int down = 0, up = 0, ordered = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t from = AT1(b[1], int64_t, i), to = AT1(b[2], int64_t, i);
        if (from < 0 || from >= rows || to < 0 || to >= rows) {
            release(b, 3);
            PyErr_SetString(PyExc_ValueError, "move_rows: a row out of the storage's range");
            return NULL;
        }
        down |= to < from;
        up |= to > from;
        ordered &= i == 0 || to > AT1(b[2], int64_t, i - 1);
    }
    if (!ordered || (down && up)) {
        release(b, 3);
        Py_RETURN_FALSE;
    }
    float *storage = b[0].view.buf;
    const size_t head_floats = (size_t)(capacity * depth), bytes = sizeof(float) * (size_t)(length * depth);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        const Py_ssize_t i = down ? k : n - 1 - k;
        const int64_t from = AT1(b[1], int64_t, i), to = AT1(b[2], int64_t, i);
        for (Py_ssize_t h = 0; h < heads && from != to; h++) {
            memcpy(storage + ((size_t)to * (size_t)heads + (size_t)h) * head_floats,
                   storage + ((size_t)from * (size_t)heads + (size_t)h) * head_floats, bytes);
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 3);
    Py_RETURN_TRUE;
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

/* top_k(log_probs, vocab, values, ids): each row's best k of log_probs [R, U] float32, best first (a
 * higher value, NaN last, then the lower position), into values [R, k] float32 and ids [R, k] int64,
 * each the vocabulary id of its position (vocab [U] int64): what a TopK node of the step gave, for a
 * step whose top-k runs here (export/shortlist.py).
 * A row's largest value in each block of TOP_K_BLOCK columns, whose k-th largest is a bound that the
 * top k reach; then the values at or above it in the blocks that reach it, in position order, ranked.
 * Where that leaves fewer than k (NaN among the best) or too many (ties at the bound), the row is
 * ranked in one pass that inserts each value above the k-th best so far. */
#define TOP_K_BLOCK 16
#define TOP_K_MAX_BLOCKS 8192
#define TOP_K_MAX_REACHED 512

/* values[0..count) and positions ranked (best first) with one more, dropping the last where full
 * (count == k). `in_order`: values that are not NaN, given in position order, so that an equal value
 * stays behind and a plain comparison ranks them; else ranks_before's order (NaN last, then position). */
static inline void rank_in(float value, Py_ssize_t position, float *values, Py_ssize_t *positions, Py_ssize_t *count,
                           Py_ssize_t k, int in_order) {
    Py_ssize_t at = *count < k ? (*count)++ : k - 1;
    for (; at > 0 && (in_order ? value > values[at - 1]
                               : ranks_before(value, position, 0, values[at - 1], positions[at - 1], 0)); at--) {
        values[at] = values[at - 1];
        positions[at] = positions[at - 1];
    }
    values[at] = value;
    positions[at] = position;
}

static void row_top_k_each(const float *row, Py_ssize_t width, Py_ssize_t k, float *values, Py_ssize_t *positions) {
    Py_ssize_t filled = 0;
    for (Py_ssize_t j = 0; j < width; j++) {
        if (filled < k || ranks_before(row[j], j, 0, values[k - 1], positions[k - 1], 0)) {
            rank_in(row[j], j, values, positions, &filled, k, 0);
        }
    }
}

/* The largest value of each whole block of the row into maxima, NaN left out (-inf for a block of NaN
 * alone). */
static void block_maxima(const float *row, Py_ssize_t blocks, float *maxima) {
#if defined(__SSE2__) && TOP_K_BLOCK == 16
    /* MAXPS gives its second operand where either is NaN: the running maximum, never NaN itself */
    const __m128 lowest = _mm_set1_ps(-INFINITY);
    for (Py_ssize_t b = 0; b < blocks; b++) {
        const float *at = row + b * TOP_K_BLOCK;
        __m128 m = _mm_max_ps(_mm_loadu_ps(at), lowest);
        m = _mm_max_ps(_mm_loadu_ps(at + 4), m);
        m = _mm_max_ps(_mm_loadu_ps(at + 8), m);
        m = _mm_max_ps(_mm_loadu_ps(at + 12), m);
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        maxima[b] = _mm_cvtss_f32(m);
    }
#else
    for (Py_ssize_t b = 0; b < blocks; b++) {
        float largest = -INFINITY;
        for (Py_ssize_t i = b * TOP_K_BLOCK; i < (b + 1) * TOP_K_BLOCK; i++) {
            largest = row[i] > largest ? row[i] : largest; /* a NaN compares false */
        }
        maxima[b] = largest;
    }
#endif
}

/* The two-pass ranking (above) from the row's block maxima; 0 where the row needs the one-pass one. */
static int row_top_k_from_maxima_each(const float *row, Py_ssize_t width, Py_ssize_t k, const float *maxima,
                                      float *values, Py_ssize_t *positions) {
    Py_ssize_t blocks = width / TOP_K_BLOCK;
    if (blocks < k || blocks > TOP_K_MAX_BLOCKS) {
        return 0;
    }
    float largest[MAX_CANDIDATES]; /* the k largest maxima so far, largest first */
    Py_ssize_t which[MAX_CANDIDATES], filled = 0;
    largest[k - 1] = -INFINITY; /* written over before it is read: blocks >= k */
    for (Py_ssize_t b = 0; b < blocks; b++) {
        if (filled < k || maxima[b] > largest[k - 1]) {
            rank_in(maxima[b], b, largest, which, &filled, k, 1);
        }
    }
    float bound = largest[k - 1]; /* at least k values reach it: the top k do */
    float reached[TOP_K_MAX_REACHED];
    Py_ssize_t at[TOP_K_MAX_REACHED], count = 0;
    for (Py_ssize_t b = 0; b <= blocks; b++) { /* the blocks that reach it, then the columns after them */
        if (b < blocks && !(maxima[b] >= bound)) {
            continue;
        }
        if (count > TOP_K_MAX_REACHED - TOP_K_BLOCK) {
            return 0;
        }
        Py_ssize_t end = b < blocks ? (b + 1) * TOP_K_BLOCK : width;
        for (Py_ssize_t j = b * TOP_K_BLOCK; j < end; j++) { /* each written, kept where it reaches the bound */
            reached[count] = row[j];
            at[count] = j;
            count += row[j] >= bound;
        }
    }
    if (count < k) { /* NaN among the best k */
        return 0;
    }
    filled = 0;
    for (Py_ssize_t i = 0; i < count; i++) { /* in position order: an equal value stays behind */
        if (filled < k || reached[i] > values[k - 1]) {
            rank_in(reached[i], at[i], values, positions, &filled, k, 1);
        }
    }
    return 1;
}

/* The same, by vector instructions where the CPU has them (below). */
static int row_top_k_from_maxima(const float *row, Py_ssize_t width, Py_ssize_t k, const float *maxima, float *values,
                                 Py_ssize_t *positions);

/* The two-pass ranking of a row (block maxima made here); 0 where the row needs the one-pass one. */
static int row_top_k_bounded(const float *row, Py_ssize_t width, Py_ssize_t k, float *values, Py_ssize_t *positions) {
    Py_ssize_t blocks = width / TOP_K_BLOCK;
    if (blocks < k || blocks > TOP_K_MAX_BLOCKS) {
        return 0;
    }
    float maxima[TOP_K_MAX_BLOCKS];
    block_maxima(row, blocks, maxima);
    return row_top_k_from_maxima(row, width, k, maxima, values, positions);
}

/* The sum of exp(row[j] - top) over a row's values above -inf (NaN left out), for a row whose largest
 * value is `top`: the log-softmax's normaliser. Each exp as Cephes' expf computes it (_vector_exp.h),
 * summed in 16 float lanes with AVX-512, in 8 with AVX2 and FMA, where the CPU has them; else each in
 * double precision. */
#if defined(__x86_64__) && defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* The columns from j on, one at a time in double precision: a row's tail after its whole lanes. */
static double sum_exp_from(const float *row, Py_ssize_t j, Py_ssize_t width, float top) {
    double sum = 0.0;
    for (; j < width; j++) {
        sum += row[j] > -INFINITY ? exp((double)(row[j] - top)) : 0.0;
    }
    return sum;
}

/* Each lane's 16 floats summed over the row's whole 16-float blocks, then the lanes in order, in double
 * (with the tail's exps, as above): exp(v - top) where v > -inf, else 0. */
__attribute__((target("avx512f"))) static double sum_exp_avx512(const float *row, Py_ssize_t width, float top) {
    const __m512 shift = _mm512_set1_ps(top), none = _mm512_set1_ps(-INFINITY);
    __m512 sums = _mm512_setzero_ps();
    Py_ssize_t j = 0;
    for (; j + 16 <= width; j += 16) {
        const __m512 v = _mm512_loadu_ps(row + j);
        sums = _mm512_add_ps(sums, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, none, _CMP_GT_OQ),
                                                       exp_avx512(_mm512_sub_ps(v, shift))));
    }
    float sum_lanes[16];
    _mm512_storeu_ps(sum_lanes, sums);
    double sum = 0.0;
    for (int i = 0; i < 16; i++) {
        sum += sum_lanes[i];
    }
    return sum + sum_exp_from(row, j, width, top);
}

/* sum_exp_avx512's sum in AVX2's vectors: 16 lanes as two halves, each lane's sum and the lanes' order
 * as there, so that a CPU without AVX-512 normalises a row as one with it does, to the bit. */
__attribute__((target("avx2,fma"))) static double sum_exp_avx2(const float *row, Py_ssize_t width, float top) {
    const __m256 shift = _mm256_set1_ps(top), none = _mm256_set1_ps(-INFINITY);
    __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps();
    Py_ssize_t j = 0;
    for (; j + 16 <= width; j += 16) {
        const __m256 v = _mm256_loadu_ps(row + j), w = _mm256_loadu_ps(row + j + 8);
        const __m256 e = exp_avx2(_mm256_sub_ps(v, shift)), f = exp_avx2(_mm256_sub_ps(w, shift));
        low = _mm256_add_ps(low, _mm256_and_ps(e, _mm256_cmp_ps(v, none, _CMP_GT_OQ)));
        high = _mm256_add_ps(high, _mm256_and_ps(f, _mm256_cmp_ps(w, none, _CMP_GT_OQ)));
    }
    float sum_lanes[16];
    _mm256_storeu_ps(sum_lanes, low);
    _mm256_storeu_ps(sum_lanes + 8, high);
    double sum = 0.0;
    for (int i = 0; i < 16; i++) {
        sum += sum_lanes[i];
    }
    return sum + sum_exp_from(row, j, width, top);
}

/* A row's bias added, and the largest value of each of its whole blocks (block_maxima's, NaN left out)
 * taken in the same pass, into maxima where they fit (TOP_K_MAX_BLOCKS). */
__attribute__((target("avx512f"))) static void add_bias_avx512(float *row, const float *bias, Py_ssize_t width,
                                                                  float *maxima) {
    const __m512 lowest = _mm512_set1_ps(-INFINITY);
    Py_ssize_t blocks = width / TOP_K_BLOCK, b = 0;
    for (; b < blocks; b++) {
        __m512 v = _mm512_add_ps(_mm512_loadu_ps(row + b * TOP_K_BLOCK), _mm512_loadu_ps(bias + b * TOP_K_BLOCK));
        _mm512_storeu_ps(row + b * TOP_K_BLOCK, v);
        if (b < TOP_K_MAX_BLOCKS) { /* VMAXPS gives its second operand where either is NaN */
            maxima[b] = _mm512_reduce_max_ps(_mm512_max_ps(v, lowest));
        }
    }
    for (Py_ssize_t j = blocks * TOP_K_BLOCK; j < width; j++) {
        row[j] += bias[j];
    }
}

/* The two-pass ranking of row_top_k_from_maxima_each with the best k (at most 16) held in one vector,
 * largest first, ties in position order: a value that beats the k-th goes in after the lanes at or above
 * it (a prefix of the `filled` lanes: they are in order), those below it moving down a lane; and the
 * values that reach the bound are gathered a block at a time by a compressing store. The same bound,
 * values and positions, without a branch per lane; 0 where the row needs the one-pass ranking. */
#define RANK_LANES 16
__attribute__((target("avx512f"))) static inline __m512 rank_in_lanes(__m512 best, Py_ssize_t filled, float value,
                                                                       __m512i *at, int32_t position) {
    const __m512i down = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0); /* lane i: i - 1 */
    __m512 v = _mm512_set1_ps(value);
    __mmask16 ahead = _mm512_cmp_ps_mask(best, v, _CMP_GE_OQ) & (__mmask16)((1u << filled) - 1u);
    __mmask16 here = (__mmask16)((unsigned)ahead + 1u); /* the lane after the prefix */
    best = _mm512_mask_mov_ps(_mm512_permutexvar_ps(down, best), ahead, best);
    *at = _mm512_mask_mov_epi32(_mm512_permutexvar_epi32(down, *at), ahead, *at);
    *at = _mm512_mask_mov_epi32(*at, here, _mm512_set1_epi32(position));
    return _mm512_mask_mov_ps(best, here, v);
}

/* The best k (at most RANK_LANES) of values[0..count) (count >= k), in position order, into one vector, with
 * their positions (`positions`; all 0 where NULL) into *at: the first k as they come, then each that beats
 * the k-th. */
__attribute__((target("avx512f"))) static __m512 best_in_lanes(const float *values, const int32_t *positions,
                                                                 Py_ssize_t count, Py_ssize_t k, __m512i *at) {
    float lanes[RANK_LANES];
    __m512 best = _mm512_set1_ps(-INFINITY);
    *at = _mm512_setzero_si512();
    Py_ssize_t i = 0;
    for (; i < k; i++) {
        best = rank_in_lanes(best, i, values[i], at, positions ? positions[i] : 0);
    }
    _mm512_storeu_ps(lanes, best);
    for (; i < count; i++) { /* an equal value stays behind */
        if (values[i] > lanes[k - 1]) {
            best = rank_in_lanes(best, k, values[i], at, positions ? positions[i] : 0);
            _mm512_storeu_ps(lanes, best);
        }
    }
    return best;
}

__attribute__((target("avx512f"))) static int row_top_k_from_maxima_avx512(const float *row, Py_ssize_t width,
                                                                             Py_ssize_t k, const float *maxima,
                                                                             float *values, Py_ssize_t *positions) {
    Py_ssize_t blocks = width / TOP_K_BLOCK;
    if (blocks < k || blocks > TOP_K_MAX_BLOCKS || k > RANK_LANES || width > INT32_MAX) {
        return 0;
    }
    float lanes[RANK_LANES];
    int32_t lane_at[RANK_LANES];
    __m512i at;
    _mm512_storeu_ps(lanes, best_in_lanes(maxima, NULL, blocks, k, &at)); /* the k largest maxima */
    const float bound = lanes[k - 1]; /* at least k values reach it: the top k do */
    const __m512 bounds = _mm512_set1_ps(bound);
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    float reached[TOP_K_MAX_REACHED];
    int32_t reached_at[TOP_K_MAX_REACHED];
    Py_ssize_t count = 0;
    for (Py_ssize_t b = 0; b < blocks; b++) { /* the blocks that reach it: their values at or above it, in order */
        if (!(maxima[b] >= bound)) {
            continue;
        }
        if (count > TOP_K_MAX_REACHED - TOP_K_BLOCK) {
            return 0;
        }
        __m512 v = _mm512_loadu_ps(row + b * TOP_K_BLOCK);
        __mmask16 keep = _mm512_cmp_ps_mask(v, bounds, _CMP_GE_OQ);
        _mm512_mask_compressstoreu_ps(reached + count, keep, v);
        _mm512_mask_compressstoreu_epi32(reached_at + count, keep,
                                         _mm512_add_epi32(iota, _mm512_set1_epi32((int32_t)(b * TOP_K_BLOCK))));
        count += __builtin_popcount(keep);
    }
    for (Py_ssize_t j = blocks * TOP_K_BLOCK; j < width; j++) { /* the columns after the whole blocks */
        if (row[j] >= bound) {
            if (count >= TOP_K_MAX_REACHED) {
                return 0;
            }
            reached[count] = row[j];
            reached_at[count++] = (int32_t)j;
        }
    }
    if (count < k) { /* NaN among the best k */
        return 0;
    }
    _mm512_storeu_ps(lanes, best_in_lanes(reached, reached_at, count, k, &at));
    _mm512_storeu_si512(lane_at, at);
    for (Py_ssize_t i = 0; i < k; i++) {
        values[i] = lanes[i];
        positions[i] = lane_at[i];
    }
    return 1;
}


static void add_bias(float *row, const float *bias, Py_ssize_t width) {
    Py_ssize_t j = 0;
    for (; j + 4 <= width; j += 4) {
        _mm_storeu_ps(row + j, _mm_add_ps(_mm_loadu_ps(row + j), _mm_loadu_ps(bias + j)));
    }
    for (; j < width; j++) {
        row[j] += bias[j];
    }
}

/* A row's sum of exp(row[j] - top) over its finite values, in the vectors `vectors` names (2 AVX-512,
 * 1 AVX2 with FMA, 0 plain C): the log-softmax's normaliser. */
static double sum_exp_in(int vectors, const float *row, Py_ssize_t width, float top) {
    switch (vectors) {
    case 2:
        return sum_exp_avx512(row, width, top);
    case 1:
        return sum_exp_avx2(row, width, top);
    default:
        return sum_exp_from(row, 0, width, top);
    }
}

static double sum_exp(const float *row, Py_ssize_t width, float top) {
    return sum_exp_in(float_vectors(), row, width, top);
}

/* A row's bias added; 1 where its block maxima were taken in the same pass, into maxima. */
static int add_bias_with_maxima(float *row, const float *bias, Py_ssize_t width, float *maxima) {
    if (float_vectors() == 2) {
        add_bias_avx512(row, bias, width, maxima);
        return 1;
    }
    add_bias(row, bias, width);
    return 0;
}

static int row_top_k_from_maxima(const float *row, Py_ssize_t width, Py_ssize_t k, const float *maxima, float *values,
                                 Py_ssize_t *positions) {
    return float_vectors() == 2 && k <= RANK_LANES
               ? row_top_k_from_maxima_avx512(row, width, k, maxima, values, positions)
               : row_top_k_from_maxima_each(row, width, k, maxima, values, positions);
}
#else
static int row_top_k_from_maxima(const float *row, Py_ssize_t width, Py_ssize_t k, const float *maxima, float *values,
                                 Py_ssize_t *positions) {
    return row_top_k_from_maxima_each(row, width, k, maxima, values, positions);
}

static void add_bias(float *row, const float *bias, Py_ssize_t width) {
    for (Py_ssize_t j = 0; j < width; j++) {
        row[j] += bias[j];
    }
}

static double sum_exp(const float *row, Py_ssize_t width, float top) {
    double sum = 0.0;
    for (Py_ssize_t j = 0; j < width; j++) { /* as sum_exp_from, which only x86 builds use */
        sum += row[j] > -INFINITY ? exp((double)(row[j] - top)) : 0.0;
    }
    return sum;
}

static int add_bias_with_maxima(float *row, const float *bias, Py_ssize_t width, float *maxima) {
    (void)maxima;
    add_bias(row, bias, width);
    return 0;
}
#endif

/* get_host_scores: scores [R, U] float32 and vocab [U] int64; with a projection (not None), the tuple
 * (codes [R, D] uint8, row_scale [R, 1] float32, packed [P * D] int8, col_sums [P] int32, col_scale [P]
 * float32, bias [S, U] float32, eos_position, eos_out [R] float32, kernel), or for an fp32 step (rows
 * [R, D] float32, packed [P * D] float32, bias, eos_position, eos_out, kernel), where scores is [R, P] or
 * one tile of it (top_k_shapes_agree), written, P being U rounded up to a whole PROJECTION_GROUP (the
 * columns after U are padding). */
static int get_host_scores(PyObject *scores, PyObject *vocab, PyObject *projection, HostScores *host) {
    host->normalised = projection != Py_None;
    if (get_buffer(scores, &host->scores, host->normalised ? "logits" : "log_probs", "f", 2, host->normalised) < 0 ||
        get_buffer(vocab, &host->vocab, "vocab", "q", 1, 0) < 0) {
        return -1;
    }
    if (!host->normalised) {
        return 0;
    }
    PyObject *o[7] = {NULL};
    host->projected = !(PyTuple_Check(projection) && PyTuple_GET_SIZE(projection) == 3);
    host->floating = PyTuple_Check(projection) && PyTuple_GET_SIZE(projection) == 6;
    if (!host->projected) { /* a step's own logits: (bias, eos_position, eos_out) */
        if (!PyArg_ParseTuple(projection, "OnO;logits: (bias, eos_position, eos_out)", &o[5], &host->eos_position,
                              &o[6])) {
            return -1;
        }
        if (get_buffer(o[5], &host->bias, "bias", "f", 2, 0) < 0 ||
            get_buffer(o[6], &host->eos_out, "eos_out", "f", 1, 1) < 0) {
            return -1;
        }
        return 0;
    }
    if (host->floating) { /* an fp32 step's: (rows, packed, bias, eos_position, eos_out, kernel) */
        if (!PyArg_ParseTuple(projection, "OOOnOi;projection: (rows, packed, bias, eos_position, eos_out, kernel)",
                              &o[0], &o[2], &o[5], &host->eos_position, &o[6], &host->kernel)) {
            return -1;
        }
    } else if (!PyTuple_Check(projection) ||
               !PyArg_ParseTuple(projection, "OOOOOOnOi;projection: (codes, row_scale, packed, col_sums, col_scale, "
                                             "bias, eos_position, eos_out, kernel)",
                                 &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &host->eos_position, &o[6], &host->kernel)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "projection: a tuple");
        }
        return -1;
    }
    const char *value = host->floating ? "f" : "b"; /* the rows' and the packed columns' items */
    if (get_buffer(o[0], &host->codes, host->floating ? "rows" : "codes", host->floating ? "f" : "B", 2, 0) < 0 ||
        get_buffer(o[2], &host->packed, "packed", value, 1, 0) < 0 || get_buffer(o[5], &host->bias, "bias", "f", 2, 0) < 0 ||
        get_buffer(o[6], &host->eos_out, "eos_out", "f", 1, 1) < 0) {
        return -1;
    }
    if (!host->floating && (get_buffer(o[1], &host->row_scale, "row_scale", "f", 2, 0) < 0 ||
                            get_buffer(o[3], &host->col_sums, "col_sums", "i", 1, 0) < 0 ||
                            get_buffer(o[4], &host->col_scale, "col_scale", "f", 1, 0) < 0)) {
        return -1;
    }
    return 0;
}

static void release_host_scores(HostScores *host) {
    Buffer *all[] = {&host->scores, &host->vocab, &host->codes, &host->row_scale, &host->packed,
                     &host->col_sums, &host->col_scale, &host->bias, &host->eos_out};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        release(all[i], 1);
    }
}

/* The columns a step's scores rank: vocab's, U (a projection's scores may be padded beyond them). */
static Py_ssize_t scored_width(const HostScores *host) { return host->vocab.view.shape[0]; }

/* Whether the scores [R, U] (contiguous rows), vocab [U], values and ids [R, k] agree, 1 <= k <= U; where
 * normalised, bias [S, U] (R a multiple of S), eos_out [R], 0 <= eos_position < U, all contiguous; and a
 * projection's arrays, contiguous, where given: scores [R, P] or one tile of its rows, codes (or an fp32
 * step's rows) [R, D], packed [P * D], P the least multiple of PROJECTION_GROUP >= U, and a kernel the CPU
 * runs; for an int8 step also row_scale [R, 1], col_sums and col_scale [P], D a multiple of
 * PROJECTION_DEPTH. */
static int top_k_shapes_agree(const HostScores *host, const Buffer *values, const Buffer *ids) {
    Py_ssize_t rows = host->scores.view.shape[0], width = scored_width(host), k = values->view.shape[1];
    Py_ssize_t padded = host->projected ? (width + PROJECTION_GROUP - 1) / PROJECTION_GROUP * PROJECTION_GROUP : width;
    Py_ssize_t rows_in = rows; /* a projection's rows, each its own scratch row or one tile's */
    if (host->projected) {
        rows = host->codes.view.shape[0];
        Py_ssize_t tile = host->floating ? FLOAT_PROJECTED_TILE : PROJECTED_TILE;
        rows_in = rows_in == rows || rows_in == (rows < tile ? rows : tile) ? rows : -1;
    }
    int agree = k >= 1 && k <= width && k <= MAX_CANDIDATES && host->scores.view.shape[1] == padded && rows_in == rows &&
                values->view.shape[0] == rows && ids->view.shape[0] == rows && ids->view.shape[1] == k &&
                host->scores.view.strides[1] == sizeof(float);
    if (agree && host->normalised) {
        Py_ssize_t sentences = host->bias.view.shape[0];
        agree = PyBuffer_IsContiguous(&host->scores.view, 'C') && PyBuffer_IsContiguous(&host->bias.view, 'C') &&
                PyBuffer_IsContiguous(&host->eos_out.view, 'C') && sentences >= 1 && rows % sentences == 0 &&
                host->bias.view.shape[1] == width && host->eos_out.view.shape[0] == rows && host->eos_position >= 0 &&
                host->eos_position < width;
    }
    if (agree && host->projected) {
        Py_ssize_t depth = host->codes.view.shape[1];
        agree = PyBuffer_IsContiguous(&host->codes.view, 'C') && PyBuffer_IsContiguous(&host->packed.view, 'C') &&
                depth >= 1 && host->packed.view.shape[0] == padded * depth && projection_kernel_runs(host->kernel);
    }
    if (agree && host->projected && !host->floating) { /* an int8 step's scales and column sums */
        agree = PyBuffer_IsContiguous(&host->row_scale.view, 'C') && PyBuffer_IsContiguous(&host->col_sums.view, 'C') &&
                PyBuffer_IsContiguous(&host->col_scale.view, 'C') && host->row_scale.view.shape[0] == rows &&
                host->row_scale.view.shape[1] == 1 && host->codes.view.shape[1] % PROJECTION_DEPTH == 0 &&
                host->col_sums.view.shape[0] == padded && host->col_scale.view.shape[0] == padded;
    }
    return agree;
}

/* Each row's best k into values and ids (top_k_shapes_agree); where normalised, each row's sentence's bias
 * added (row r, sentence r / (R / S)) and its values normalised by its log-sum-exp; with a projection, each
 * row's logits made first (PROJECTED_TILE rows at a time, into the scratch's rows or its one tile). Runs
 * without the interpreter's lock. */
static void rows_top_k(HostScores *host, Buffer *values, Buffer *ids) {
    const Buffer *scores = &host->scores;
    Py_ssize_t rows = values->view.shape[0], width = scored_width(host), k = values->view.shape[1];
    Py_ssize_t beams = host->normalised ? rows / host->bias.view.shape[0] : 1;
    int reused = scores->view.shape[0] < rows; /* a projection's scratch of one tile */
    Py_ssize_t tile_rows = host->floating ? FLOAT_PROJECTED_TILE : PROJECTED_TILE;
    for (Py_ssize_t r = 0; r < rows; r++) {
        Py_ssize_t at = reused ? r % tile_rows : r;
        if (host->projected && r % tile_rows == 0) { /* the next tile's logits, ranked while in cache */
            Py_ssize_t padded = scores->view.shape[1], depth = host->codes.view.shape[1];
            Py_ssize_t tile = rows - r < tile_rows ? rows - r : tile_rows;
            if (host->floating) {
                projection_logits_float(host->kernel, &AT(host->codes, float, r, 0), depth, tile, depth,
                                        host->packed.view.buf, padded, &AT(*scores, float, at, 0), padded);
            } else {
                projection_logits(host->kernel, &AT(host->codes, uint8_t, r, 0), depth,
                                  &AT(host->row_scale, float, r, 0), tile, depth, host->packed.view.buf,
                                  host->col_sums.view.buf, host->col_scale.view.buf, padded, &AT(*scores, float, at, 0),
                                  padded);
            }
        }
        float best[MAX_CANDIDATES];
        Py_ssize_t positions[MAX_CANDIDATES];
        float *row = &AT(*scores, float, at, 0);
        float maxima[TOP_K_MAX_BLOCKS];
        int ranked = host->normalised && add_bias_with_maxima(row, &AT(host->bias, float, r / beams, 0), width, maxima)
                         ? row_top_k_from_maxima(row, width, k, maxima, best, positions)
                         : row_top_k_bounded(row, width, k, best, positions);
        if (!ranked) {
            row_top_k_each(row, width, k, best, positions);
        }
        float normaliser = 0.0f;
        if (host->normalised) { /* log-sum-exp, by the largest value (NaN last: the first unless all are NaN) */
            float top = best[0];
            normaliser = top > -INFINITY ? (float)((double)top + log(sum_exp(row, width, top))) : top;
            AT1(host->eos_out, float, r) = row[host->eos_position] - normaliser;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            AT(*values, float, r, i) = best[i] - normaliser;
            AT(*ids, int64_t, r, i) = AT1(host->vocab, int64_t, positions[i]);
        }
    }
}

/* top_k(scores, vocab, values, ids[, projection]): each row's best k of a step's log-probs, scores [R, U]
 * float32 (see above). With (bias, eos_position, eos_out), scores are the step's logits, written over: each
 * row takes its sentence's bias, is normalised as LogSoftmax normalises (the bias's -inf columns left out),
 * and eos_out [R] gets its log-prob at eos_position (a step that leaves its log-softmax to the host,
 * export/shortlist.py). With a projection (get_host_scores), scores is scratch for the logits made from the
 * rows' codes (or an fp32 step's rows), then the same: a step that leaves its output projection to the host
 * (service/runtime/projection.py). */
static PyObject *top_k(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[4], *projection = Py_None;
    if (!PyArg_ParseTuple(args, "OOOO|O", &objects[0], &objects[1], &objects[2], &objects[3], &projection)) {
        return NULL;
    }
    HostScores host;
    memset(&host, 0, sizeof(host));
    Buffer b[2];
    memset(b, 0, sizeof(b));
    if (get_host_scores(objects[0], objects[1], projection, &host) < 0 ||
        get_buffer(objects[2], &b[0], "values", "f", 2, 1) < 0 || get_buffer(objects[3], &b[1], "ids", "q", 2, 1) < 0) {
        release_host_scores(&host);
        release(b, 2);
        return NULL;
    }
    if (!top_k_shapes_agree(&host, &b[0], &b[1])) {
        release_host_scores(&host);
        release(b, 2);
        PyErr_SetString(PyExc_ValueError, "top_k: scores [R, U] with contiguous rows, vocab [U], values and ids "
                                          "[R, k], 1 <= k <= U; a projection's arrays as the source says");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rows_top_k(&host, &b[0], &b[1]);
    Py_END_ALLOW_THREADS
    release_host_scores(&host);
    release(b, 2);
    Py_RETURN_NONE;
}

/* pack_projection(weight, packed): a batch's int8 columns, weight [D, U] C-contiguous (the step's
 * layout), packed for top_k's projection into packed [P * D] int8 (_projection.h), P being U rounded up
 * to a whole PROJECTION_GROUP; D a multiple of PROJECTION_DEPTH. Or an fp32 step's, weight [U, D] float32
 * (its layout), into packed [P * D] float32. */
static PyObject *pack_projection(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[2];
    if (!PyArg_ParseTuple(args, "OO", &objects[0], &objects[1])) {
        return NULL;
    }
    Buffer b[2];
    memset(b, 0, sizeof(b));
    Py_buffer probe;
    if (PyObject_GetBuffer(objects[0], &probe, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    int floating = strcmp(item_format(&probe), "f") == 0; /* an fp32 step's rows of the union, [U, D] */
    PyBuffer_Release(&probe);
    const char *format = floating ? "f" : "b";
    if (get_buffer(objects[0], &b[0], "weight", format, 2, 0) < 0 ||
        get_buffer(objects[1], &b[1], "packed", format, 1, 1) < 0) {
        release(b, 2);
        return NULL;
    }
    Py_ssize_t depth = b[0].view.shape[floating ? 1 : 0], width = b[0].view.shape[floating ? 0 : 1];
    Py_ssize_t padded = (width + PROJECTION_GROUP - 1) / PROJECTION_GROUP * PROJECTION_GROUP;
    if ((!floating && depth % PROJECTION_DEPTH) || b[1].view.shape[0] != depth * padded ||
        !PyBuffer_IsContiguous(&b[0].view, 'C') || !PyBuffer_IsContiguous(&b[1].view, 'C')) {
        release(b, 2);
        PyErr_Format(PyExc_ValueError, "pack_projection: weight [D, U] int8 (D a multiple of %d) or [U, D] float32, and "
                     "packed [P * D] of the same type, P being U rounded up to a multiple of %d, both C-contiguous",
                     PROJECTION_DEPTH, PROJECTION_GROUP);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (floating) {
        projection_pack_float(b[0].view.buf, depth, width, b[1].view.buf);
    } else {
        projection_pack(b[0].view.buf, depth, width, b[1].view.buf);
    }
    Py_END_ALLOW_THREADS
    release(b, 2);
    Py_RETURN_NONE;
}

/* self_attention(q, k, v, bias, key_cache, value_cache, indirection, length, beam_width, out[, kernel])
 * One decoder layer's self-attention for a step (_attention.h): q, k, v, out float32 [rows, 1, width];
 * bias float32 [3 * width]; key_cache, value_cache float32 [rows, heads, capacity, depth], width =
 * heads * depth, written at position `length`; indirection int32 [rows / beams, beams, capacity];
 * length int32 (0-d or [1], the positions written), beam_width int32 [1] (beams). All C-contiguous.
 * kernel: attention_kernel's or a narrower one (tests); by default the widest for the heads' depth. */
static PyObject *self_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[10];
    int kernel = -1;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO|i", &objects[0], &objects[1], &objects[2], &objects[3], &objects[4],
                          &objects[5], &objects[6], &objects[7], &objects[8], &objects[9], &kernel)) {
        return NULL;
    }
    static const char *names[10] = {"q", "k", "v", "bias", "key_cache", "value_cache", "indirection", "length",
                                    "beam_width", "out"};
    static const char *formats[10] = {"f", "f", "f", "f", "f", "f", "i", "i", "i", "f"};
    static const int dims[10] = {3, 3, 3, 1, 4, 4, 3, 0, 1, 3};
    static const int writable[10] = {0, 0, 0, 0, 1, 1, 0, 0, 0, 1};
    Buffer b[10];
    memset(b, 0, sizeof(b));
    for (int i = 0; i < 10; i++) {
        int ndim = dims[i];
        if (i == 7 && PyObject_CheckBuffer(objects[i])) { /* length: 0-d or [1] */
            Py_buffer peek;
            if (PyObject_GetBuffer(objects[i], &peek, PyBUF_RECORDS_RO) < 0) {
                release(b, 10);
                return NULL;
            }
            ndim = peek.ndim == 1 && peek.shape[0] == 1 ? 1 : 0;
            PyBuffer_Release(&peek);
        }
        if (get_buffer(objects[i], &b[i], names[i], formats[i], ndim, writable[i]) < 0) {
            release(b, 10);
            return NULL;
        }
        if (!PyBuffer_IsContiguous(&b[i].view, 'C')) {
            release(b, 10);
            PyErr_Format(PyExc_ValueError, "self_attention: %s is not C-contiguous", names[i]);
            return NULL;
        }
    }
    const Py_ssize_t rows = b[0].view.shape[0], width = b[0].view.shape[2];
    const Py_ssize_t heads = b[4].view.shape[1], capacity = b[4].view.shape[2], depth = b[4].view.shape[3];
    const Py_ssize_t length = *(const int32_t *)b[7].view.buf, beams = *(const int32_t *)b[8].view.buf;
    int agree = beams >= 1 && rows % beams == 0 && heads * depth == width && b[3].view.shape[0] == 3 * width &&
                b[6].view.shape[0] * beams == rows && b[6].view.shape[1] == beams && b[6].view.shape[2] == capacity &&
                b[8].view.shape[0] == 1;
    for (int i = 1; i < 10 && agree; i++) {
        if (i == 1 || i == 2 || i == 9) {
            agree = b[i].view.shape[0] == rows && b[i].view.shape[1] == 1 && b[i].view.shape[2] == width;
        } else if (i == 4 || i == 5) {
            agree = b[i].view.shape[0] == rows && b[i].view.shape[1] == heads && b[i].view.shape[2] == capacity &&
                    b[i].view.shape[3] == depth;
        }
    }
    if (!agree || b[0].view.shape[1] != 1) {
        release(b, 10);
        PyErr_SetString(PyExc_ValueError, "self_attention: the arrays' shapes do not agree");
        return NULL;
    }
    if (length < 0 || length >= capacity) {
        release(b, 10);
        PyErr_Format(PyExc_ValueError, "self_attention: the cache holds %zd positions, %zd written", capacity, length);
        return NULL;
    }
    float *scratch = PyMem_RawMalloc((size_t)(length + 1 + depth) * sizeof(float));
    if (scratch == NULL) {
        release(b, 10);
        return PyErr_NoMemory();
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    const int widest = attention_kernel(depth);
    status = attention_step(kernel < 0 || kernel > widest ? widest : kernel, b[0].view.buf, b[1].view.buf, b[2].view.buf, b[3].view.buf,
                            b[4].view.buf, b[5].view.buf, b[6].view.buf, rows, heads, depth, capacity, length, beams,
                            b[9].view.buf, scratch);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(b, 10);
    if (status < 0) {
        PyErr_SetString(PyExc_ValueError, "self_attention: the indirection names a beam outside the sentence's");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A float32 array of any shape, C-contiguous (writable where asked): the query and output of
 * cross_attention, whose rows may be laid out by row or by sentence and beam. */
static int get_floats(PyObject *obj, Buffer *buffer, const char *name, int writable) {
    if (PyObject_GetBuffer(obj, &buffer->view, PyBUF_RECORDS_RO | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        return -1;
    }
    buffer->held = 1;
    if (strcmp(item_format(&buffer->view), "f") != 0 || !PyBuffer_IsContiguous(&buffer->view, 'C')) {
        PyErr_Format(PyExc_TypeError, "cross_attention: %s is not a C-contiguous float32 array", name);
        return -1;
    }
    return 0;
}

/* cross_attention(q, keys, values, mask, out[, kernel])
 * One decoder layer's cross-attention for a step (_attention.h): keys, values float32 [sentences,
 * heads, length, depth]; mask int64 [sentences, length] or None; q and out float32 of sentences *
 * beams * heads * depth values each (rows by sentence, then beam), of any shape. All C-contiguous.
 * kernel: attention_kernel's or a narrower one (tests); by default the widest for the heads' depth;
 * EXACT_CROSS_KERNEL: onnxruntime's own order of operations on an AVX-512 CPU (_cross_attention_exact.h),
 * where exact_cross_attention() says the CPU has it (AVX-512, or AVX2 with FMA); EXACT_CROSS_KERNEL_AVX2:
 * the same in AVX2's vectors (tests). */
static PyObject *cross_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[5];
    int kernel = -1;
    if (!PyArg_ParseTuple(args, "OOOOO|i", &objects[0], &objects[1], &objects[2], &objects[3], &objects[4], &kernel)) {
        return NULL;
    }
    Buffer b[5];
    memset(b, 0, sizeof(b));
    static const char *names[4] = {"q", "keys", "values", "mask"};
    const int masked = objects[3] != Py_None;
    int got = get_floats(objects[0], &b[0], "q", 0) == 0 && get_buffer(objects[1], &b[1], "keys", "f", 4, 0) == 0 &&
              get_buffer(objects[2], &b[2], "values", "f", 4, 0) == 0 &&
              (!masked || get_buffer(objects[3], &b[3], "mask", "q", 2, 0) == 0) &&
              get_floats(objects[4], &b[4], "out", 1) == 0;
    for (int i = 1; i < 4 && got; i++) {
        if ((i < 3 || masked) && !PyBuffer_IsContiguous(&b[i].view, 'C')) {
            PyErr_Format(PyExc_ValueError, "cross_attention: %s is not C-contiguous", names[i]);
            got = 0;
        }
    }
    if (!got) {
        release(b, 5);
        return NULL;
    }
    const Py_ssize_t sentences = b[1].view.shape[0], heads = b[1].view.shape[1], length = b[1].view.shape[2];
    const Py_ssize_t depth = b[1].view.shape[3], width = heads * depth;
    const Py_ssize_t floats = b[0].view.len / (Py_ssize_t)sizeof(float);
    int agree = sentences > 0 && width > 0 && length > 0 && floats % (sentences * width) == 0 &&
                b[4].view.len == b[0].view.len;
    for (int d = 0; d < 4 && agree; d++) {
        agree = b[2].view.shape[d] == b[1].view.shape[d];
    }
    if (agree && masked) {
        agree = b[3].view.shape[0] == sentences && b[3].view.shape[1] == length;
    }
    if (!agree) {
        release(b, 5);
        PyErr_SetString(PyExc_ValueError, "cross_attention: the arrays' shapes do not agree");
        return NULL;
    }
    const int exact = kernel == EXACT_CROSS_KERNEL || kernel == EXACT_CROSS_KERNEL_AVX2;
    const int vectors = kernel == EXACT_CROSS_KERNEL_AVX2 ? EXACT_AVX2 : cross_attention_exact_available();
    if (exact && (vectors == 0 || vectors > cross_attention_exact_available())) {
        release(b, 5);
        PyErr_SetString(PyExc_ValueError, "cross_attention: this CPU has no exact kernel in those vectors");
        return NULL;
    }
    const size_t scratch_bytes = exact ? sizeof(float) * (size_t)cross_attention_exact_scratch(depth, length)
                                       : (size_t)length * (2 * sizeof(float) + sizeof(int32_t));
    float *scratch = PyMem_RawMalloc(scratch_bytes);
    if (scratch == NULL) {
        release(b, 5);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    const Py_ssize_t beams = floats / (sentences * width);
    if (exact) {
        cross_attention_exact(vectors, b[0].view.buf, b[1].view.buf, b[2].view.buf, masked ? b[3].view.buf : NULL,
                              sentences, beams, heads, depth, length, b[4].view.buf, scratch);
    } else {
        const int widest = attention_kernel(depth);
        cross_attention_step(kernel < 0 || kernel > widest ? widest : kernel, b[0].view.buf, b[1].view.buf,
                             b[2].view.buf, masked ? b[3].view.buf : NULL, sentences, beams, heads, depth, length,
                             b[4].view.buf, scratch, (int32_t *)(scratch + 2 * length));
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(b, 5);
    Py_RETURN_NONE;
}

/* exp_sum(row, top, vectors) -> the log-softmax's sum of exp(row - top) over a float32 row's finite
 * values, in `vectors` (at most float_vectors()'s; tests: each gives the same bits). */
static PyObject *exp_sum(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *object;
    float top;
    int vectors;
    if (!PyArg_ParseTuple(args, "Ofi", &object, &top, &vectors)) {
        return NULL;
    }
    if (vectors < 0 || vectors > float_vectors()) {
        PyErr_Format(PyExc_ValueError, "exp_sum: this CPU has no vectors %d", vectors);
        return NULL;
    }
    Buffer row;
    memset(&row, 0, sizeof(row));
    if (get_buffer(object, &row, "row", "f", 1, 0) < 0) {
        release(&row, 1);
        return NULL;
    }
    if (!PyBuffer_IsContiguous(&row.view, 'C')) {
        release(&row, 1);
        PyErr_SetString(PyExc_ValueError, "exp_sum: row is not contiguous");
        return NULL;
    }
    const double sum = sum_exp_in(vectors, row.view.buf, row.view.shape[0], top);
    release(&row, 1);
    return PyFloat_FromDouble(sum);
}

/* float_vectors() -> the widest float vectors the host's kernels take here: 2 AVX-512, 1 AVX2 with
 * FMA, 0 none. */
static PyObject *float_vectors_info(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromLong(float_vectors());
}

/* attention_kernel(depth) -> 0 plain C, 1 AVX2 with FMA, 2 AVX-512: the kernel self_attention takes. */
static PyObject *attention_kernel_info(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t depth;
    if (!PyArg_ParseTuple(args, "n", &depth)) {
        return NULL;
    }
    return PyLong_FromLong(attention_kernel(depth));
}

/* exact_cross_attention() -> the vectors cross_attention's EXACT_CROSS_KERNEL runs in on this CPU:
 * EXACT_AVX512, EXACT_AVX2 (onnxruntime's AVX-512 order in AVX2's vectors), or 0 where it has neither. */
static PyObject *exact_cross_attention(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromLong(cross_attention_exact_available());
}

/* projection_kernel() -> (index, name): the widest kernel of top_k's projection the CPU runs; a
 * projection may name it or any other that runs here (projection_kernels; 0: plain C). */
static PyObject *projection_kernel_info(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    int kernel = projection_kernel();
    return Py_BuildValue("(is)", kernel, projection_kernel_name(kernel));
}

/* projection_kernels() -> the indices of top_k's projection kernels that run on this CPU, narrowest
 * first: not every one below the widest (an AVX-512 VNNI CPU may lack AVX-VNNI). */
static PyObject *projection_kernels(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    PyObject *found = PyList_New(0);
    for (int kernel = 0; found != NULL && kernel <= 4; kernel++) {
        if (projection_kernel_runs(kernel)) {
            PyObject *index = PyLong_FromLong(kernel);
            if (index == NULL || PyList_Append(found, index) < 0) {
                Py_XDECREF(index);
                Py_DECREF(found);
                return NULL;
            }
            Py_DECREF(index);
        }
    }
    if (found == NULL) {
        return NULL;
    }
    PyObject *kernels = PyList_AsTuple(found);
    Py_DECREF(found);
    return kernels;
}

static PyMethodDef methods[] = {
    {"select_common", select_common, METH_VARARGS, "The beam search's common step (see the module's source)."},
    {"common_steps", common_steps, METH_VARARGS, "Common steps run, selected and committed in turn (see the source)."},
    {"reorder_history", reorder_history, METH_VARARGS, "The self-attention cache's rows reordered in place."},
    {"move_rows", move_rows, METH_VARARGS, "Rows of a cache buffer moved to others (see the source)."},
    {"take_columns", take_columns, METH_VARARGS, "A batch's output layer columns from the projection's rows."},
    {"top_k", top_k, METH_VARARGS, "Each row's best k log-probs and their vocabulary ids (see the source)."},
    {"pack_projection", pack_projection, METH_VARARGS, "A batch's int8 output columns packed for top_k."},
    {"projection_kernel", projection_kernel_info, METH_NOARGS, "The widest kernel of top_k's projection here."},
    {"projection_kernels", projection_kernels, METH_NOARGS, "The kernels of top_k's projection that run here."},
    {"self_attention", self_attention, METH_VARARGS, "A decoder layer's self-attention for a step (see the source)."},
    {"cross_attention", cross_attention, METH_VARARGS, "A decoder layer's cross-attention for a step (see the source)."},
    {"exp_sum", exp_sum, METH_VARARGS, "The log-softmax's sum of exps over a row, in given vectors (tests)."},
    {"float_vectors", float_vectors_info, METH_NOARGS, "The widest float vectors of the host's kernels here."},
    {"attention_kernel", attention_kernel_info, METH_VARARGS, "The kernel self_attention takes for heads of a depth."},
    {"exact_cross_attention", exact_cross_attention, METH_NOARGS, "The vectors of cross_attention's exact kernel here."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_common_step", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__common_step(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "PROJECTED_TILE", PROJECTED_TILE) < 0 ||
                      PyModule_AddIntConstant(m, "FLOAT_PROJECTED_TILE", FLOAT_PROJECTED_TILE) < 0 ||
                      PyModule_AddIntConstant(m, "EXACT_CROSS_KERNEL", EXACT_CROSS_KERNEL) < 0 ||
                      PyModule_AddIntConstant(m, "EXACT_CROSS_KERNEL_AVX2", EXACT_CROSS_KERNEL_AVX2) < 0 ||
                      PyModule_AddIntConstant(m, "EXACT_AVX2", EXACT_AVX2) < 0 ||
                      PyModule_AddIntConstant(m, "EXACT_AVX512", EXACT_AVX512) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
