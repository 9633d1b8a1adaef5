// col2im v2: gather, one thread per image pixel — the package's kernel itself.
//
// Each thread solves oh*sh + i*dh == y + ph for the taps of its stride phase only (for a
// 64x64 kernel with stride 32, 2x2 of the 4096 taps), sums those col entries and writes
// its pixel once: no atomics, no zeroing pass, the same bits every run. Neighbouring
// threads sit in different stride phases, so their col reads are scattered.
//
// Kept as an include so that the benchmark always times exactly what minifcn ships.
#include "../../minifcn/kernels/im2col.cu"
