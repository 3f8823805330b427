/*
 * Compiled RAM record walker (optional; vmig.stream.ram falls back to Python without it).
 *
 * Walks the page-carrying records of a ram section (migration/ram.c of QEMU 7.2:
 * save_page_header + save_zero_page / save_normal_page / save_xbzrle_page / compressed
 * pages) over a buffer and writes one row per record into the columns of a RamBatch. It
 * accepts only records that are complete and valid; at anything else (another record type,
 * a bad record, an incomplete one) it stops and leaves that record to the Python walker,
 * which decides and words every error. The flag values and limits come from the caller.
 *
 * walk(buf, pos, end, stop, abs_base, page_size, last_block, used, names, flags, out, cap)
 *   buf        the bytes (any buffer); records are read from buf[pos:end]
 *   stop       stop before a record starting at index >= stop (the batch is full)
 *   abs_base   absolute stream offset of buf[0]
 *   last_block index of the block named last (-1 = none)
 *   used       native uint64 array: used_length of each block of the MEM_SIZE list
 *   names      tuple of bytes: the block idstrs, same order
 *   flags      (ZERO, PAGE, CONTINUE, XBZRLE, COMPRESS_PAGE, XBZRLE encoding byte, compress bound)
 *   out        None (count only) or 7 writable arrays: offset i64, flags u16, block i32,
 *              addr u64, data_offset i64, data_length i64, has_idstr bool
 *   cap        at most this many records
 *   tally      optional writable native uint64[8]: records added per type, index
 *              2 * type + CONTINUE with type 0 ZERO, 1 PAGE, 2 XBZRLE, 3 COMPRESS_PAGE
 *              (lets a count-only walk report record kinds without columns)
 * returns (records, pos, last_block, status): status 0 = reached stop, 1 = cap reached,
 *   2 = the record at pos is for the Python walker.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t rd_be64(const unsigned char *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

enum { ST_STOP = 0, ST_CAP = 1, ST_OTHER = 2 };
#define NCOLS 7

static PyObject *walk(PyObject *self, PyObject *args)
{
    Py_buffer buf, usedb, tallyb;
    Py_ssize_t pos, end, stop, cap;
    long long abs_base, page_size, last_block;
    PyObject *names, *flags, *out, *tally = Py_None;
    if (!PyArg_ParseTuple(args, "y*nnnLLLy*O!O!On|O", &buf, &pos, &end, &stop, &abs_base, &page_size,
                          &last_block, &usedb, &PyTuple_Type, &names, &PyTuple_Type, &flags, &out, &cap,
                          &tally))
        return NULL;

    Py_buffer cols[NCOLS];
    int ncols = 0;
    int have_tally = 0;
    PyObject *result = NULL;
    long long fl[7];
    const char **nm_ptr = NULL;
    Py_ssize_t *nm_len = NULL;
    Py_ssize_t nblocks = PyTuple_GET_SIZE(names);

    if (PyTuple_GET_SIZE(flags) != 7 || usedb.len != (Py_ssize_t)(nblocks * sizeof(uint64_t)) ||
        page_size <= 0 || (page_size & (page_size - 1)) || pos < 0 || end > buf.len || cap < 0) {
        PyErr_SetString(PyExc_ValueError, "walk: inconsistent arguments");
        goto done;
    }
    for (int i = 0; i < 7; i++) {
        fl[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(flags, i));
        if (fl[i] == -1 && PyErr_Occurred())
            goto done;
    }
    /* the names, read without the GIL below */
    nm_ptr = PyMem_Malloc(sizeof(*nm_ptr) * (size_t)(nblocks + 1));
    nm_len = PyMem_Malloc(sizeof(*nm_len) * (size_t)(nblocks + 1));
    if (!nm_ptr || !nm_len) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nblocks; i++) {
        PyObject *nm = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_Check(nm)) {
            PyErr_SetString(PyExc_TypeError, "walk: block names must be bytes");
            goto done;
        }
        nm_ptr[i] = PyBytes_AS_STRING(nm);
        nm_len[i] = PyBytes_GET_SIZE(nm);
    }
    if (out != Py_None) {
        if (!PyTuple_Check(out) || PyTuple_GET_SIZE(out) != NCOLS) {
            PyErr_SetString(PyExc_TypeError, "walk: out must be None or 7 arrays");
            goto done;
        }
        static const Py_ssize_t itemsize[NCOLS] = {8, 2, 4, 8, 8, 8, 1};
        for (; ncols < NCOLS; ncols++) {
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(out, ncols), &cols[ncols], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
                goto done;
            if (cols[ncols].len < cap * itemsize[ncols]) {
                ncols++;
                PyErr_SetString(PyExc_ValueError, "walk: output array shorter than cap");
                goto done;
            }
        }
    }

    if (tally != Py_None) {
        if (PyObject_GetBuffer(tally, &tallyb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        have_tally = 1;
        if (tallyb.len < 8 * (Py_ssize_t)sizeof(uint64_t)) {
            PyErr_SetString(PyExc_ValueError, "walk: tally must hold 8 uint64");
            goto done;
        }
    }
    {
        const unsigned char *b = (const unsigned char *)buf.buf;
        uint64_t *t_kind = have_tally ? (uint64_t *)tallyb.buf : NULL;
        const uint64_t *used = (const uint64_t *)usedb.buf;
        const uint64_t mask = (uint64_t)page_size - 1;
        const uint64_t f_zero = fl[0], f_page = fl[1], f_cont = fl[2], f_xbz = fl[3], f_comp = fl[4];
        const unsigned xbz_enc = (unsigned)fl[5];
        const uint64_t comp_bound = (uint64_t)fl[6];
        int64_t *c_off = ncols ? cols[0].buf : NULL;
        uint16_t *c_flags = ncols ? cols[1].buf : NULL;
        int32_t *c_blk = ncols ? cols[2].buf : NULL;
        uint64_t *c_addr = ncols ? cols[3].buf : NULL;
        int64_t *c_doff = ncols ? cols[4].buf : NULL;
        int64_t *c_dlen = ncols ? cols[5].buf : NULL;
        unsigned char *c_id = ncols ? cols[6].buf : NULL;
        Py_ssize_t n = 0;
        Py_ssize_t p = pos;
        long long blk = last_block;
        int status;

        Py_BEGIN_ALLOW_THREADS
        for (;;) {
            if (p >= stop) { status = ST_STOP; break; }
            if (n >= cap) { status = ST_CAP; break; }
            if (end - p < 8) { status = ST_OTHER; break; }
            uint64_t w = rd_be64(b + p);
            uint64_t f = w & mask, addr = w & ~mask;
            uint64_t typ = f & ~f_cont;
            Py_ssize_t q = p + 8;
            long long rb;
            int has_id = 0;
            uint64_t dlen;
            if (typ != f_zero && typ != f_page && typ != f_xbz && typ != f_comp) { status = ST_OTHER; break; }
            if (f & f_cont) {
                rb = blk;
                if (rb < 0 || rb >= nblocks) { status = ST_OTHER; break; }
            } else {
                if (end - q < 1) { status = ST_OTHER; break; }
                Py_ssize_t len = b[q];
                if (end - q - 1 < len) { status = ST_OTHER; break; }
                rb = -1;
                for (Py_ssize_t i = 0; i < nblocks; i++) {
                    if (nm_len[i] == len && memcmp(nm_ptr[i], b + q + 1, (size_t)len) == 0) {
                        rb = i;
                        break;
                    }
                }
                if (rb < 0) { status = ST_OTHER; break; }
                q += 1 + len;
                has_id = 1;
            }
            if (addr >= used[rb]) { status = ST_OTHER; break; }
            if (typ == f_zero) {
                dlen = 1;
            } else if (typ == f_page) {
                dlen = (uint64_t)page_size;
            } else if (typ == f_xbz) {
                if (end - q < 3 || b[q] != xbz_enc) { status = ST_OTHER; break; }
                dlen = ((uint64_t)b[q + 1] << 8) | b[q + 2];
                if (dlen > (uint64_t)page_size) { status = ST_OTHER; break; }
                q += 3;
            } else {
                if (end - q < 4) { status = ST_OTHER; break; }
                dlen = ((uint64_t)b[q] << 24) | ((uint64_t)b[q + 1] << 16) | ((uint64_t)b[q + 2] << 8) | b[q + 3];
                if (dlen > comp_bound) { status = ST_OTHER; break; }
                q += 4;
            }
            if ((uint64_t)(end - q) < dlen) { status = ST_OTHER; break; }
            if (c_off) {
                c_off[n] = abs_base + p;
                c_flags[n] = (uint16_t)f;
                c_blk[n] = (int32_t)rb;
                c_addr[n] = addr;
                c_doff[n] = abs_base + q;
                c_dlen[n] = (int64_t)dlen;
                c_id[n] = (unsigned char)has_id;
            }
            if (t_kind) {
                int ti = typ == f_zero ? 0 : typ == f_page ? 1 : typ == f_xbz ? 2 : 3;
                t_kind[2 * ti + ((f & f_cont) ? 1 : 0)]++;
            }
            n++;
            blk = rb;
            p = q + (Py_ssize_t)dlen;
        }
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("nnLi", n, p, blk, status);
    }

done:
    PyMem_Free(nm_ptr);
    PyMem_Free(nm_len);
    for (int i = 0; i < ncols; i++)
        PyBuffer_Release(&cols[i]);
    if (have_tally)
        PyBuffer_Release(&tallyb);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&usedb);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "Walk valid page-carrying RAM records into column arrays (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vmig.stream._ramwalk", "Compiled RAM record walker (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__ramwalk(void)
{
    return PyModule_Create(&module);
}
