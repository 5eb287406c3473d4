/* PDQ (Meta's 256-bit perceptual hash), bit-identical to the reference C++
 * (facebook/ThreatExchange pdq/cpp) as the pdqhash package calls it.
 *
 * Thread-safe: every call allocates its own scratch; the only shared state is
 * the DCT matrix, filled once by pdq_init() before any other call.
 */
#ifndef HASHSIEVE_PDQ_H
#define HASHSIEVE_PDQ_H

#include <stdint.h>

/* Fill the DCT matrix.  Call once (at module import) before anything else. */
void pdq_init(void);

/* The 16x16 DCT coefficients (row-major) and the quality (0..100) of an
 * image of rows x cols pixels, C-contiguous, `channels` bytes per pixel:
 * 1 = greyscale (hashed as the grey value stacked into R, G and B), 3 or more
 * = R, G, B first (the rest ignored).  filter_64 = 0 hashes a 64x64 image
 * without the blur, as the reference's single hash does; 1 always blurs, as
 * its dihedral hash does.  use_avx2 = 1 runs the AVX2 kernels when the CPU
 * has them, 0 the portable C (same results; for testing).  Images under 5 px
 * on a side give zero coefficients and quality 0.  Returns 0, or -1 when out
 * of memory. */
int pdq_coefficients(const uint8_t *pixels, int rows, int cols, int channels,
                     int filter_64, int use_avx2, float coeffs[256], int *quality);

/* The hash of 16x16 coefficients: bit k (k = 16 i + j, coefficient row i,
 * column j) is set when that coefficient is above their median, and is bit
 * k & 7 of byte 31 - k / 8, so the 32 bytes read as one big-endian integer
 * are python-threatexchange's hex. */
void pdq_bits(const float coeffs[256], uint8_t out[32]);

/* The 8 dihedral hashes (8 x 32 bytes) from the coefficients, in the order
 * pdqhash.compute_dihedral returns them: original, rotated 90, 180, 270,
 * flipped about x, about y, about the main diagonal, about the other one. */
void pdq_dihedral_bits(const float coeffs[256], uint8_t out[8 * 32]);

#endif
