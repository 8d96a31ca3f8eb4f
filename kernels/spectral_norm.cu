// CUDA kernels of the grouped spectral-norm power iteration (see csrc/spectral_norm.cpp for the update rule).
// Up to kSpectralChunk matrices per launch (their pointers travel in the kernel's parameters); one step of
// every matrix of a chunk is four launches whatever the number of matrices:
//   matvec      t = W v                 one warp per row
//   normalize   u = t / max(|t|, eps)   one block per matrix
//   matvec_t    partial[k] = W_k^T u    one thread per column, one block row per chunk k of rows
//   finish      s = sum_k partial[k];  v = s / max(|s|, eps);  sigma = |s|^2 / max(|s|, eps)
// All arithmetic in float32; the float32 u, v live in the workspace between steps. Sums are in a fixed order.
// The launcher is declared in launchers.h.
#include "common.cuh"

namespace fastgen {
namespace cuda {

constexpr int kSpectralChunk = 24;  // matrices per launch: 24 * 84 bytes of parameters, under the 4 KiB limit

struct SpectralChunk {
  const void* w[kSpectralChunk];   // (rows, cols) matrix
  const void* u[kSpectralChunk];   // (rows,) input u
  const void* v[kSpectralChunk];   // (cols,) input v
  void* u_out[kSpectralChunk];     // (rows,) output u
  void* v_out[kSpectralChunk];     // (cols,) output v
  float* u32[kSpectralChunk];      // (rows,) workspace: W v, then u
  float* v32[kSpectralChunk];      // (cols,) workspace: v
  float* partial[kSpectralChunk];  // (chunks, cols) workspace: W^T u by chunk of rows
  int64_t rows[kSpectralChunk];
  int64_t cols[kSpectralChunk];
  int chunks[kSpectralChunk];      // spectral_norm_row_chunks(rows)
  float* sigma;                    // (matrices of this chunk,) output
};

namespace {

constexpr int kWarps = kThreads / 32;

// blockIdx.y: the matrix. v32 <- v (the float32 copy the steps read).
template <typename T>
__global__ void load_v_kernel(SpectralChunk c) {
  const int m = blockIdx.y;
  const T* v = static_cast<const T*>(c.v[m]);
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < c.cols[m];
       j += static_cast<int64_t>(gridDim.x) * kThreads) {
    c.v32[m][j] = load(v, j);
  }
}

// u32 = W v32: one warp per row (rows x * kWarps + warp, striding by the grid).
template <typename T>
__global__ void matvec_kernel(SpectralChunk c) {
  const int m = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int64_t cols = c.cols[m];
  const float* v = c.v32[m];
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); row < c.rows[m];
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T* w = static_cast<const T*>(c.w[m]) + row * cols;
    float acc = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) acc += load(w, j) * v[j];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (lane == 0) c.u32[m][row] = acc;
  }
}

// u32 <- u32 / max(|u32|, eps): one block per matrix.
__global__ void normalize_kernel(SpectralChunk c, float eps) {
  __shared__ float shared[kWarps];
  const int m = blockIdx.x;
  float* u = c.u32[m];
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < c.rows[m]; i += kThreads) sum += u[i] * u[i];
  const float scale = 1.0f / fmaxf(sqrtf(block_sum(sum, shared)), eps);
  for (int64_t i = threadIdx.x; i < c.rows[m]; i += kThreads) u[i] *= scale;
}

// partial[k, j] = sum over rows r of chunk k of W[r, j] u32[r]: one thread per column j (striding by the grid),
// block row k.
template <typename T>
__global__ void matvec_t_kernel(SpectralChunk c) {
  const int m = blockIdx.z;
  const int k = blockIdx.y;
  const int64_t rows = c.rows[m], cols = c.cols[m];
  const int chunks = c.chunks[m];
  if (k >= chunks) return;
  const T* w = static_cast<const T*>(c.w[m]);
  const float* u = c.u32[m];
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < cols;
       j += static_cast<int64_t>(gridDim.x) * kThreads) {
    float acc = 0.0f;
    for (int64_t r = k * rows / chunks; r < (k + 1) * rows / chunks; ++r) acc += load(w, r * cols + j) * u[r];
    c.partial[m][k * cols + j] = acc;
  }
}

// v32 = s / max(|s|, eps) with s = sum_k partial[k]; sigma = |s|^2 / max(|s|, eps); one block per matrix.
__global__ void finish_kernel(SpectralChunk c, float eps) {
  __shared__ float shared[kWarps];
  const int m = blockIdx.x;
  const int64_t cols = c.cols[m];
  float* v = c.v32[m];
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
    float s = 0.0f;
    for (int k = 0; k < c.chunks[m]; ++k) s += c.partial[m][k * cols + j];
    v[j] = s;
    sum += s * s;
  }
  const float norm = sqrtf(block_sum(sum, shared));
  const float scale = 1.0f / fmaxf(norm, eps);
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) v[j] *= scale;
  if (threadIdx.x == 0) c.sigma[m] = norm * norm * scale;
}

