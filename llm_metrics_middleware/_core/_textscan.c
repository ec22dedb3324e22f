/* The two searches of a streamed event that the template test did not account for,
 * compiled: see textscan.py, which holds them in Python (regular expressions: the
 * reference, and what runs where this cannot be built) and says what each one finds.
 *
 * TextFields.spans(data): where the text strings of the given fields are, as the list of
 * (start, end) of group 1 of every match of textscan.text_field_pattern(names), in order:
 * a quote that a byte of `{`, `,` or ASCII whitespace precedes, a name, a quote,
 * whitespace, a colon, whitespace, a quote, then characters or backslash escapes up to the
 * closing quote. A match that fails at one quote is looked for again from the next byte,
 * and the next search starts after a match, as finditer does.
 *
 * UsageHint.seen(data): whether a key followed by a quote, whitespace and a colon, and not
 * then by whitespace and `null`, or one of the markers, is anywhere in the data (textscan's
 * usage_hint_pattern and a substring test per marker).
 *
 * Both take any object with the buffer protocol, as the regular expressions do (bytes,
 * bytearray, memoryview), and refuse a str with TypeError, as they do. Neither allocates
 * unless it finds something (a span), and one pass per needle crosses the data in memchr steps: a few hundred instructions per event where the regular expression engine
 * spends about twenty thousand trying the names at every quote.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* ASCII whitespace as a bytes pattern's \s matches it: space, \t \n \v \f \r. */
static inline int
is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* The needles of a scanner: a tuple of bytes, kept with its pointers and lengths. */
typedef struct {
    PyObject *tuple;
    Py_ssize_t count;
    const char **bytes;
    Py_ssize_t *sizes;
} Needles;

static int
needles_init(Needles *needles, PyObject *tuple, const char *what)
{
    if (!PyTuple_CheckExact(tuple)) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of bytes", what);
        return -1;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(tuple);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (!PyBytes_CheckExact(item) || PyBytes_GET_SIZE(item) == 0) {
            PyErr_Format(PyExc_TypeError, "%s must be a tuple of non-empty bytes", what);
            return -1;
        }
    }
    needles->bytes = PyMem_Calloc((size_t)(count ? count : 1), sizeof(const char *));
    needles->sizes = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_ssize_t));
    if (needles->bytes == NULL || needles->sizes == NULL) {
        PyMem_Free(needles->bytes);
        PyMem_Free(needles->sizes);
        needles->bytes = NULL;
        needles->sizes = NULL;
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        needles->bytes[i] = PyBytes_AS_STRING(item);
        needles->sizes[i] = PyBytes_GET_SIZE(item);
    }
    needles->tuple = Py_NewRef(tuple); /* keeps the pointed-at bytes alive */
    needles->count = count;
    return 0;
}

static void
needles_clear(Needles *needles)
{
    Py_CLEAR(needles->tuple);
    PyMem_Free(needles->bytes);
    PyMem_Free(needles->sizes);
    needles->bytes = NULL;
    needles->sizes = NULL;
    needles->count = 0;
}

/* ---- TextFields ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Needles names;
} TextFields;

static int
fields_init(TextFields *self, PyObject *args, PyObject *kwargs)
{
    PyObject *names;
    static char *keywords[] = {"names", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:TextFields", keywords, &names)) {
        return -1;
    }
    needles_clear(&self->names);
    return needles_init(&self->names, names, "names");
}

static void
fields_dealloc(TextFields *self)
{
    PyTypeObject *type = Py_TYPE(self);
    needles_clear(&self->names);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* Where the string of a text field whose opening quote is at `q` ends (its closing quote),
 * or -1 when there is no such field there. */
