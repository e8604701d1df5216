/* Denormal floats flushed to zero on the calling thread: x86's MXCSR bits flush-to-zero (FTZ: a
 * result below float's normal range becomes 0) and denormals-are-zero (DAZ: such an input reads as
 * 0), which each thread has of its own. service/runtime/denormals.py says why a search wants them.
 *
 * FLUSH: both bits (0 where the CPU has no MXCSR: not x86).
 * swap(bits) -> int: sets the two bits to those of `bits` on the calling thread (the others stay)
 *   and returns the two as they were, for the caller to put back.
 * current() -> int: the two bits as they are on the calling thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FLUSH_BITS 0x8040u /* FTZ (bit 15) | DAZ (bit 6) */
#else
#define FLUSH_BITS 0u
#endif

static PyObject *swap(PyObject *self, PyObject *arg) {
    (void)self;
    unsigned long bits = PyLong_AsUnsignedLong(arg);
    if (bits == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
#if defined(__x86_64__) || defined(__i386__)
    unsigned int csr = _mm_getcsr();
    _mm_setcsr((csr & ~FLUSH_BITS) | ((unsigned int)bits & FLUSH_BITS));
    return PyLong_FromUnsignedLong(csr & FLUSH_BITS);
#else
    return PyLong_FromUnsignedLong(0);
#endif
}

static PyObject *current(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
#if defined(__x86_64__) || defined(__i386__)
    return PyLong_FromUnsignedLong(_mm_getcsr() & FLUSH_BITS);
#else
    return PyLong_FromUnsignedLong(0);
#endif
}

static PyMethodDef methods[] = {
    {"swap", swap, METH_O, "Set FTZ and DAZ on the calling thread to those of `bits`; returns them as they were."},
    {"current", current, METH_NOARGS, "FTZ and DAZ as they are on the calling thread."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_denormals", NULL, -1, methods};

PyMODINIT_FUNC PyInit__denormals(void) {
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && PyModule_AddIntConstant(created, "FLUSH", (long)FLUSH_BITS) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
