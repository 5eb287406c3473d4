# PDQ hashing core (see pdq.h); the public API is hashsieve.pdq.
cimport numpy as cnp
from libc.stdint cimport uint8_t

import numpy as np

cnp.import_array()


cdef extern from "pdq.h" nogil:
    void pdq_init()
    int pdq_coefficients(const uint8_t *pixels, int rows, int cols, int channels,
                         int filter_64, int use_avx2, float *coeffs, int *quality)
    void pdq_bits(const float *coeffs, uint8_t *out)
    void pdq_dihedral_bits(const float *coeffs, uint8_t *out)


pdq_init()


cdef int _coefficients(cnp.ndarray pixels, bint filter_64, bint use_avx2, float *coeffs,
                      int *quality) except -1:
    """pdq_coefficients on a C-contiguous uint8 array (rows, cols) or (rows, cols, channels >= 3)
    checked by the caller, without the GIL."""
    cdef const uint8_t *px = <const uint8_t *>cnp.PyArray_DATA(pixels)
    cdef int rows = pixels.shape[0], cols = pixels.shape[1]
    cdef int channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    cdef int rc
    with nogil:
        rc = pdq_coefficients(px, rows, cols, channels, filter_64, use_avx2, coeffs, quality)
    if rc != 0:
        raise MemoryError(f"out of memory hashing a {rows}x{cols} image with PDQ")
    return 0


def coefficients(cnp.ndarray pixels, bint use_avx2=True):
    """(the 16x16 DCT coefficients as float32 (256,) row-major, quality) of pixels as for
    hash_pixels; for tests, which compare them with pdqhash.compute_float bit for bit."""
    out = np.empty(256, dtype=np.float32)
    cdef int quality = 0
    _coefficients(pixels, False, use_avx2, <float *>cnp.PyArray_DATA(out), &quality)
    return out, quality


def hash_pixels(cnp.ndarray pixels, bint dihedral, bint use_avx2=True):
    """(hash, quality) of a C-contiguous uint8 array (rows, cols) or (rows, cols, channels >= 3),
    checked by the caller; hash is uint8 (32,), or (8, 32) when dihedral.  use_avx2=False
    runs the portable C kernels (the same results; for tests)."""
    cdef float coeffs[256]
    cdef int quality = 0
    out = np.empty(256 if dihedral else 32, dtype=np.uint8)
    cdef uint8_t *o = <uint8_t *>cnp.PyArray_DATA(out)
    # The reference's dihedral hash blurs a 64x64 image; its single hash does not.
    _coefficients(pixels, dihedral, use_avx2, coeffs, &quality)
    if dihedral:
        pdq_dihedral_bits(coeffs, o)
        return out.reshape(8, 32), quality
    pdq_bits(coeffs, o)
    return out, quality