static Py_ssize_t
field_at(const TextFields *self, const unsigned char *c, Py_ssize_t n, Py_ssize_t q, Py_ssize_t *start)
{
    if (q == 0) {
        return -1;
    }
    unsigned char before = c[q - 1];
    if (before != '{' && before != ',' && !is_space(before)) {
        return -1;
    }
    Py_ssize_t after = -1;
    for (Py_ssize_t i = 0; i < self->names.count; i++) {
        Py_ssize_t size = self->names.sizes[i];
        /* the name, then its closing quote: two names cannot both be followed by one */
        if (q + 1 + size < n && c[q + 1 + size] == '"'
            && memcmp(c + q + 1, self->names.bytes[i], (size_t)size) == 0) {
            after = q + 2 + size;
            break;
        }
    }
    if (after < 0) {
        return -1;
    }
    Py_ssize_t k = after;
    while (k < n && is_space(c[k])) {
        k++;
    }
    if (k >= n || c[k] != ':') {
        return -1;
    }
    k++;
    while (k < n && is_space(c[k])) {
        k++;
    }
    if (k >= n || c[k] != '"') {
        return -1;
    }
    k++;
    *start = k;
    while (k < n) {
        unsigned char ch = c[k];
        if (ch == '"') {
            return k;
        }
        if (ch == '\\') {
            if (k + 1 >= n) {
                return -1; /* an escape the data ends in: no closing quote */
            }
            k += 2;
        } else {
            k++;
        }
    }
    return -1;
}

