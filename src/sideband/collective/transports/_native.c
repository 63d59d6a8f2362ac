/* The hot loops of a group's shared-memory waits, in C (sideband.collective.transports._native).
 *
 * Python decides (wait policy, liveness, errors); C runs the loops whose every microsecond is
 * latency: futex sleep and wake-up without ctypes, the yield phase of a wait with the GIL
 * released, ringing a peer's doorbell (an atomic add, and a wake-up only if it sleeps), and the
 * arena's round: publish this rank's slot, then poll every peer's slot until all carry the step,
 * and reduce what the slots hold straight into the caller's array.
 * Nothing here allocates, and no loop runs longer than the budget the caller passes.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* sched_getcpu, CPU_SET */
#include <Python.h>

#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define HAVE_FUTEX 1
#else
#define HAVE_FUTEX 0
#endif

/* Arena slot header words (algorithms/arena.py): step, seq, desc low, desc high, nbytes. */
enum { H_STEP = 0, H_SEQ = 1, H_DESC_LO = 2, H_DESC_HI = 3, H_NBYTES = 4 };
#define MAX_RANKS 1024

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

static inline uint32_t load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void futex_wait_(uint32_t *addr, uint32_t expected, double timeout_s) {
#if HAVE_FUTEX
    struct timespec ts;
    if (timeout_s < 0) timeout_s = 0;
    ts.tv_sec = (time_t)timeout_s;
    ts.tv_nsec = (long)((timeout_s - (double)ts.tv_sec) * 1e9);
    /* Shared (not private) futex: the word lives in memory other processes map. */
    syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
#else
    struct timespec ts = {0, 500000};
    (void)addr;
    (void)expected;
    if (timeout_s < 0.0005) ts.tv_nsec = (long)(timeout_s > 0 ? timeout_s * 1e9 : 0);
    nanosleep(&ts, NULL);
#endif
}

static void futex_wake_(uint32_t *addr) {
#if HAVE_FUTEX
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
#else
    (void)addr;
#endif
}

static int as_addr(PyObject *o, uint32_t **out) {
    void *p = PyLong_AsVoidPtr(o);
    if (p == NULL && PyErr_Occurred()) return -1;
    if (p == NULL || ((uintptr_t)p & 3)) {
        PyErr_SetString(PyExc_ValueError, "address must be a non-null, 4-byte aligned integer");
        return -1;
    }
    *out = (uint32_t *)p;
    return 0;
}

static int nargs_ok(Py_ssize_t got, Py_ssize_t want, const char *name) {
    if (got == want) return 1;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, got);
    return 0;
}

/* futex_wait(addr, expected, timeout_s): sleep while *addr == expected (GIL released). */
static PyObject *py_futex_wait(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    uint32_t *addr;
    if (!nargs_ok(n, 3, "futex_wait") || as_addr(args[0], &addr) < 0) return NULL;
    unsigned long expected = PyLong_AsUnsignedLongMask(args[1]);
    double timeout_s = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) return NULL;
    Py_BEGIN_ALLOW_THREADS
    futex_wait_(addr, (uint32_t)expected, timeout_s);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* futex_wake(addr): wake every process sleeping on *addr. */
static PyObject *py_futex_wake(PyObject *self, PyObject *arg) {
    uint32_t *addr;
    if (as_addr(arg, &addr) < 0) return NULL;
    futex_wake_(addr);
    Py_RETURN_NONE;
}

/* ring(bell_addr, sleeping_addr): bump a doorbell; wake its owner only if its flag says it
 * sleeps. The add is a full barrier, so the flag is read after the new value is visible: an owner
 * that raised its flag and re-reads the bell (or sleeps in FUTEX_WAIT, which re-reads it in the
 * kernel) either sees the new value or is woken. */
static PyObject *py_ring(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    uint32_t *bell, *sleeping;
    if (!nargs_ok(n, 2, "ring") || as_addr(args[0], &bell) < 0 || as_addr(args[1], &sleeping) < 0)
        return NULL;
    __atomic_fetch_add(bell, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleeping, __ATOMIC_SEQ_CST)) futex_wake_(bell);
    Py_RETURN_NONE;
}

/* yield_until(addr, seen, budget_s) -> bool: sched_yield until *addr != seen, for at most
 * budget_s (GIL released). True if it moved. */
