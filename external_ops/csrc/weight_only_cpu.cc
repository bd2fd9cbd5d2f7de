// Weight-only linear and row gather on the CPU: float32 activations against
// bfloat16 / int8 / packed int4 weights, read as stored (no float32 copy).
//
// Operators (formats: paddlemix_qwen25vl/ops/weight_only.py; all weights are
// output-major [N, K]; the weight kind follows from the qweight dtype):
//   qwen25vl_weight_only_linear(x [..., K] f32, qweight, scales?, bias? [N])
//       -> [..., N] f32 = x W^T + bias, float32 accumulation (M = rows of x).
//   qwen25vl_weight_only_rows(qweight, scales?, ids [R] int64)
//       -> [R, K] f32: the dequantised rows ids (embedding lookup; the whole
//       weight, tile by tile, for prefill, where MKL's GEMM then does better).
//
// The linear is for decode (small M): one pass over the weights, memory
// bandwidth bound. OpenMP splits the output rows into 32-row tasks.
// AVX2 / AVX-512, int8 and int4 weights: each activation row is quantised
// once per call to int8 per block (QuantizedActivations) and multiplied with
// integer dot products (llama.cpp's q8_0 / q4_0 scheme), one weight row at a
// time against up to 4 activation rows: widening every weight to float cost
// more instructions than the memory bus left time for (int8 / int4 decode ran
// at 1/3 to 1/2 of a plain read's GB/s). The price is the activation rounding,
// |x - d q| <= d / 2 with d = max|x_block| / 127 (tests/test_weight_only_ops.py
// bounds the output error by it).
// bfloat16, and every kind at the baseline level: the weights are widened to
// float in registers right after they are loaded, float32 arithmetic, tiles
// of up to 4 weight rows x 4 activation rows while those rows are in L1
// (bfloat16 on AVX-512, 5-8 activation rows: 3 weight rows x all of them).
// Int4 there: element 2j sits in the low nibble of byte j and 2j+1 in the
// high one; instead of interleaving the nibbles per weight, the activations
// are split once per call into even and odd halves (low nibbles multiply the
// even half, high nibbles the odd one), and nibbles are summed unscaled per
// 128-group as sum(nibble * x) - 8 * sum(x), one scale multiply per group.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_isa.h"
#include "paddle/extension.h"

#ifdef PMQ_X86_ISAS
#include <immintrin.h>
#endif

namespace pmq_ops {
namespace {

constexpr int64_t kInt4Group = 128; // inputs per int4 scale
constexpr int64_t kInt4GroupBytes = kInt4Group / 2;
constexpr int kMaxRows = 4;         // activation rows per pass over a weight row
constexpr int64_t kRowsPerTask = 32;  // output rows per OpenMP task
constexpr int kWideRows = 8;        // bfloat16, AVX-512: activation rows of the widest tile
constexpr int64_t kRowPadFloats = 16;  // bfloat16, kMaxRows < m <= kWideRows: x's rows get a padded copy

enum class Kind { kBf16, kInt8, kInt4 };

// A bfloat16 decode batch the AVX-512 kernels take in one tile (kWideTiles).
constexpr bool wide_bf16_batch(Kind kind, int64_t m) { return kind == Kind::kBf16 && m > kMaxRows && m <= kWideRows; }

// One quantised weight [n, k]; scales [n] (int8), [n, groups] (int4) or null.
struct Weights {
  Kind kind;
  const void* data;
  const float* scales;
  int64_t n, k;
  int64_t groups() const { return (k + kInt4Group - 1) / kInt4Group; }
};

PMQ_INLINE float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

constexpr int64_t kActBlock = 32;      // int8 weights: activation inputs per quantisation scale
constexpr int64_t kChunkBytes = 32;    // int4 weights: bytes of nibbles per 256-bit step
constexpr int64_t kChunksPerGroup = kInt4GroupBytes / kChunkBytes;

// Activations quantised to int8 for the AVX2 / AVX-512 integer kernels,
// symmetric per block (d = max|x_block| / 127, q = round(x / d)):
// int8 weights: blocks of kActBlock inputs, x [m, ld = blocks * 32],
//   d [m, blocks]; the inputs after the last full block stay float.
// int4 weights: `blocks` = full 32-byte chunks of a weight row; chunk c's 64
//   inputs sit at x + 64c as [even | odd] (low / high nibbles); one block per
//   128-input group, d and qsum (sum of q) [m, groups]; the inputs after the
//   last full chunk stay float.
struct QuantizedActivations {
  std::vector<int8_t> xq;
  std::vector<float> dq;
  std::vector<int32_t> qsums;
  const int8_t* x;
  const float* d;
  const int32_t* qsum;
  int64_t ld, blocks, groups;
};

// Activations as the kernels read them: x itself; for the baseline int4
// kernel its even and odd elements (xe, xo: [m, k/2] each) and its sums per
// 128-input group (xsum: [m, groups]); for the integer kernels q; for the
// bfloat16 kernels x's rows, ld floats apart: x itself, or on AVX-512 for a
// wide_bf16_batch a copy with rows k + kRowPadFloats apart. Rows k floats apart map to the
// same L1 sets when 4k is a multiple of 4 KiB (k = 2048): 8 activation rows
// and the weight rows then fought over 8 ways (an 8-row tile ran slower than
// two 4-row passes until the rows were padded).
struct Activations {
  const float* x;
  const float* xe;
  const float* xo;
  const float* xsum;
  const QuantizedActivations* q;
  int64_t m;
  const float* rows;
  int64_t ld;
};

// q's buffers for x [m, k] and weights of `kind` (int8 or int4), layouts
// above; quantize_rows_<level> (weight_only_kernels.h) fills them.
void size_activations(int64_t m, int64_t k, Kind kind, QuantizedActivations& q) {
  const bool int4 = kind == Kind::kInt4;
  q.groups = int4 ? (k + kInt4Group - 1) / kInt4Group : 0;
  q.blocks = int4 ? k / 2 / kChunkBytes : k / kActBlock;
  q.ld = q.blocks * (int4 ? 2 * kChunkBytes : kActBlock);
  q.xq.assign(m * q.ld, 0);
  q.dq.assign(m * (int4 ? q.groups : q.blocks), 0.f);
  q.qsums.assign(m * q.groups, 0);
  q.x = q.xq.data();
  q.d = q.dq.data();
  q.qsum = q.qsums.data();
}

}  // namespace
}  // namespace pmq_ops

