/*
 * The two per-row loops of incremental sync, in C: reading pgoutput TupleData into column values, and formatting
 * rows as COPY text. Both do exactly what their Python twins in pgoutput.py and apply.py do (the tests compare them
 * on the same inputs); the Python code runs when this module is not built (PGMIGRATE_PURE_PYTHON=1, or no compiler).
 *
 * Every length read from the stream is checked against the message's end: a malformed message raises ValueError,
 * never reads past its buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The UNCHANGED marker of pgoutput.py (an unchanged TOASTed value), set once by set_unchanged(). */
static PyObject *unchanged_marker = NULL;

static PyObject *
set_unchanged(PyObject *self, PyObject *marker)
{
    Py_XSETREF(unchanged_marker, Py_NewRef(marker));
    Py_RETURN_NONE;
}

static int32_t
read_int32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

static PyObject *
malformed(const char *what, Py_ssize_t pos)
{
    PyErr_Format(PyExc_ValueError, "malformed pgoutput TupleData: %s at byte %zd", what, pos);
    return NULL;
}

/* The values of the TupleData at `pos` of `buf` (`len` bytes): a new list, and the position after it in *end. */
static PyObject *
tuple_values(const unsigned char *buf, Py_ssize_t len, Py_ssize_t pos, Py_ssize_t *end)
{
    if (pos < 0 || pos > len - 2)
        return malformed("no column count", pos);
    int count = (int16_t)((buf[pos] << 8) | buf[pos + 1]);
    if (count < 0)
        return malformed("negative column count", pos);
    pos += 2;
    PyObject *values = PyList_New(count);
    if (values == NULL)
        return NULL;
    for (int i = 0; i < count; i++) {
        PyObject *item;
        if (pos >= len) {
            Py_DECREF(values);
            return malformed("message ends before its columns", pos);
        }
        unsigned char kind = buf[pos];
        if (kind == 't') {
            if (pos > len - 5) {
                Py_DECREF(values);
                return malformed("no value length", pos);
            }
            int32_t size = read_int32(buf + pos + 1);
            if (size < 0 || size > len - pos - 5) {
                Py_DECREF(values);
                return malformed("value longer than the message", pos);
            }
            item = PyBytes_FromStringAndSize((const char *)buf + pos + 5, size);
            if (item == NULL) {
                Py_DECREF(values);
                return NULL;
            }
            pos += 5 + (Py_ssize_t)size;
        } else if (kind == 'n') {
            item = Py_NewRef(Py_None);
            pos += 1;
        } else if (kind == 'u') {
            item = Py_NewRef(unchanged_marker);
            pos += 1;
        } else {
            Py_DECREF(values);
            return malformed("unknown column kind", pos);
        }
        PyList_SET_ITEM(values, i, item);
    }
    *end = pos;
    return values;
}

/* read_tuple(data, pos) -> (values, position after them) */
static PyObject *
read_tuple(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_tuple(data, pos) takes two arguments");
        return NULL;
    }
    if (unchanged_marker == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "tuplecodec: set_unchanged() was not called");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t end = 0;
    PyObject *values = tuple_values((const unsigned char *)view.buf, view.len, pos, &end);
    PyBuffer_Release(&view);
    if (values == NULL)
        return NULL;
    PyObject *after = PyLong_FromSsize_t(end);
    if (after == NULL) {
        Py_DECREF(values);
        return NULL;
    }
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(values);
        Py_DECREF(after);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, values);
    PyTuple_SET_ITEM(result, 1, after);
    return result;
}

static int
needs_escape(char c)
{
    return c == '\\' || c == '\t' || c == '\n' || c == '\r';
}

static char
escape_letter(char c)
{
    return c == '\t' ? 't' : c == '\n' ? 'n' : c == '\r' ? 'r' : '\\';
}

/* The value at `index` of `row` when `row` is a list that long and the value is bytes or None; NULL otherwise
 * (the caller then falls back to the Python formatting, which handles or refuses it). No error is set. */
static PyObject *
pick(PyObject *row, Py_ssize_t index)
{
    if (!PyList_Check(row) || index < 0 || index >= PyList_GET_SIZE(row))
        return NULL;
    PyObject *value = PyList_GET_ITEM(row, index);
    if (value != Py_None && !PyBytes_Check(value))
        return NULL;
    return value;
}

/* copy_block(rows, positions) -> COPY text lines of the rows' values at positions (each line ends with a newline),
 * or None when a row is not a list of bytes and None at those positions. */
static PyObject *
copy_block(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "copy_block(rows: list, positions: tuple)");
        return NULL;
    }
    PyObject *rows = args[0], *positions = args[1];
    Py_ssize_t nrows = PyList_GET_SIZE(rows), width = PyTuple_GET_SIZE(positions);
    if (width == 0)
        Py_RETURN_NONE;
    Py_ssize_t *index = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)width);
    if (index == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t j = 0; j < width; j++) {
        index[j] = PyLong_AsSsize_t(PyTuple_GET_ITEM(positions, j));
        if (index[j] == -1 && PyErr_Occurred()) {
            PyMem_Free(index);
            return NULL;
        }
    }
    /* First pass: the size, and whether every value can be formatted here. */
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < nrows; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        total += width; /* the separators and the newline */
        for (Py_ssize_t j = 0; j < width; j++) {
            PyObject *value = pick(row, index[j]);
            if (value == NULL) {
                PyMem_Free(index);
                Py_RETURN_NONE;
            }
            if (value == Py_None) {
                total += 2;
                continue;
            }
            const char *s = PyBytes_AS_STRING(value);
            Py_ssize_t n = PyBytes_GET_SIZE(value);
            total += n;
            for (Py_ssize_t k = 0; k < n; k++)
                total += needs_escape(s[k]);
        }
    }
    PyObject *block = PyBytes_FromStringAndSize(NULL, total);
    if (block == NULL) {
        PyMem_Free(index);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(block);
    for (Py_ssize_t i = 0; i < nrows; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        for (Py_ssize_t j = 0; j < width; j++) {
            PyObject *value = PyList_GET_ITEM(row, index[j]);
            if (value == Py_None) {
                *out++ = '\\';
                *out++ = 'N';
            } else {
                const char *s = PyBytes_AS_STRING(value);
                Py_ssize_t n = PyBytes_GET_SIZE(value);
                Py_ssize_t start = 0;
                for (Py_ssize_t k = 0; k < n; k++) {
                    if (needs_escape(s[k])) {
                        memcpy(out, s + start, (size_t)(k - start));
                        out += k - start;
                        *out++ = '\\';
                        *out++ = escape_letter(s[k]);
                        start = k + 1;
                    }
                }
                memcpy(out, s + start, (size_t)(n - start));
                out += n - start;
            }
            *out++ = j + 1 < width ? '\t' : '\n';
        }
    }
    PyMem_Free(index);
    return block;
}

static PyMethodDef methods[] = {
    {"set_unchanged", (PyCFunction)set_unchanged, METH_O, "Set the marker of an unchanged TOASTed value."},
    {"read_tuple", (PyCFunction)(void (*)(void))read_tuple, METH_FASTCALL,
     "read_tuple(data, pos) -> (values, end): the TupleData at pos."},
    {"copy_block", (PyCFunction)(void (*)(void))copy_block, METH_FASTCALL,
     "copy_block(rows, positions) -> COPY text lines, or None when a value is neither bytes nor None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tuplecodec", "Per-row loops of incremental sync, in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit_tuplecodec(void)
{
    return PyModule_Create(&module);
}