static PyObject *py_yield_until(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    uint32_t *addr;
    if (!nargs_ok(n, 3, "yield_until") || as_addr(args[0], &addr) < 0) return NULL;
    uint32_t seen = (uint32_t)PyLong_AsUnsignedLongMask(args[1]);
    double budget = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) return NULL;
    int moved = load32(addr) != seen;
    if (!moved && budget > 0) {
        Py_BEGIN_ALLOW_THREADS
        double end = now_s() + budget;
        do {
            sched_yield();
            moved = load32(addr) != seen;
        } while (!moved && now_s() < end);
        Py_END_ALLOW_THREADS
    }
    return PyBool_FromLong(moved);
}

/* settle(cpu) -> bool: if this thread runs on another CPU than ``cpu`` (and its affinity mask
 * allows ``cpu``), move it there and give the mask back at once: one migration, and the thread
 * stays free to move. True if it moved. At home it costs one vDSO call. */
static PyObject *py_settle(PyObject *self, PyObject *arg) {
    long cpu = PyLong_AsLong(arg);
    if (cpu == -1 && PyErr_Occurred()) return NULL;
    if (cpu < 0 || cpu >= CPU_SETSIZE) {
        PyErr_SetString(PyExc_ValueError, "cpu out of range");
        return NULL;
    }
    int here = sched_getcpu();
    if (here < 0 || here == cpu) Py_RETURN_FALSE;
    cpu_set_t saved, home;
    if (sched_getaffinity(0, sizeof saved, &saved) != 0 || !CPU_ISSET(cpu, &saved))
        Py_RETURN_FALSE;
    CPU_ZERO(&home);
    CPU_SET(cpu, &home);
    int moved = sched_setaffinity(0, sizeof home, &home) == 0;
    if (moved && sched_setaffinity(0, sizeof saved, &saved) != 0)
        return PyErr_SetFromErrno(PyExc_OSError); /* the user's mask must not stay narrowed */
    return PyBool_FromLong(moved);
}

/* The arena's round. ``table``: a bytes object of uint64 addresses, per rank (in rank order):
 * slot 0 header, slot 0 data, slot 1 header, slot 1 data, doorbell, sleeping flag. */
typedef struct {
    struct {
        uint32_t *hdr;
        unsigned char *data;
    } slot[2];
    uint32_t *bell;
    uint32_t *sleeping;
} RankAddrs;

static int read_table(PyObject *table, Py_ssize_t *ranks, const RankAddrs **out) {
    if (!PyBytes_Check(table) || PyBytes_GET_SIZE(table) % sizeof(RankAddrs) != 0) {
        PyErr_SetString(PyExc_TypeError, "table must be bytes of 6 addresses per rank");
        return -1;
    }
    *ranks = PyBytes_GET_SIZE(table) / (Py_ssize_t)sizeof(RankAddrs);
    *out = (const RankAddrs *)PyBytes_AS_STRING(table);
    if (*ranks < 1 || *ranks > MAX_RANKS) {
        PyErr_SetString(PyExc_ValueError, "table holds no ranks, or too many");
        return -1;
    }
    return 0;
}

/* The arguments every round call starts with: (table, rank, slot, step, seq, desc, ...). */
typedef struct {
    Py_ssize_t ranks, rank, slot;
    const RankAddrs *t;
    uint32_t step, seq;
    unsigned long long desc;
} Round;

static int read_round(PyObject *const *args, Round *r) {
    if (read_table(args[0], &r->ranks, &r->t) < 0) return -1;
    r->rank = PyLong_AsSsize_t(args[1]);
    r->slot = PyLong_AsSsize_t(args[2]);
    r->step = (uint32_t)PyLong_AsUnsignedLongMask(args[3]);
    r->seq = (uint32_t)PyLong_AsUnsignedLongMask(args[4]);
    r->desc = PyLong_AsUnsignedLongLongMask(args[5]);
    if (PyErr_Occurred()) return -1;
    if (r->rank < 0 || r->rank >= r->ranks || r->slot < 0 || r->slot > 1) {
        PyErr_SetString(PyExc_ValueError, "rank or slot out of range");
        return -1;
    }
    return 0;
}

/* publish(table, rank, slot, step, seq, desc, payload, slot_bytes): write this rank's slot
 * (seqlock style: unpublish, write, publish the step last), then ring every peer. */
