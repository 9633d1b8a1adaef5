// col2im v4: gather, one thread per stride block of a row (dilation 1).
//
// Thread (nc, y, q) writes the sw pixels xp = q*sw + 0 .. q*sw + sw-1 of its row: it finds
// the row taps once and reuses them for every phase, and a warp of consecutive q reads
// consecutive col entries for each tap (coalesced) while together writing a contiguous
// stretch of 32*sw pixels. sw times fewer threads than v2, each doing sw pixels.
//
// Promoted: the kernel is the package's `col2im_rowblock` (minifcn/kernels/im2col.cu), kept as an
// include so that the benchmark times exactly what minifcn ships.
#include "../../minifcn/kernels/im2col.cu"
