# LANCZOS resize of greyscale images, byte-identical to Pillow's
# Image.resize(size, Image.Resampling.LANCZOS) on mode "L" (see resample.h).
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport strcmp

import numpy as np

cnp.import_array()


cdef extern from "resample.h" nogil:
    int HS_RS_AUTO
    ctypedef struct hs_rs_axis:
        pass
    int hs_rs_isa_supported(int isa)
    hs_rs_axis *hs_rs_axis_new(int in_size, int out_size)
    void hs_rs_axis_free(hs_rs_axis *ax)
    size_t hs_rs_axis_bytes(const hs_rs_axis *ax)
    int hs_rs_lanczos(const uint8_t *src, Py_ssize_t src_stride, int in_w, int in_h,
                      uint8_t *dst, int out_w, int out_h,
                      const hs_rs_axis *ax_w, const hs_rs_axis *ax_h, int vfirst_rule, int isa)


# The Arrow C data interface structs (stable ABI), to read a PIL image's
# pixels without the copy np.asarray(image) makes (~20 us for 300x300).
cdef extern from *:
    """
    struct ArrowSchema {
        const char *format; const char *name; const char *metadata;
        int64_t flags; int64_t n_children;
        struct ArrowSchema **children; struct ArrowSchema *dictionary;
        void (*release)(struct ArrowSchema *); void *private_data;
    };
    struct ArrowArray {
        int64_t length; int64_t null_count; int64_t offset;
        int64_t n_buffers; int64_t n_children;
        const void **buffers; struct ArrowArray **children; struct ArrowArray *dictionary;
        void (*release)(struct ArrowArray *); void *private_data;
    };
    """
    struct ArrowSchema:
        const char *format
        int64_t n_children
        void *release
    struct ArrowArray:
        int64_t length
        int64_t null_count
        int64_t offset
        int64_t n_buffers
        int64_t n_children
        const void **buffers
        void *release


ISA_NAMES = ("generic", "avx2")
# Which pass Pillow runs first: "pillow13" = vertical first when the height
# shrinks by more than twice as many pixels as the width (Pillow >= 13),
# "horizontal" = always horizontal first (older Pillow).
PASS_ORDERS = ("horizontal", "pillow13")


def supported_isas():
    """Names of the kernels this CPU can run, slowest first."""
    return tuple(name for i, name in enumerate(ISA_NAMES) if hs_rs_isa_supported(i))


cdef class _Axis:
    """Coefficients of one in_size -> out_size axis (owned C struct)."""
    cdef hs_rs_axis *ptr
    cdef readonly Py_ssize_t nbytes

    def __dealloc__(self):
        hs_rs_axis_free(self.ptr)


# Coefficients are two sin() per tap: for a 300 px side reduced to 32 that is
# ~50 us, as long as the resize itself.  Images of one size are common, so the
# axes are kept, oldest dropped first beyond CACHE_BYTES.
CACHE_BYTES = 16 << 20
cdef dict _cache = {}
cdef Py_ssize_t _cache_bytes = 0


cdef _Axis _axis(int n_in, int n_out):
    global _cache_bytes
    cdef _Axis ax
    cdef hs_rs_axis *p
    key = (n_in, n_out)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    with nogil:
        p = hs_rs_axis_new(n_in, n_out)
    if p == NULL:
        raise MemoryError("out of memory for resize coefficients")
    ax = _Axis.__new__(_Axis)
    ax.ptr = p
    ax.nbytes = hs_rs_axis_bytes(p)
    while _cache and _cache_bytes + ax.nbytes > CACHE_BYTES:
        old = _cache.pop(next(iter(_cache)))
        _cache_bytes -= (<_Axis>old).nbytes
    if ax.nbytes <= CACHE_BYTES:
        _cache[key] = ax
        _cache_bytes += ax.nbytes
    return ax


def clear_cache():
    """Drop the cached coefficients."""
    global _cache_bytes
    _cache.clear()
    _cache_bytes = 0


cdef _check_args(int out_w, int out_h, order, isa, int *vfirst, int *code):
    if order not in PASS_ORDERS:
        raise ValueError(f"order must be one of {PASS_ORDERS}, got {order!r}")
    vfirst[0] = PASS_ORDERS.index(order)
    code[0] = HS_RS_AUTO
    if isa is not None:
        if isa not in ISA_NAMES:
            raise ValueError(f"isa must be one of {ISA_NAMES} or None, got {isa!r}")
        code[0] = ISA_NAMES.index(isa)
        if not hs_rs_isa_supported(code[0]):
            raise ValueError(f"this CPU cannot run the {isa} kernel")
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"output size must be positive, got {out_w}x{out_h}")