// Outputs in the weights' dtype: u_out = u32, v_out = v32.
template <typename T>
__global__ void store_kernel(SpectralChunk c) {
  const int m = blockIdx.y;
  T* u_out = static_cast<T*>(c.u_out[m]);
  T* v_out = static_cast<T*>(c.v_out[m]);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < c.rows[m] || i < c.cols[m];
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    if (i < c.rows[m]) store(u_out, i, c.u32[m][i]);
    if (i < c.cols[m]) store(v_out, i, c.v32[m][i]);
  }
}

// No iteration: sigma = u^T (W v) with u32 = W v, u and v copied to the outputs; one block per matrix.
template <typename T>
__global__ void evaluate_kernel(SpectralChunk c) {
  __shared__ float shared[kWarps];
  const int m = blockIdx.x;
  const T* u = static_cast<const T*>(c.u[m]);
  const T* v = static_cast<const T*>(c.v[m]);
  T* u_out = static_cast<T*>(c.u_out[m]);
  T* v_out = static_cast<T*>(c.v_out[m]);
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < c.rows[m]; i += kThreads) {
    const float ui = load(u, i);
    sum += ui * c.u32[m][i];
    store(u_out, i, ui);
  }
  for (int64_t j = threadIdx.x; j < c.cols[m]; j += kThreads) store(v_out, j, load(v, j));
  const float sigma = block_sum(sum, shared);
  if (threadIdx.x == 0) c.sigma[m] = sigma;
}

unsigned blocks_for(int64_t n, int64_t per_block) {
  const int64_t wanted = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(wanted < 1 ? 1 : (wanted < 65535 ? wanted : 65535));
}

template <typename T>
cudaError_t launch(const SpectralNormArgs& a, cudaStream_t stream) {
  float* workspace = a.workspace;
  for (int first = 0; first < a.count; first += kSpectralChunk) {
    const int n = a.count - first < kSpectralChunk ? a.count - first : kSpectralChunk;
    SpectralChunk c;
    int64_t max_rows = 0, max_cols = 0;
    int max_chunks = 1;
    for (int m = 0; m < n; ++m) {
      const int t = first + m;
      c.w[m] = a.weights[t];
      c.u[m] = a.us[t];
      c.v[m] = a.vs[t];
      c.u_out[m] = a.us_out[t];
      c.v_out[m] = a.vs_out[t];
      c.rows[m] = a.rows[t];
      c.cols[m] = a.cols[t];
      c.chunks[m] = static_cast<int>(spectral_norm_row_chunks(a.rows[t]));
      c.u32[m] = workspace;
      c.v32[m] = workspace + a.rows[t];
      c.partial[m] = workspace + a.rows[t] + a.cols[t];
      workspace += spectral_norm_workspace(a.rows[t], a.cols[t]);
      max_rows = a.rows[t] > max_rows ? a.rows[t] : max_rows;
      max_cols = a.cols[t] > max_cols ? a.cols[t] : max_cols;
      max_chunks = c.chunks[m] > max_chunks ? c.chunks[m] : max_chunks;
    }
    c.sigma = a.sigmas + first;
    const unsigned longest = blocks_for(max_rows > max_cols ? max_rows : max_cols, kThreads);
    load_v_kernel<T><<<dim3(blocks_for(max_cols, kThreads), n), kThreads, 0, stream>>>(c);
    if (a.n_power_iterations == 0) {
      matvec_kernel<T><<<dim3(blocks_for(max_rows, kWarps), n), kThreads, 0, stream>>>(c);
      evaluate_kernel<T><<<n, kThreads, 0, stream>>>(c);
    } else {
      for (int it = 0; it < a.n_power_iterations; ++it) {
        matvec_kernel<T><<<dim3(blocks_for(max_rows, kWarps), n), kThreads, 0, stream>>>(c);
        normalize_kernel<<<n, kThreads, 0, stream>>>(c, a.eps);
        matvec_t_kernel<T><<<dim3(blocks_for(max_cols, kThreads), max_chunks, n), kThreads, 0, stream>>>(c);
        finish_kernel<<<n, kThreads, 0, stream>>>(c, a.eps);
      }
      store_kernel<T><<<dim3(longest, n), kThreads, 0, stream>>>(c);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t spectral_norm_power(const SpectralNormArgs& args, cudaStream_t stream) {
  if (args.count == 0) return cudaSuccess;
  switch (args.dtype) {
    case kFloat16:
      return launch<__half>(args, stream);
    case kBFloat16:
      return launch<__nv_bfloat16>(args, stream);
    default:
      return launch<float>(args, stream);
  }
}

}  // namespace cuda
}  // namespace fastgen
