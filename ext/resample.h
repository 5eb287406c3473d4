/* LANCZOS resize of 8-bit greyscale images, byte-identical to Pillow's
 * Image.resize(size, Image.Resampling.LANCZOS) on mode "L" with the full
 * image as the box (src/libImaging/Resample.c).
 *
 * Same coefficients (computed in double with the same operations, in the same
 * order, then rounded to 22-bit fixed point), same two passes (horizontal over
 * the rows the vertical pass reads, then vertical, or the other way round
 * where Pillow 13 does; each skipped when its size does not change), same
 * rounding and clipping.  The integer multiply-adds are exact, so the AVX2
 * kernels may sum them in any order.
 */
#ifndef HASHSIEVE_RESAMPLE_H
#define HASHSIEVE_RESAMPLE_H

#include <stddef.h>
#include <stdint.h>

enum {
    HS_RS_AUTO = -1,     /* best kernel this CPU supports */
    HS_RS_GENERIC = 0,   /* portable C, Pillow's loops */
    HS_RS_AVX2 = 1,
};

/* 1 if this CPU can run the kernel `isa`. */
int hs_rs_isa_supported(int isa);

/* Resize src (in_h rows of in_w bytes, rows src_stride bytes apart) to
 * out_w x out_h into dst (out_h rows of out_w bytes, contiguous).
 * vfirst_rule: 1 = Pillow >= 13's pass order (vertical first when the height
 * shrinks by more than twice as many pixels as the width), 0 = older Pillow
 * (always horizontal first).  The order changes the result: the first pass is
 * rounded to 8 bits.
 * isa: HS_RS_AUTO or a kernel (must be supported).
 * Returns 0, -1 when out of memory, -2 on bad arguments. */
int hs_lanczos_l(const uint8_t *src, ptrdiff_t src_stride, int in_w, int in_h,
                 uint8_t *dst, int out_w, int out_h, int vfirst_rule, int isa);

/* The coefficients of one axis (in_size -> out_size samples), reusable across
 * calls and threads (read-only once built): computing them costs two sin()
 * per tap, often more than the resize itself on small images. */
typedef struct hs_rs_axis hs_rs_axis;

hs_rs_axis *hs_rs_axis_new(int in_size, int out_size);     /* NULL: no memory */
void hs_rs_axis_free(hs_rs_axis *ax);
size_t hs_rs_axis_bytes(const hs_rs_axis *ax);

/* hs_lanczos_l with prebuilt axes: ax_w for in_w -> out_w (may be NULL when
 * they are equal), ax_h for in_h -> out_h (likewise). */
int hs_rs_lanczos(const uint8_t *src, ptrdiff_t src_stride, int in_w, int in_h,
                  uint8_t *dst, int out_w, int out_h,
                  const hs_rs_axis *ax_w, const hs_rs_axis *ax_h, int vfirst_rule, int isa);

#endif
