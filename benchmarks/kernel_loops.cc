// In-cache cost of the fused kernel's chunk loops (no memory traffic, no
// MXNet): ns per element of one chunk of 8192 float32 elements, forward and
// backward, best of 7 runs, for each target source and instruction set.
// Built and run by bench_kernel_loops.py with the library's own flags.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "chunk_loop.h"
#include "simd_avx2.h"
#include "simd_avx512.h"
#include "simd_scalar.h"

using namespace gluon_focal;

template <class S>
double loop_ns(Pass pass, TargetSource source, bool check_labels) {
  const int64_t n = 8192;
  const int reps = 4000;
  std::mt19937 rng(0);
  std::normal_distribution<float> logit(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> pred(n), labels(n), out(n);
  std::vector<int8_t> codes(n);
  for (int64_t i = 0; i < n; ++i) {
    pred[i] = 3.0f * logit(rng);
    labels[i] = source == TargetSource::kSparseRow ? static_cast<float>(rng() % 21)
                                                    : static_cast<float>(unit(rng) < 0.2f);
    codes[i] = (i % 21) == static_cast<int64_t>(rng() % 21) ? 1 : 0;
  }
  Chunk<float> c{};
  c.len = n;
  c.pred = pred.data();
  c.out = pass == Pass::kBackward ? out.data() : nullptr;
  c.coef = 1.0f;
  c.labels = labels.data();
  c.codes = codes.data();
  c.alpha0 = 0.75f;
  c.alpha1 = 0.25f;
  c.check_labels = check_labels;
  CallConstants<float> k{};
  k.gamma = 2.0f;
  k.ignore_label = NAN;
  k.background_label = NAN;
  k.num_classes = 21.0f;
  ChunkKernel<float> kernel = pick_chunk_kernel<S>(pass, GammaKind::kTwo, false, source);
  double best = 1e30;
  for (int run = 0; run < 7; ++run) {
    auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) {
      ChunkResult result;
      kernel(c, k, &result);
      asm volatile("" ::: "memory");
    }
    std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count() / (static_cast<double>(n) * reps));
  }
  return best;
}

template <class S>
void report(const char* isa) {
  struct { const char* name; TargetSource source; bool check; } cases[] = {
      {"sparse codes", TargetSource::kSparseCode, false},
      {"binary, checked", TargetSource::kBinary, true},
      {"sparse rows", TargetSource::kSparseRow, false},   // checked in class-0 rows only
      {"dense, checked", TargetSource::kDense, true}};
  for (const auto& c : cases) {
    double f = loop_ns<S>(Pass::kForward, c.source, c.check);
    double b = loop_ns<S>(Pass::kBackward, c.source, c.check);
    std::printf("%-7s %-22s forward %.3f  backward %.3f  both %.3f ns/element\n", isa, c.name, f, b,
                f + b);
  }
}

int main() {
  __builtin_cpu_init();
  report<ScalarFloat>("scalar");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) report<Avx2Float>("avx2");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    report<Avx512Float>("avx512");
  return 0;
}