cdef object _run(const uint8_t *src, Py_ssize_t stride, int in_w, int in_h, int out_w, int out_h,
                 int vfirst, int code):
    cdef _Axis ax_w = None, ax_h = None
    cdef const hs_rs_axis *pw = NULL
    cdef const hs_rs_axis *ph = NULL
    cdef int rc
    if out_w != in_w:
        ax_w = _axis(in_w, out_w)
        pw = ax_w.ptr
    if out_h != in_h:
        ax_h = _axis(in_h, out_h)
        ph = ax_h.ptr
    out = np.empty((out_h, out_w), dtype=np.uint8)
    cdef uint8_t[:, ::1] dst = out
    with nogil:
        rc = hs_rs_lanczos(src, stride, in_w, in_h, &dst[0, 0], out_w, out_h, pw, ph, vfirst, code)
    if rc == -1:
        raise MemoryError("out of memory in lanczos_l")
    if rc != 0:
        raise ValueError(f"cannot resize {in_w}x{in_h} to {out_w}x{out_h}")
    return out


def lanczos_image(image, int out_w, int out_h, order="pillow13", isa=None):
    """lanczos_l on the pixels of a mode "L" PIL image (loaded), read in place
    through the Arrow C data interface when Pillow exports it (recent Pillow,
    pixels in one memory block), else copied with np.asarray."""
    cdef int vfirst, code
    cdef ArrowSchema *schema
    cdef ArrowArray *array
    cdef const uint8_t *data
    _check_args(out_w, out_h, order, isa, &vfirst, &code)
    if image.mode != "L":
        raise ValueError(f"image mode must be L, got {image.mode}")
    image.load()
    cdef int in_w = image.size[0], in_h = image.size[1]
    if in_w <= 0 or in_h <= 0:
        raise ValueError("cannot resize an empty image")
    caps = None
    export = getattr(image.im, "__arrow_c_array__", None)
    if export is not None:
        try:
            caps = (image.im.__arrow_c_schema__(), export())
        except Exception:           # e.g. ValueError: rows in several blocks
            caps = None
    if caps is not None and PyCapsule_IsValid(caps[0], "arrow_schema") and PyCapsule_IsValid(caps[1], "arrow_array"):
        schema = <ArrowSchema *>PyCapsule_GetPointer(caps[0], "arrow_schema")
        array = <ArrowArray *>PyCapsule_GetPointer(caps[1], "arrow_array")
        if (schema.release != NULL and array.release != NULL and strcmp(schema.format, "C") == 0
                and schema.n_children == 0 and array.n_children == 0 and array.n_buffers == 2
                and array.offset == 0 and array.null_count == 0
                and array.length == <int64_t>in_w * in_h and array.buffers[1] != NULL):
            data = <const uint8_t *>array.buffers[1]
            # The capsules (alive in `caps`) keep the pixels alive and release
            # the export when collected.
            return _run(data, in_w, in_w, in_h, out_w, out_h, vfirst, code)
    return lanczos_l(np.asarray(image), out_w, out_h, order, isa)


def lanczos_l(const uint8_t[:, :] src not None, int out_w, int out_h, order="pillow13", isa=None):
    """Pillow's LANCZOS resize of a (height, width) uint8 array to (out_h, out_w).

    Rows may be strided but each row must be contiguous.  order: a name from
    PASS_ORDERS, the Pillow release to copy.  isa: None (the best kernel this
    CPU supports) or a name from ISA_NAMES, to test a kernel.
    """
    cdef int vfirst, code
    cdef int in_h = src.shape[0], in_w = src.shape[1]
    _check_args(out_w, out_h, order, isa, &vfirst, &code)
    if in_w <= 0 or in_h <= 0:
        raise ValueError("cannot resize an empty image")
    if in_w > 1 and src.strides[1] != 1:
        raise ValueError("rows of src must be contiguous")
    return _run(&src[0, 0], src.strides[0] if in_h > 1 else in_w, in_w, in_h, out_w, out_h, vfirst, code)
