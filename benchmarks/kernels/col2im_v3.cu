// col2im v3: gather in stride-phase order (dilation 1).
//
// Padded column xp = q*sw + r splits into a block q and a phase r. All pixels of one
// phase are reached by the same taps j = r, r + sw, r + 2*sw, ... from windows ow = q,
// q - 1, q - 2, ... So v3 numbers its threads (nc, y, r, q) with q fastest: a warp covers
// consecutive q of one phase, runs the same loop bounds without divergence, and reads
// consecutive col entries (coalesced) — paid for with image writes sw apart.
//
// Promoted: the kernel is the package's `col2im_phase` (minifcn/kernels/im2col.cu), kept as an
// include so that the benchmark times exactly what minifcn ships.
#include "../../minifcn/kernels/im2col.cu"