static PyObject *py_publish(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Round rd;
    if (!nargs_ok(n, 8, "publish") || read_round(args, &rd) < 0) return NULL;
    Py_ssize_t slot_bytes = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[6], &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len > slot_bytes) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "payload larger than a slot");
        return NULL;
    }
    uint32_t *h = rd.t[rd.rank].slot[rd.slot].hdr;
    __atomic_store_n(&h[H_STEP], 0, __ATOMIC_RELEASE);
    if (view.len) memcpy(rd.t[rd.rank].slot[rd.slot].data, view.buf, (size_t)view.len);
    h[H_SEQ] = rd.seq;
    h[H_DESC_LO] = (uint32_t)rd.desc;
    h[H_DESC_HI] = (uint32_t)(rd.desc >> 32);
    h[H_NBYTES] = (uint32_t)view.len;
    __atomic_store_n(&h[H_STEP], rd.step, __ATOMIC_SEQ_CST); /* last: a peer seeing it sees all */
    PyBuffer_Release(&view);
    for (Py_ssize_t p = 0; p < rd.ranks; p++) {
        if (p == rd.rank) continue;
        __atomic_fetch_add(rd.t[p].bell, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(rd.t[p].sleeping, __ATOMIC_SEQ_CST)) futex_wake_(rd.t[p].bell);
    }
    Py_RETURN_NONE;
}


/* One look at every peer's slot. Returns the number still pending (0: all arrived, sizes[p]
 * set), or -(1 + p) for the first peer whose slot shows another call or a size out of protocol. */
static Py_ssize_t look(const Round *rd, long long expect, uint32_t slot_bytes, uint32_t *sizes) {
    uint32_t lo = (uint32_t)rd->desc, hi = (uint32_t)(rd->desc >> 32);
    Py_ssize_t pending = 0;
    for (Py_ssize_t p = 0; p < rd->ranks; p++) {
        if (p == rd->rank || sizes[p] != UINT32_MAX) continue; /* self, or seen earlier */
        const uint32_t *ph = rd->t[p].slot[rd->slot].hdr;
        if (load32(&ph[H_STEP]) != rd->step) {
            pending++;
            continue;
        }
        uint32_t got = ph[H_NBYTES]; /* read once: the size checked is the size used */
        if (ph[H_SEQ] != rd->seq || ph[H_DESC_LO] != lo || ph[H_DESC_HI] != hi ||
            got > slot_bytes || (expect >= 0 && (long long)got != expect))
            return -(1 + p);
        sizes[p] = got;
    }
    return pending;
}

/* wait_slots(table, rank, slot, step, seq, desc, expect, slot_bytes, sizes, abort_addr,
 * budget_s) -> int: until every peer's slot carries ``step``: poll, then sched_yield, for at most
 * budget_s (GIL released), or until this rank's abort flag is set. ``sizes``: a writable uint32
 * buffer of one entry per rank; entries of peers not yet seen must be 0xFFFFFFFF on the first
 * call of a round (the call fills them in as peers arrive). Returns as look() does. */