static PyObject *
fields_spans(TextFields *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *spans = PyList_New(0);
    if (spans == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *c = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len, at = 0;
    while (at < n) {
        const unsigned char *quote = memchr(c + at, '"', (size_t)(n - at));
        if (quote == NULL) {
            break;
        }
        Py_ssize_t q = quote - c, start = 0;
        Py_ssize_t end = field_at(self, c, n, q, &start);
        if (end < 0) {
            at = q + 1;
            continue;
        }
        PyObject *span = Py_BuildValue("(nn)", start, end);
        if (span == NULL || PyList_Append(spans, span) < 0) {
            Py_XDECREF(span);
            Py_DECREF(spans);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(span);
        at = end + 1;
    }
    PyBuffer_Release(&view);
    return spans;
}

static PyObject *
fields_names(TextFields *self, void *closure)
{
    return Py_NewRef(self->names.tuple != NULL ? self->names.tuple : Py_None);
}

static PyMethodDef fields_methods[] = {
    {"spans", (PyCFunction)fields_spans, METH_O,
     "The (start, end) of every text field's string in data, in order (see textscan.py)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef fields_getset[] = {
    {"names", (getter)fields_names, NULL, "The field names, as bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot fields_slots[] = {
    {Py_tp_doc, "The text fields of streamed events, found without a regular expression (compiled)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, fields_init},
    {Py_tp_dealloc, fields_dealloc},
    {Py_tp_methods, fields_methods},
    {Py_tp_getset, fields_getset},
    {0, NULL},
};

static PyType_Spec fields_spec = {
    .name = "llm_metrics_middleware._core._textscan.TextFields",
    .basicsize = sizeof(TextFields),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = fields_slots,
};

/* Where `needle` (`size` bytes, not empty) first is in c[at:n], or -1: a memchr for its
 * first byte, then a memcmp (memmem is not everywhere; the data are a few hundred bytes). */
static Py_ssize_t
find(const unsigned char *c, Py_ssize_t n, Py_ssize_t at, const char *needle, Py_ssize_t size)
{
    unsigned char first = (unsigned char)needle[0];
    while (n - at >= size) {
        const unsigned char *hit = memchr(c + at, first, (size_t)(n - at - size + 1));
        if (hit == NULL) {
            return -1;
        }
        Py_ssize_t k = hit - c;
        if (memcmp(hit + 1, needle + 1, (size_t)(size - 1)) == 0) {
            return k;
        }
        at = k + 1;
    }
    return -1;
}

/* ---- UsageHint ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Needles keys;    /* key names, without quotes: b"usage" */
    Needles markers;
} UsageHint;

static int
hint_init(UsageHint *self, PyObject *args, PyObject *kwargs)
{
    PyObject *keys, *markers;
    static char *keywords[] = {"keys", "markers", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:UsageHint", keywords, &keys, &markers)) {
        return -1;
    }
    needles_clear(&self->keys);
    needles_clear(&self->markers);
    if (needles_init(&self->keys, keys, "keys") < 0) {
        return -1;
    }
    return needles_init(&self->markers, markers, "markers");
}

static void
hint_dealloc(UsageHint *self)
{
    PyTypeObject *type = Py_TYPE(self);
    needles_clear(&self->keys);
    needles_clear(&self->markers);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* Whether the key at `k` (`size` bytes) is followed by a quote, then a colon that is not
 * followed by null, whitespace allowed before the colon and before null. */
static int
key_hints(const unsigned char *c, Py_ssize_t n, Py_ssize_t k, Py_ssize_t size)
{
    Py_ssize_t i = k + size;
    if (i >= n || c[i] != '"') {
        return 0;
    }
    i++;
    while (i < n && is_space(c[i])) {
        i++;
    }
    if (i >= n || c[i] != ':') {
        return 0;
    }
    i++;
    while (i < n && is_space(c[i])) {
        i++;
    }
    return !(n - i >= 4 && memcmp(c + i, "null", 4) == 0);
}

static PyObject *
hint_seen(UsageHint *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *c = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    int seen = 0;
    for (Py_ssize_t j = 0; j < self->keys.count && !seen; j++) {
        const char *key = self->keys.bytes[j];
        Py_ssize_t size = self->keys.sizes[j], at = 0;
        while (at + size <= n) {
            Py_ssize_t k = find(c, n, at, key, size);
            if (k < 0) {
                break;
            }
            if (key_hints(c, n, k, size)) {
                seen = 1;
                break;
            }
            at = k + 1;
        }
    }
    for (Py_ssize_t j = 0; j < self->markers.count && !seen; j++) {
        seen = find(c, n, 0, self->markers.bytes[j], self->markers.sizes[j]) >= 0;
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(seen);
}

static PyMethodDef hint_methods[] = {
    {"seen", (PyCFunction)hint_seen, METH_O,
     "Whether data holds a usage key with a value that is not null, or a marker (see textscan.py)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot hint_slots[] = {
    {Py_tp_doc, "Whether streamed event data may hold usage, found without a regular expression (compiled)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, hint_init},
    {Py_tp_dealloc, hint_dealloc},
    {Py_tp_methods, hint_methods},
    {0, NULL},
};

static PyType_Spec hint_spec = {
    .name = "llm_metrics_middleware._core._textscan.UsageHint",
    .basicsize = sizeof(UsageHint),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = hint_slots,
};

/* ---- module -------------------------------------------------------------------------- */

static int
textscan_exec(PyObject *module)
{
    PyType_Spec *specs[] = {&fields_spec, &hint_spec};
    const char *names[] = {"TextFields", "UsageHint"};
    for (int i = 0; i < 2; i++) {
        PyObject *type = PyType_FromModuleAndSpec(module, specs[i], NULL);
        if (type == NULL) {
            return -1;
        }
        if (PyModule_AddObject(module, names[i], type) < 0) {
            Py_DECREF(type);
            return -1;
        }
    }
    return 0;
}

static PyModuleDef_Slot textscan_module_slots[] = {
    {Py_mod_exec, textscan_exec},
    {0, NULL},
};

static struct PyModuleDef textscan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "llm_metrics_middleware._core._textscan",
    .m_doc = "The text-field and usage-hint searches of streamed events, compiled (see textscan.py).",
    .m_size = 0,
    .m_slots = textscan_module_slots,
};

PyMODINIT_FUNC
PyInit__textscan(void)
{
    return PyModuleDef_Init(&textscan_module);
}
