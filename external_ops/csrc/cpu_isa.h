// Run-time choice of the instruction set for the CPU kernels.
//
// Each hot function is written once as an always-inline body and compiled
// three times by PMQ_ISA_VARIANTS; cpu_isa() picks the copy at every call from
// what the CPU reports and the PADDLEMIX_CPU_ISA cap ("avx2", "baseline"),
// so an AVX-512 machine can run, and test, what an AVX2-only machine runs.
// Include it inside no namespace; the variants are declared where the macro is used.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PMQ_X86_ISAS 1
#define PMQ_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define PMQ_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define PMQ_TARGET_AVX512
#define PMQ_TARGET_AVX2
#endif
#define PMQ_INLINE inline __attribute__((always_inline))

namespace pmq_ops {

enum class Isa { kBaseline, kAvx2, kAvx512 };

inline Isa detected_isa() {
#ifdef PMQ_X86_ISAS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// The level to run: the CPU's, capped by PADDLEMIX_CPU_ISA (the Python side
// validates its value; anything else here means no cap).
inline Isa cpu_isa() {
  static const Isa detected = detected_isa();
  const char* cap = std::getenv("PADDLEMIX_CPU_ISA");
  Isa limit = Isa::kAvx512;
  if (cap != nullptr && std::strcmp(cap, "baseline") == 0) limit = Isa::kBaseline;
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0) limit = Isa::kAvx2;
  return std::min(detected, limit);
}

}  // namespace pmq_ops

// name_avx512 / name_avx2 / name_baseline: the body `name` compiled per level.
#define PMQ_ISA_VARIANTS(name)                                   \
  template <typename... A>                                       \
  PMQ_TARGET_AVX512 void name##_avx512(A&&... a) {               \
    name(std::forward<A>(a)...);                                 \
  }                                                              \
  template <typename... A>                                       \
  PMQ_TARGET_AVX2 void name##_avx2(A&&... a) {                   \
    name(std::forward<A>(a)...);                                 \
  }                                                              \
  template <typename... A>                                       \
  void name##_baseline(A&&... a) {                               \
    name(std::forward<A>(a)...);                                 \
  }
#define PMQ_CALL_ISA(isa, name, ...)                         \
  switch (isa) {                                             \
    case Isa::kAvx512: name##_avx512(__VA_ARGS__); break;    \
    case Isa::kAvx2: name##_avx2(__VA_ARGS__); break;        \
    default: name##_baseline(__VA_ARGS__); break;            \
  }
