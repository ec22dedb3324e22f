/* The template test of a streamed chunk, compiled: see template.py, which holds the same
 * test in Python (the reference, and what runs where this cannot be built) and says why.
 *
 * A chunk of a learnt stream shape is `head + text + tail`, with no quote in the text and
 * no backslash just before the tail's quote: then only its text is new, and its bytes are
 * counted (or handed to the text meter). Any other chunk goes to the subclass's `_read`.
 *
 * Nothing here allocates on the usual path, and nothing raises that Python would not: a
 * failing text meter sends the chunk to `_read`, as the Python test's `except` does.
 * Head and tail must be exact bytes (the extractor learns them as slices of a chunk, which
 * are): of another type, every chunk goes to `_read`, which is always right, only slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *head; /* _tpl_head: bytes while a learnt template applies, else None */
    PyObject *tail; /* _tpl_tail: bytes */
    PyObject *text; /* _tpl_text: a TextMeter to hand the text to, or None to count bytes */
    Py_ssize_t nbytes; /* _tpl_bytes: text bytes of the chunks that matched */
} TemplateFront;

static PyObject *str_read;           /* "_read" */
static PyObject *str_add_json_string; /* "add_json_string" */

static int
front_traverse(TemplateFront *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->head);
    Py_VISIT(self->tail);
    Py_VISIT(self->text);
    return 0;
}

static int
front_clear(TemplateFront *self)
{
    Py_CLEAR(self->head);
    Py_CLEAR(self->tail);
    Py_CLEAR(self->text);
    return 0;
}

static void
front_dealloc(TemplateFront *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    front_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
front_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    TemplateFront *self = (TemplateFront *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->head = Py_NewRef(Py_None);
    self->tail = PyBytes_FromStringAndSize(NULL, 0);
    self->text = Py_NewRef(Py_None);
    self->nbytes = 0;
    if (self->tail == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* The text between head and tail when `chunk` is that shape, else NULL (no error set). */
static const char *
front_match(TemplateFront *self, PyObject *chunk, Py_ssize_t *size)
{
    PyObject *head = self->head, *tail = self->tail;
    if (head == NULL || !PyBytes_CheckExact(head) || tail == NULL || !PyBytes_CheckExact(tail)
        || !PyBytes_CheckExact(chunk)) {
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(chunk), h = PyBytes_GET_SIZE(head), t = PyBytes_GET_SIZE(tail);
    /* Head and tail are never empty (the Python test relies on it too). */
    if (h == 0 || t == 0 || n < h + t) {
        return NULL;
    }
    const char *c = PyBytes_AS_STRING(chunk);
    if (memcmp(c, PyBytes_AS_STRING(head), (size_t)h) != 0
        || memcmp(c + n - t, PyBytes_AS_STRING(tail), (size_t)t) != 0) {
        return NULL;
    }
    const char *between = c + h;
    Py_ssize_t m = n - h - t;
    /* No quote: the tail's quote closes the string; and that quote is not escaped. */
    if (m > 0 && (memchr(between, '"', (size_t)m) != NULL || between[m - 1] == '\\')) {
        return NULL;
    }
    *size = m;
    return between;
}

/* self._read(chunk), its result dropped: feed returns None, as the Python one does. */
static PyObject *
front_read(TemplateFront *self, PyObject *chunk)
{
    PyObject *result = PyObject_CallMethodOneArg((PyObject *)self, str_read, chunk);
    if (result == NULL) {
        return NULL;
    }
    Py_DECREF(result);
    Py_RETURN_NONE;
}

static PyObject *
front_feed(TemplateFront *self, PyObject *chunk)
{
    Py_ssize_t size = 0;
    const char *between = front_match(self, chunk, &size);
    if (between != NULL) {
        PyObject *text = self->text;
        if (text == NULL || text == Py_None) {
            if (self->nbytes <= PY_SSIZE_T_MAX - size) { /* else _read counts it */
                self->nbytes += size;
                Py_RETURN_NONE;
            }
            return front_read(self, chunk);
        }
        PyObject *piece = PyBytes_FromStringAndSize(between, size);
        if (piece != NULL) {
            Py_INCREF(text); /* the meter may be replaced while it runs */
            PyObject *result = PyObject_CallMethodOneArg(text, str_add_json_string, piece);
            Py_DECREF(text);
            Py_DECREF(piece);
            if (result != NULL) {
                Py_DECREF(result);
                Py_RETURN_NONE;
            }
        }
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL; /* KeyboardInterrupt, MemoryError's kin: as the Python test lets them */
        }
        PyErr_Clear(); /* as the Python test's except: the general path decides */
    }
    return front_read(self, chunk);
}

static PyMethodDef front_methods[] = {
    {"feed", (PyCFunction)front_feed, METH_O,
     "One body chunk: counted here when it is the learnt template, else read by _read."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef front_members[] = {
    {"_tpl_head", T_OBJECT, offsetof(TemplateFront, head), 0, NULL},
    {"_tpl_tail", T_OBJECT, offsetof(TemplateFront, tail), 0, NULL},
    {"_tpl_text", T_OBJECT, offsetof(TemplateFront, text), 0, NULL},
    {"_tpl_bytes", T_PYSSIZET, offsetof(TemplateFront, nbytes), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot front_slots[] = {
    {Py_tp_doc, "The template test in front of a usage extractor's reading (compiled)."},
    {Py_tp_new, front_new},
    {Py_tp_dealloc, front_dealloc},
    {Py_tp_traverse, front_traverse},
    {Py_tp_clear, front_clear},
    {Py_tp_methods, front_methods},
    {Py_tp_members, front_members},
    {0, NULL},
};

static PyType_Spec front_spec = {
    .name = "llm_metrics_middleware._core._template.TemplateFront",
    .basicsize = sizeof(TemplateFront),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = front_slots,
};

static int
template_exec(PyObject *module)
{
    if (str_read == NULL && (str_read = PyUnicode_InternFromString("_read")) == NULL) {
        return -1;
    }
    if (str_add_json_string == NULL
        && (str_add_json_string = PyUnicode_InternFromString("add_json_string")) == NULL) {
        return -1;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, &front_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "TemplateFront", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot template_module_slots[] = {
    {Py_mod_exec, template_exec},
    {0, NULL},
};

static struct PyModuleDef template_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "llm_metrics_middleware._core._template",
    .m_doc = "The streamed-chunk template test, compiled (see template.py).",
    .m_size = 0,
    .m_slots = template_module_slots,
};

PyMODINIT_FUNC
PyInit__template(void)
{
    return PyModuleDef_Init(&template_module);
}
