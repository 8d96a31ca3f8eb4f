// CUDA kernel of the multi-tensor EMA: averages[t] <- averages[t] + weight (values[t] - averages[t]) for every
// tensor pair t, up to kEmaChunk pairs per launch (their pointers travel in the kernel's parameters).
// The launcher is declared in launchers.h (a mismatch is a link error: C++ names carry their parameter types).
#include "common.cuh"

namespace fastgen {
namespace cuda {

constexpr int kEmaChunk = 48;  // pairs per launch: 48 * 24 bytes of parameters, well under the 4 KiB limit

struct EmaChunk {
  void* averages[kEmaChunk];       // updated in place
  const void* values[kEmaChunk];   // same dtype and size as the average
  int64_t numels[kEmaChunk];
};

namespace {

// blockIdx.y: the pair; blockIdx.x and threads: a grid-stride loop over its elements.
template <typename T>
__global__ void ema_kernel(EmaChunk chunk, float weight) {
  const int t = blockIdx.y;
  T* average = static_cast<T*>(chunk.averages[t]);
  const T* value = static_cast<const T*>(chunk.values[t]);
  const int64_t n = chunk.numels[t];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float a = load(average, i);
    store(average, i, a + weight * (load(value, i) - a));
  }
}

template <typename T>
cudaError_t launch(void* const* averages, const void* const* values, const int64_t* numels, int count, float weight,
                   cudaStream_t stream) {
  for (int first = 0; first < count; first += kEmaChunk) {
    EmaChunk chunk;
    const int pairs = count - first < kEmaChunk ? count - first : kEmaChunk;
    int64_t largest = 0;
    for (int t = 0; t < pairs; ++t) {
      chunk.averages[t] = averages[first + t];
      chunk.values[t] = values[first + t];
      chunk.numels[t] = numels[first + t];
      largest = numels[first + t] > largest ? numels[first + t] : largest;
    }
    if (largest == 0) continue;
    const int64_t wanted = (largest + kThreads * kItemsPerThread - 1) / (kThreads * kItemsPerThread);
    const unsigned blocks = static_cast<unsigned>(wanted < 65535 ? wanted : 65535);
    ema_kernel<T><<<dim3(blocks, pairs), kThreads, 0, stream>>>(chunk, weight);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t ema_update(void* const* averages,      // (count,) device pointers, updated in place
                       const void* const* values,  // (count,) device pointers
                       const int64_t* numels,      // (count,) elements of each pair
                       int count,                  // number of tensor pairs
                       DType dtype,                // one dtype for every tensor
                       float weight,               // 1 - decay
                       cudaStream_t stream) {
  switch (dtype) {
    case kFloat16:
      return launch<__half>(averages, values, numels, count, weight, stream);
    case kBFloat16:
      return launch<__nv_bfloat16>(averages, values, numels, count, weight, stream);
    default:
      return launch<float>(averages, values, numels, count, weight, stream);
  }
}

}  // namespace cuda
}  // namespace fastgen