// linear_rows_<level> and dequantize_rows_<level> for baseline, avx2, avx512.
#define PMQ_WO_CAT2(a, b) a##b
#define PMQ_WO_CAT(a, b) PMQ_WO_CAT2(a, b)
#define PMQ_WO_LANES 4
#define PMQ_WO_NS baseline_lanes
#define PMQ_WO_LEVEL baseline
#include "weight_only_kernels.h"
#undef PMQ_WO_LANES
#undef PMQ_WO_NS
#undef PMQ_WO_LEVEL
#ifdef PMQ_X86_ISAS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define PMQ_WO_LANES 8
#define PMQ_WO_NS avx2_lanes
#define PMQ_WO_LEVEL avx2
#include "weight_only_kernels.h"
#undef PMQ_WO_LANES
#undef PMQ_WO_NS
#undef PMQ_WO_LEVEL
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#define PMQ_WO_LANES 16
#define PMQ_WO_NS avx512_lanes
#define PMQ_WO_LEVEL avx512
#include "weight_only_kernels.h"
#undef PMQ_WO_LANES
#undef PMQ_WO_NS
#undef PMQ_WO_LEVEL
#pragma GCC pop_options
#else  // one portable copy serves every level
namespace pmq_ops {
namespace {
template <typename... A>
void linear_rows_avx2(A&&... a) { linear_rows_baseline(std::forward<A>(a)...); }
template <typename... A>
void linear_rows_avx512(A&&... a) { linear_rows_baseline(std::forward<A>(a)...); }
template <typename... A>
void dequantize_rows_avx2(A&&... a) { dequantize_rows_baseline(std::forward<A>(a)...); }
template <typename... A>
void dequantize_rows_avx512(A&&... a) { dequantize_rows_baseline(std::forward<A>(a)...); }
}  // namespace
}  // namespace pmq_ops
#endif