static PyObject *py_wait_slots(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Round rd;
    uint32_t *abort_flag;
    if (!nargs_ok(n, 11, "wait_slots") || read_round(args, &rd) < 0) return NULL;
    long long expect = PyLong_AsLongLong(args[6]);
    uint32_t slot_bytes = (uint32_t)PyLong_AsUnsignedLongMask(args[7]);
    if (PyErr_Occurred() || as_addr(args[9], &abort_flag) < 0) return NULL;
    double budget = PyFloat_AsDouble(args[10]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer sv;
    if (PyObject_GetBuffer(args[8], &sv, PyBUF_WRITABLE) < 0) return NULL;
    if (sv.len < rd.ranks * (Py_ssize_t)sizeof(uint32_t)) {
        PyBuffer_Release(&sv);
        PyErr_SetString(PyExc_ValueError, "sizes holds fewer entries than ranks");
        return NULL;
    }
    uint32_t *sizes = (uint32_t *)sv.buf;
    Py_ssize_t r = look(&rd, expect, slot_bytes, sizes);
    if (r > 0 && budget > 0) {
        Py_BEGIN_ALLOW_THREADS
        double end = now_s() + budget;
        /* A few plain polls first: a peer on another core publishes within a microsecond or
         * two, and a yield costs a syscall. Then yield: on a shared core it hands the core
         * to the peer that has to publish. */
        for (int i = 0; i < 64 && r > 0; i++) {
            CPU_RELAX();
            r = look(&rd, expect, slot_bytes, sizes);
        }
        while (r > 0 && !load32(abort_flag) && now_s() < end) {
            sched_yield();
            r = look(&rd, expect, slot_bytes, sizes);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&sv);
    return PyLong_FromSsize_t(r);
}

/* The arena's reductions, in rank order (every rank computes the same bits): codes are
 * op * 16 + dtype, as runtime/reduce.py numbers them. Integers wrap as numpy's do (the
 * arithmetic runs unsigned); float min/max return a NaN operand, as np.minimum/maximum do;
 * bool is 0/1 bytes under logical ops. */
enum { D_F32, D_F64, D_I8, D_I16, D_I32, D_I64, D_U8, D_U16, D_U32, D_U64, D_BOOL, D_COUNT };
enum { R_SUM, R_PROD, R_MIN, R_MAX, R_BAND, R_BOR, R_BXOR, R_COUNT };
static const size_t dsize[D_COUNT] = {4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1};

#define FLOAT_CASES(T, D)                                                                       \
    case R_SUM * 16 + D: REDUCE(T, a + b);                                                      \
    case R_PROD * 16 + D: REDUCE(T, a * b);                                                     \
    case R_MIN * 16 + D: REDUCE(T, (a < b || a != a) ? a : b);                                  \
    case R_MAX * 16 + D: REDUCE(T, (a > b || a != a) ? a : b);
#define INT_CASES(T, U, D)                                                                      \
    case R_SUM * 16 + D: REDUCE(T, (T)((U)a + (U)b));                                           \
    case R_PROD * 16 + D: REDUCE(T, (T)((U)a * (U)b));                                          \
    case R_MIN * 16 + D: REDUCE(T, a < b ? a : b);                                              \
    case R_MAX * 16 + D: REDUCE(T, a > b ? a : b);                                              \
    case R_BAND * 16 + D: REDUCE(T, a & b);                                                     \
    case R_BOR * 16 + D: REDUCE(T, a | b);                                                      \
    case R_BXOR * 16 + D: REDUCE(T, a ^ b);
#define REDUCE(T, EXPR)                                                                         \
    do {                                                                                        \
        T *o = (T *)out;                                                                        \
        memcpy(out, t[0].slot[slot].data + offset, nbytes);                                     \
        for (Py_ssize_t p = 1; p < ranks; p++) {                                                \
            const T *s = (const T *)(t[p].slot[slot].data + offset);                            \
            for (size_t i = 0; i < m; i++) {                                                    \
                T a = o[i], b = s[i];                                                           \
                o[i] = (EXPR);                                                                  \
            }                                                                                   \
        }                                                                                       \
        return 1;                                                                               \
    } while (0)

static int reduce_rows(const RankAddrs *t, Py_ssize_t ranks, Py_ssize_t slot, size_t offset,
                       size_t nbytes, int code, unsigned char *out) {
    size_t m = nbytes / dsize[code % 16];
    switch (code) {
        FLOAT_CASES(float, D_F32)
        FLOAT_CASES(double, D_F64)
        INT_CASES(int8_t, uint8_t, D_I8)
        INT_CASES(int16_t, uint16_t, D_I16)
        INT_CASES(int32_t, uint32_t, D_I32)
        INT_CASES(int64_t, uint64_t, D_I64)
        INT_CASES(uint8_t, uint8_t, D_U8)
        INT_CASES(uint16_t, uint16_t, D_U16)
        INT_CASES(uint32_t, uint32_t, D_U32)
        INT_CASES(uint64_t, uint64_t, D_U64)
    case R_SUM * 16 + D_BOOL: case R_MAX * 16 + D_BOOL: case R_BOR * 16 + D_BOOL:
        REDUCE(uint8_t, (uint8_t)(a || b));
    case R_PROD * 16 + D_BOOL: case R_MIN * 16 + D_BOOL: case R_BAND * 16 + D_BOOL:
        REDUCE(uint8_t, (uint8_t)(a && b));
    case R_BXOR * 16 + D_BOOL:
        REDUCE(uint8_t, (uint8_t)(!a != !b));
    }
    return 0;
}

/* The (table, slot, ...) arguments the calls that read a finished round start with. */
static int read_slot(PyObject *const *args, Py_ssize_t *ranks, const RankAddrs **t,
                     Py_ssize_t *slot) {
    if (read_table(args[0], ranks, t) < 0) return -1;
    *slot = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred()) return -1;
    if (*slot < 0 || *slot > 1) {
        PyErr_SetString(PyExc_ValueError, "slot out of range");
        return -1;
    }
    return 0;
}

/* reduce_slots(table, slot, offset, slot_bytes, code, out) -> bool: out = every rank's slot
 * bytes [offset, offset + len(out)) reduced in rank order by ``code`` (after a round in which
 * every part was checked to be at least that long). False, with out untouched, for a code
 * without a C loop or an out misaligned for its dtype: the caller reduces in numpy. */
static PyObject *py_reduce_slots(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Py_ssize_t ranks, slot;
    const RankAddrs *t;
    if (!nargs_ok(n, 6, "reduce_slots") || read_slot(args, &ranks, &t, &slot) < 0) return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    Py_ssize_t slot_bytes = PyLong_AsSsize_t(args[3]);
    long code = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset out of range");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(args[5], &v, PyBUF_WRITABLE) < 0) return NULL;
    int done = 0;
    if (offset + v.len > slot_bytes) {
        PyErr_SetString(PyExc_ValueError, "offset and out reach past a slot");
    } else if (code >= 0 && code < R_COUNT * 16 && code % 16 < D_COUNT &&
               (uintptr_t)v.buf % dsize[code % 16] == 0 && offset % dsize[code % 16] == 0 &&
               v.len % dsize[code % 16] == 0) {
        done = reduce_rows(t, ranks, slot, (size_t)offset, (size_t)v.len, (int)code,
                           (unsigned char *)v.buf);
    }
    PyBuffer_Release(&v);
    if (PyErr_Occurred()) return NULL;
    return PyBool_FromLong(done);
}

/* gather_slots(table, slot, slot_bytes, out): out = every rank's slot bytes [0, len(out) /
 * ranks), in rank order (after a round in which every part was checked to be that long). */
static PyObject *py_gather_slots(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Py_ssize_t ranks, slot;
    const RankAddrs *t;
    if (!nargs_ok(n, 4, "gather_slots") || read_slot(args, &ranks, &t, &slot) < 0) return NULL;
    Py_ssize_t slot_bytes = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[3], &v, PyBUF_WRITABLE) < 0) return NULL;
    if (v.len % ranks != 0 || v.len / ranks > slot_bytes) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "out is not a whole number of parts of a slot at most");
        return NULL;
    }
    size_t part = (size_t)(v.len / ranks);
    for (Py_ssize_t p = 0; p < ranks; p++)
        memcpy((unsigned char *)v.buf + (size_t)p * part, t[p].slot[slot].data, part);
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"futex_wait", (PyCFunction)(void (*)(void))py_futex_wait, METH_FASTCALL,
     "futex_wait(addr, expected, timeout_s): sleep while the word at addr equals expected."},
    {"futex_wake", py_futex_wake, METH_O, "futex_wake(addr): wake every sleeper on addr."},
    {"ring", (PyCFunction)(void (*)(void))py_ring, METH_FASTCALL,
     "ring(bell_addr, sleeping_addr): bump a doorbell, waking its owner if it sleeps."},
    {"settle", py_settle, METH_O,
     "settle(cpu) -> bool: move this thread to cpu if it runs elsewhere, keeping its mask."},
    {"yield_until", (PyCFunction)(void (*)(void))py_yield_until, METH_FASTCALL,
     "yield_until(addr, seen, budget_s) -> bool: yield until the word moves past seen."},
    {"publish", (PyCFunction)(void (*)(void))py_publish, METH_FASTCALL,
     "publish(table, rank, slot, step, seq, desc, payload, slot_bytes): write, publish a slot."},
    {"wait_slots", (PyCFunction)(void (*)(void))py_wait_slots, METH_FASTCALL,
     "wait_slots(table, rank, slot, step, seq, desc, expect, slot_bytes, sizes, abort_addr, "
     "budget_s) -> pending peers, or -(1 + p) for a peer out of step."},
    {"reduce_slots", (PyCFunction)(void (*)(void))py_reduce_slots, METH_FASTCALL,
     "reduce_slots(table, slot, offset, slot_bytes, code, out) -> bool: reduce every rank's "
     "slot bytes into out, in rank order (False: no C loop for code; out untouched)."},
    {"gather_slots", (PyCFunction)(void (*)(void))py_gather_slots, METH_FASTCALL,
     "gather_slots(table, slot, slot_bytes, out): every rank's slot bytes into out, in rank "
     "order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The hot loops of shared-memory waits (see _native.c).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "HAVE_FUTEX", HAVE_FUTEX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
