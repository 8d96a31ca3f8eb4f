// ctest executable: Philox known answers, the AVX2 CPU path against the scalar
// one, and the registered ula_step_ CPU kernel against a scalar loop.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "../../csrc/cpu_math.h"

static int failures = 0;
#define EXPECT(cond, ...)                          \
  do {                                             \
    if (!(cond)) {                                 \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                    \
      std::printf("\n");                          \
      ++failures;                                  \
    }                                              \
  } while (0)

int main() {
  using namespace fastgen;
  // Random123 known answer: Philox4x32-10, key (0, 0), counter 0.
  const Philox4 zero = philox4x32(0, 0);
  const uint32_t kat[4] = {0x6627E8D5u, 0xE169C58Du, 0xBC57AC4Cu, 0x9B00DBD8u};
  for (int j = 0; j < 4; ++j) EXPECT(zero.lane[j] == kat[j], "KAT lane %d: %08x", j, zero.lane[j]);

  // Vectorized uniforms and normals against the scalar definitions, from a position inside a counter's
  // four values and across the 2^32 counter boundary (position 2^34).
  const uint64_t seed = (1ull << 40) + 3, first = (1ull << 34) - 37;
  const int64_t n = 5000;
  std::vector<float> u(n), z(n);
  cpu::fill_uniforms(seed, first, n, u.data());
  cpu::fill_normals(seed, first, n, z.data());
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    EXPECT(u[i] == uniform_at(seed, first + i), "uniform %lld differs", static_cast<long long>(i));
    worst = std::max(worst, static_cast<double>(std::fabs(z[i] - normal_at(seed, first + i))));
  }
  EXPECT(worst <= 2e-6, "normals differ from libm Box-Muller by %g", worst);

  // The registered CPU ula_step_ against x + h s + sqrt(2h) xi computed by a scalar loop.
  auto x = torch::randn({257, 3});
  auto score = torch::randn({257, 3});
  auto expected = x.clone();
  const double h = 0.05;
  auto* e = expected.data_ptr<float>();
  const auto* s = score.data_ptr<float>();
  for (int64_t i = 0; i < expected.numel(); ++i) {
    e[i] = e[i] + static_cast<float>(h) * s[i] + std::sqrt(2.0f * static_cast<float>(h)) * normal_at(7, 11 + i);
  }
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastgen::ula_step_", "").typed<void(
      at::Tensor, const at::Tensor&, double, const c10::optional<at::Tensor>&, int64_t, int64_t,
      const c10::optional<at::Tensor>&, c10::optional<double>, c10::optional<double>, c10::optional<double>)>();
  op.call(x, score, h, c10::nullopt, 7, 11, c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt);
  const double err = (x - expected).abs().max().item<double>();
  EXPECT(err <= 1e-5, "ula_step_ differs from the scalar loop by %g", err);

  std::printf(failures ? "%d failure(s)\n" : "all kernel checks passed\n", failures);
  return failures ? 1 : 0;
}