namespace pmq_ops {
namespace {

// The weight description of (qweight, scales), checked.
Weights make_weights(const paddle::Tensor& qweight, const paddle::optional<paddle::Tensor>& scales) {
  PD_CHECK(qweight.is_cpu() && qweight.shape().size() == 2, "qweight must be a 2-D CPU tensor");
  PD_CHECK(qweight.is_contiguous(), "qweight must be contiguous");
  Weights w;
  w.n = qweight.shape()[0];
  w.k = qweight.shape()[1];
  w.data = qweight.data();
  w.scales = nullptr;
  int64_t scale_count = 0;
  switch (qweight.dtype()) {
    case paddle::DataType::BFLOAT16: w.kind = Kind::kBf16; break;
    case paddle::DataType::INT8: w.kind = Kind::kInt8; scale_count = w.n; break;
    case paddle::DataType::UINT8:
      w.kind = Kind::kInt4;
      w.k *= 2;
      scale_count = w.n * w.groups();
      break;
    default: PD_THROW("qweight must be bfloat16, int8 or uint8 (packed int4)");
  }
  if (scale_count > 0) {
    PD_CHECK(scales.is_initialized(), "int8 / int4 weights need their scales");
    const paddle::Tensor& s = scales.get();
    PD_CHECK(s.is_cpu() && s.dtype() == paddle::DataType::FLOAT32 && s.is_contiguous() &&
                 s.numel() == scale_count,
             "scales must be contiguous float32 with one value per row (int8) or per 128-input group (int4)");
    w.scales = s.data<float>();
  }
  return w;
}

}  // namespace

std::vector<paddle::Tensor> WeightOnlyLinearForward(const paddle::Tensor& x_in, const paddle::Tensor& qweight,
                                                    const paddle::optional<paddle::Tensor>& scales,
                                                    const paddle::optional<paddle::Tensor>& bias) {
  const Weights w = make_weights(qweight, scales);
  const paddle::Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && !x.shape().empty() && x.shape().back() == w.k,
           "x must be a float32 [..., K] CPU tensor with K = the weight's input size");
  const float* bias_data = nullptr;
  if (bias.is_initialized()) {
    PD_CHECK(bias.get().dtype() == paddle::DataType::FLOAT32 && bias.get().numel() == w.n && bias.get().is_contiguous(),
             "bias must be contiguous float32 [N]");
    bias_data = bias.get().data<float>();
  }
  Activations a{x.data<float>(), nullptr, nullptr, nullptr, nullptr, x.numel() / w.k, x.data<float>(), w.k};
  const Isa isa = cpu_isa();
  QuantizedActivations quantized;
  std::vector<float> split, padded;
  if (isa == Isa::kAvx512 && wide_bf16_batch(w.kind, a.m)) {  // the levels without wide tiles read x itself
    a.ld = w.k + kRowPadFloats;
    padded.resize(a.m * a.ld);
    for (int64_t r = 0; r < a.m; ++r) std::copy(a.x + r * w.k, a.x + (r + 1) * w.k, padded.data() + r * a.ld);
    a.rows = padded.data();
  } else if (isa != Isa::kBaseline && w.kind != Kind::kBf16) {
#ifdef PMQ_X86_ISAS  // the integer kernels exist on x86-64 only (isa is baseline elsewhere)
    size_activations(a.m, w.k, w.kind, quantized);
    if (isa == Isa::kAvx512) quantize_rows_avx512(a.x, a.m, w.k, w.kind, quantized);
    else quantize_rows_avx2(a.x, a.m, w.k, w.kind, quantized);
    a.q = &quantized;
#endif
  } else if (w.kind == Kind::kInt4) {  // xe, xo [m, k/2] and xsum [m, groups]
    const int64_t kh = w.k / 2, groups = w.groups();
    split.assign(a.m * (2 * kh + groups), 0.f);
    float* xe = split.data();
    float* xo = xe + a.m * kh;
    float* xsum = xo + a.m * kh;
    for (int64_t i = 0; i < a.m * kh; ++i) {
      xe[i] = a.x[2 * i];
      xo[i] = a.x[2 * i + 1];
      xsum[i / kh * groups + i % kh / kInt4GroupBytes] += xe[i] + xo[i];
    }
    a.xe = xe;
    a.xo = xo;
    a.xsum = xsum;
  }
  std::vector<int64_t> out_shape = x.shape();
  out_shape.back() = w.n;
  paddle::Tensor out = paddle::empty(out_shape, paddle::DataType::FLOAT32, x.place());
  float* out_data = out.data<float>();
  const int64_t tasks = (w.n + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t n1 = std::min(w.n, (t + 1) * kRowsPerTask);
    PMQ_CALL_ISA(isa, linear_rows, w, a, bias_data, out_data, t * kRowsPerTask, n1);
  }
  return {out};
}

std::vector<paddle::Tensor> WeightOnlyRowsForward(const paddle::Tensor& qweight,
                                                  const paddle::optional<paddle::Tensor>& scales,
                                                  const paddle::Tensor& ids_in) {
  const Weights w = make_weights(qweight, scales);
  const paddle::Tensor ids = ids_in.is_contiguous() ? ids_in : ids_in.contiguous();
  PD_CHECK(ids.is_cpu() && ids.dtype() == paddle::DataType::INT64 && ids.shape().size() == 1,
           "ids must be a 1-D int64 CPU tensor");
  const int64_t rows = ids.shape()[0];
  const int64_t* id = ids.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    PD_CHECK(id[r] >= 0 && id[r] < w.n, "row id ", id[r], " is outside [0, ", w.n, ")");
  paddle::Tensor out = paddle::empty({rows, w.k}, paddle::DataType::FLOAT32, qweight.place());
  float* out_data = out.data<float>();
  const Isa isa = cpu_isa();
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t r1 = std::min(rows, (t + 1) * kRowsPerTask);
    PMQ_CALL_ISA(isa, dequantize_rows, w, id, out_data, t * kRowsPerTask, r1);
  }
  return {out};
}

}  // namespace pmq_ops

PD_BUILD_OP(qwen25vl_weight_only_linear)
    .Inputs({"x", "qweight", paddle::Optional("scales"), paddle::Optional("bias")})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(pmq_ops::WeightOnlyLinearForward));

PD_BUILD_OP(qwen25vl_weight_only_rows)
    .Inputs({"qweight", paddle::Optional("scales"), "ids"})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(pmq_ops::WeightOnlyRowsForward));
