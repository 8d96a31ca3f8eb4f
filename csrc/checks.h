// Argument checks shared by the ops: each message names the argument.
#pragma once

#include <torch/types.h>

#include "../kernels/constants.h"

// Error classes as the Python backends raise them: ValueError (shapes, devices, layouts, ranges), TypeError
// (dtypes), IndexError (an index out of range).
#define FASTGEN_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "fastgen: ", __VA_ARGS__)
#define FASTGEN_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "fastgen: ", __VA_ARGS__)
#define FASTGEN_CHECK_INDEX(cond, ...) TORCH_CHECK_INDEX(cond, "fastgen: ", __VA_ARGS__)

#define CHECK_DEVICE(t, ref)                                                                            \
  FASTGEN_CHECK((t).device() == (ref).device(), #t " must be on the same device as " #ref " (", #ref, \
                " is on ", (ref).device(), ", " #t " on ", (t).device(), ")")

#define CHECK_CONTIGUOUS(t) FASTGEN_CHECK((t).is_contiguous(), #t " must be contiguous")

#define CHECK_SHAPE(t, ...)                                                                                 \
  FASTGEN_CHECK((t).sizes() == torch::IntArrayRef({__VA_ARGS__}), #t " must have shape (", #__VA_ARGS__, \
                "), got ", (t).sizes())

#define CHECK_SAME_SHAPE(t, ref) \
  FASTGEN_CHECK((t).sizes() == (ref).sizes(), #t " must have the shape of " #ref " ", (ref).sizes(), ", got ", (t).sizes())

#define CHECK_DTYPE(t, dt) FASTGEN_CHECK_TYPE((t).scalar_type() == (dt), #t " must be ", (dt), ", got ", (t).scalar_type())

#ifdef FASTGEN_WITH_CUDA
#include "../kernels/launchers.h"
#endif

namespace fastgen {

// Calls f(T{}) with T the C++ type of a float32/float16/bfloat16 tensor.
template <typename F>
void dispatch_float(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kHalf:
      f(at::Half{});
      break;
    case at::kBFloat16:
      f(at::BFloat16{});
      break;
    default:
      f(float{});
  }
}

#ifdef FASTGEN_WITH_CUDA
// The launchers' dtype code of a float32/float16/bfloat16 tensor.
inline cuda::DType cuda_dtype(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return cuda::kFloat16;
    case at::kBFloat16:
      return cuda::kBFloat16;
    default:
      return cuda::kFloat32;
  }
}
#endif

inline void check_state_dtype(const torch::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  FASTGEN_CHECK_TYPE(dt == torch::kFloat32 || dt == torch::kFloat16 || dt == torch::kBFloat16, name,
                " must be float32, float16 or bfloat16, got ", dt);
}

// (seed, offset) state read on the device: int64, shape (2,), beside `ref`.
inline const int64_t* rng_state_ptr(const c10::optional<torch::Tensor>& rng_state, const torch::Tensor& ref) {
  if (!rng_state.has_value()) return nullptr;
  const torch::Tensor& s = *rng_state;
  FASTGEN_CHECK(s.device() == ref.device(), "rng_state must be on the device of the state (", ref.device(), "), got ",
                s.device());
  FASTGEN_CHECK(s.scalar_type() == torch::kInt64 && s.numel() == 2 && s.is_contiguous(),
                "rng_state must be a contiguous int64 tensor of 2 elements (seed, offset)");
  return s.data_ptr<int64_t>();
}

// Per-chain step sizes: float32 of shape (chains,) beside `ref`, or none.
inline const float* step_sizes_ptr(const c10::optional<torch::Tensor>& step_sizes, const torch::Tensor& ref,
                                   int64_t chains) {
  if (!step_sizes.has_value()) return nullptr;
  const torch::Tensor& s = *step_sizes;
  FASTGEN_CHECK(s.device() == ref.device(), "step_size must be on the device of x (", ref.device(), "), got ",
                s.device());
  FASTGEN_CHECK(s.scalar_type() == torch::kFloat32 && s.dim() == 1 && s.size(0) == chains && s.is_contiguous(),
                "step_size as a tensor must be contiguous float32 of shape (", chains, ",), got ", s.scalar_type(), " ",
                s.sizes());
  return s.data_ptr<float>();
}

}  // namespace fastgen
