// Paddle operator `qwen25vl_rotary_qk` (CPU inference only): the rotary
// position embedding of q and k in one call,
//   out = x * cos + roll(x, D / 2) * sin_signed
// (paddlemix_qwen25vl.rope.apply_rotary), where Paddle's elementwise
// operators take four calls per tensor. Each product and the sum are rounded
// one at a time, as those operators do (the plain x86-64 build has no fused
// multiply-add to contract them into), so the result is bitwise theirs.
//
// Shapes: x [..., H, D] (q and k may differ in H); cos / sin_signed
// [..., Ht, D] over the same leading positions, Ht = 1 (shared by every head,
// the decoder) or Ht = H of both q and k (a row per head, the vision tower).
#include <vector>

#include "op_tensors.h"
#include "paddle/extension.h"

namespace pmq_ops {
namespace {

// Enough rows for the OpenMP team to pay off (a decode step's 16 heads of one
// token are a few microseconds of work, less than waking the team).
constexpr int64_t kParallelRows = 256;

void rotate(const float* x, const float* cos, const float* sin_signed, float* out, int64_t positions,
            int64_t heads, int64_t table_heads, int64_t d) {
  const int64_t half = d / 2, rows = positions * heads;
#pragma omp parallel for schedule(static) if (rows >= kParallelRows)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t p = row / heads, table_row = p * table_heads + (table_heads == 1 ? 0 : row % heads);
    const float* xr = x + row * d;
    const float* c = cos + table_row * d;
    const float* s = sin_signed + table_row * d;
    float* o = out + row * d;
    for (int64_t i = 0; i < half; ++i) o[i] = xr[i] * c[i] + xr[i + half] * s[i];
    for (int64_t i = half; i < d; ++i) o[i] = xr[i] * c[i] + xr[i - half] * s[i];
  }
}

void check_rotated(const paddle::Tensor& x, const paddle::Tensor& cos, const char* name) {
  const auto& xs = x.shape();
  const auto& cs = cos.shape();
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && xs.size() >= 2, name,
           " must be float32 [..., heads, head_dim] on the CPU");
  PD_CHECK(cs.size() == xs.size() && cs.back() == xs.back() && xs.back() % 2 == 0 &&
               (cs[cs.size() - 2] == 1 || cs[cs.size() - 2] == xs[xs.size() - 2]),
           "cos [..., 1 or heads, head_dim] does not match ", name);
  for (size_t i = 0; i + 2 < xs.size(); ++i)
    PD_CHECK(cs[i] == xs[i], "cos and ", name, " differ in leading axis ", i);
}

paddle::Tensor rotated(const paddle::Tensor& x_in, const paddle::Tensor& cos, const paddle::Tensor& sin_signed) {
  const paddle::Tensor x = contiguous(x_in);
  const auto& xs = x.shape();
  const int64_t d = xs.back(), heads = xs[xs.size() - 2], table_heads = cos.shape()[cos.shape().size() - 2];
  paddle::Tensor out = paddle::empty(xs, paddle::DataType::FLOAT32, x.place());
  rotate(x.data<float>(), cos.data<float>(), sin_signed.data<float>(), out.data<float>(),
         x.numel() / (heads * d), heads, table_heads, d);
  return out;
}

std::vector<paddle::Tensor> RotaryQKForward(const paddle::Tensor& q, const paddle::Tensor& k,
                                            const paddle::Tensor& cos_in, const paddle::Tensor& sin_in) {
  PD_CHECK(cos_in.is_cpu() && cos_in.dtype() == paddle::DataType::FLOAT32 && cos_in.shape() == sin_in.shape() &&
               sin_in.is_cpu() && sin_in.dtype() == paddle::DataType::FLOAT32,
           "cos and sin_signed must be float32 tensors of one shape on the CPU");
  check_rotated(q, cos_in, "q");
  check_rotated(k, cos_in, "k");
  const paddle::Tensor cos = contiguous(cos_in), sin_signed = contiguous(sin_in);
  return {rotated(q, cos, sin_signed), rotated(k, cos, sin_signed)};
}

}  // namespace
}  // namespace pmq_ops

PD_BUILD_OP(qwen25vl_rotary_qk)
    .Inputs({"q", "k", "cos", "sin_signed"})
    .Outputs({"q_out", "k_out"})
    .SetKernelFn(PD_KERNEL(pmq_ops::RotaryQKForward));
