// ctest executable: Philox known answers, the AVX2 CPU path against the scalar
// one, and the registered ula_step_ CPU kernel against a scalar loop.
// Usage: test_kernels SCHEMAS, SCHEMAS the file `python -m fastgen.ops` writes: the op schemas
// are declared in fastgen/ops/ (Python), so this program defines them itself.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
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

int main(int argc, char** argv) {
  using namespace fastgen;
  if (argc != 2) {
    std::printf("usage: test_kernels SCHEMAS (the output of python -m fastgen.ops)\n");
    return 2;
  }
  torch::Library library(torch::Library::DEF, "fastgen", c10::nullopt, __FILE__, __LINE__);
  std::ifstream schemas(argv[1]);
  int defined = 0;
  for (std::string line; std::getline(schemas, line);) {
    if (!line.empty()) library.def(line.c_str()), ++defined;
  }
  EXPECT(defined > 0, "no schema read from %s", argv[1]);
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
  // A boxed call by argument name; the others keep their schema defaults.
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastgen::ula_step_", "");
  const c10::FunctionSchema& schema = op.schema();
  torch::jit::Stack stack;
  for (const auto& argument : schema.arguments()) {
    const std::string& name = argument.name();
    if (name == "x") stack.emplace_back(x);
    else if (name == "score") stack.emplace_back(score);
    else if (name == "step_size") stack.emplace_back(h);
    else if (name == "seed") stack.emplace_back(int64_t{7});
    else if (name == "offset") stack.emplace_back(int64_t{11});
    else stack.emplace_back(*argument.default_value());
  }
  op.callBoxed(&stack);
  const double err = (x - expected).abs().max().item<double>();
  EXPECT(err <= 1e-5, "ula_step_ differs from the scalar loop by %g", err);

  std::printf(failures ? "%d failure(s)\n" : "all kernel checks passed\n", failures);
  return failures ? 1 : 0;
}
