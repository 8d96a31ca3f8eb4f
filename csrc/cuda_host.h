// What a loop's CUDA entries use on the host when built with CUDA: the device guard, the current stream, the error
// check, and the launchers of kernels/*.cu (launchers.h). Nothing without FASTGEN_WITH_CUDA.
#pragma once

#ifdef FASTGEN_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../kernels/launchers.h"
#endif
