// Numbers shared by Python, C++, CUDA and Triton: named in fastgen/core/constants.py, mirrored here
// (tests/test_constants.py checks that the two agree). Plain C++, no torch: nvcc and the host code include it.
#pragma once

// Functions compiled for the host and, under nvcc, for the device too: the per-element maths that the CPU and CUDA
// backends share (kernels/<loop>.h).
#if defined(__CUDACC__)
#define FASTGEN_HD __host__ __device__ __forceinline__
#else
#define FASTGEN_HD inline __attribute__((always_inline))
#endif

namespace fastgen {

// What a diffusion model returns (fastgen.constants.Prediction).
enum Prediction : int { kEps = 0, kX0 = 1, kV = 2, kScore = 3, kVelocity = 4 };

// What a diffusion step leaves in aux (fastgen.constants.AuxStore).
enum AuxStore : int { kAuxNone = 0, kAuxX0 = 1, kAuxIncrement = 2, kAuxEps = 3 };

// Columns of a diffusion coefficient row (fastgen.constants.Coef).
enum Coef : int {
  kAlpha = 0, kSigma = 1, kK = 2, kCX = 3, kCX0 = 4, kCEps = 5, kCAux = 6, kCNoise = 7, kDAlpha = 8, kDSigma = 9
};
constexpr int kCoefWidth = 10;

// How an affine coupling's log-scale comes from its logits (fastgen.constants.ScaleMode).
enum ScaleMode : int { kSoftClamp = 0, kSigmoid = 1 };

// Limits of the in-register Gaussian-mixture Langevin kernel (fastgen.constants.MAX_GMM_*).
constexpr int kMaxGmmDim = 64;
constexpr int kMaxGmmComponents = 64;

}  // namespace fastgen
