/* The send an ASGI app is given, compiled: see short_send.py, which holds the same code in
 * Python (the reference, and what runs where this cannot be built) and says why.
 *
 * A middle chunk of a streamed body (`more_body` true, once the call turned the short path
 * on by setting `code`) is handed to the server's send at once, its coroutine returned to
 * the app unawaited; the chunk before it, whose send the app has now awaited, is fed to the
 * call (to `feed` when the call set it: its own feed callable, found once instead of per
 * chunk). Any other message goes to the call's `_awaited_send`. Only exact dicts take the
 * short path here (ASGI messages are dicts); any other mapping is awaited, which is always
 * correct, only slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *call;        /* the _AsgiCall, or None once the request is over */
    PyObject *server_send; /* the server's send */
    PyObject *code;        /* the code of the server's send coroutine once the short path is on */
    PyObject *pending;     /* the chunk handed on last, not fed yet, or None */
    PyObject *feed;        /* what a pending chunk is fed to, or None: the call's `feed` */
} ShortSend;

static PyObject *str_more_body;    /* "more_body" */
static PyObject *str_body;         /* "body" */
static PyObject *str_feed;         /* "feed" */
static PyObject *str_awaited_send; /* "_awaited_send" */
static PyObject *empty_bytes;      /* b"" */

static int
short_traverse(ShortSend *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->call);
    Py_VISIT(self->server_send);
    Py_VISIT(self->code);
    Py_VISIT(self->pending);
    Py_VISIT(self->feed);
    return 0;
}

static int
short_clear(ShortSend *self)
{
    Py_CLEAR(self->call);
    Py_CLEAR(self->server_send);
    Py_CLEAR(self->code);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->feed);
    return 0;
}

static void
short_dealloc(ShortSend *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    short_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
short_init(ShortSend *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"call", "server_send", NULL};
    PyObject *call, *server_send;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:ShortSend", names, &call, &server_send)) {
        return -1;
    }
    Py_XSETREF(self->call, Py_NewRef(call));
    Py_XSETREF(self->server_send, Py_NewRef(server_send));
    Py_XSETREF(self->code, Py_NewRef(Py_None));
    Py_XSETREF(self->pending, Py_NewRef(Py_None));
    Py_XSETREF(self->feed, Py_NewRef(Py_None));
    return 0;
}

static PyObject *
short_send(ShortSend *self, PyObject *message)
{
    PyObject *call = self->call;
    if (call == NULL || call == Py_None) {
        return self->server_send == NULL ? PyErr_Format(PyExc_RuntimeError, "ShortSend is not initialised")
                                         : PyObject_CallOneArg(self->server_send, message);
    }
    if (self->code != NULL && self->code != Py_None && PyDict_CheckExact(message)) {
        PyObject *more = PyDict_GetItemWithError(message, str_more_body); /* borrowed */
        if (more == NULL && PyErr_Occurred()) {
            return NULL;
        }
        int on = 0;
        if (more != NULL && (on = PyObject_IsTrue(more)) < 0) {
            return NULL;
        }
        if (on) {
            Py_INCREF(call); /* feed may end the request, which lets go of the call */
            PyObject *pending = self->pending;
            if (pending != NULL && pending != Py_None) {
                Py_INCREF(pending);
                PyObject *feed = self->feed, *fed;
                if (feed != NULL && feed != Py_None) {
                    Py_INCREF(feed); /* it may be replaced while it runs */
                    fed = PyObject_CallOneArg(feed, pending);
                    Py_DECREF(feed);
                } else {
                    fed = PyObject_CallMethodOneArg(call, str_feed, pending);
                }
                Py_DECREF(pending);
                if (fed == NULL) {
                    Py_DECREF(call);
                    return NULL;
                }
                Py_DECREF(fed);
            }
            Py_DECREF(call);
            PyObject *body = PyDict_GetItemWithError(message, str_body); /* borrowed */
            if (body == NULL) {
                if (PyErr_Occurred()) {
                    return NULL;
                }
                body = empty_bytes; /* the zero-copy extension's message has no body */
            }
            Py_XSETREF(self->pending, Py_NewRef(body));
            return PyObject_CallOneArg(self->server_send, message);
        }
    }
    Py_INCREF(call);
    PyObject *result = PyObject_CallMethodOneArg(call, str_awaited_send, message);
    Py_DECREF(call);
    return result;
}

static PyMethodDef short_methods[] = {
    {"send", (PyCFunction)short_send, METH_O,
     "The app's send: a middle chunk straight to the server, anything else awaited by the call."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef short_members[] = {
    {"call", T_OBJECT, offsetof(ShortSend, call), 0, NULL},
    {"server_send", T_OBJECT, offsetof(ShortSend, server_send), 0, NULL},
    {"code", T_OBJECT, offsetof(ShortSend, code), 0, NULL},
    {"pending", T_OBJECT, offsetof(ShortSend, pending), 0, NULL},
    {"feed", T_OBJECT, offsetof(ShortSend, feed), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot short_slots[] = {
    {Py_tp_doc, "One request's send, compiled: ShortSend(call, server_send)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, short_init},
    {Py_tp_dealloc, short_dealloc},
    {Py_tp_traverse, short_traverse},
    {Py_tp_clear, short_clear},
    {Py_tp_methods, short_methods},
    {Py_tp_members, short_members},
    {0, NULL},
};

static PyType_Spec short_spec = {
    .name = "llm_metrics_middleware._drivers._short_send.ShortSend",
    .basicsize = sizeof(ShortSend),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = short_slots,
};

static int
intern(PyObject **slot, const char *text)
{
    if (*slot == NULL) {
        *slot = PyUnicode_InternFromString(text);
    }
    return *slot == NULL ? -1 : 0;
}

static int
short_send_exec(PyObject *module)
{
    if (intern(&str_more_body, "more_body") < 0 || intern(&str_body, "body") < 0
        || intern(&str_feed, "feed") < 0 || intern(&str_awaited_send, "_awaited_send") < 0) {
        return -1;
    }
    if (empty_bytes == NULL && (empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {
        return -1;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, &short_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "ShortSend", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot short_send_module_slots[] = {
    {Py_mod_exec, short_send_exec},
    {0, NULL},
};

static struct PyModuleDef short_send_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "llm_metrics_middleware._drivers._short_send",
    .m_doc = "The ASGI app's send, compiled (see short_send.py).",
    .m_size = 0,
    .m_slots = short_send_module_slots,
};

PyMODINIT_FUNC
PyInit__short_send(void)
{
    return PyModuleDef_Init(&short_send_module);
}
