// GPU side of the operator: allocates outputs and workspaces as paddle
// tensors and calls the raw-pointer CUDA launchers. Compiled only when paddle
// is a CUDA build (build_config.py adds it and defines PMQ_WITH_CUDA), because
// paddle's headers with PADDLE_WITH_CUDA need the full CUDA toolkit.
#include <vector>

#include "flash_attn_varlen.h"
#include "paddle/extension.h"

namespace pmq_ops {
namespace {

VarlenDType varlen_dtype(paddle::DataType dtype) {
  switch (dtype) {
    case paddle::DataType::FLOAT16:
      return VarlenDType::kFloat16;
    case paddle::DataType::BFLOAT16:
      return VarlenDType::kBFloat16;
    case paddle::DataType::FLOAT32:
      return VarlenDType::kFloat32;
    default:
      PD_THROW("CUDA varlen attention supports float16, bfloat16 and float32");
  }
}

void check_gpu_inputs(const VarlenAttnShape& sh, const paddle::Tensor& q) {
  PD_CHECK(sh.head_dim <= kCudaMaxHeadDim,
           "CUDA varlen attention supports head_dim <= 128");
  PD_CHECK(q.is_gpu(), "q must be on the GPU");
}

}  // namespace

std::vector<paddle::Tensor> varlen_attn_fwd_gpu(const VarlenAttnShape& sh,
                                                const paddle::Tensor& q,
                                                const paddle::Tensor& k,
                                                const paddle::Tensor& v) {
  check_gpu_inputs(sh, q);
  paddle::Tensor out = paddle::empty(q.shape(), q.dtype(), q.place());
  paddle::Tensor lse = paddle::empty({sh.heads, sh.total_q},
                                     paddle::DataType::FLOAT32, q.place());
  varlen_attn_fwd_cuda(sh, varlen_dtype(q.dtype()), q.data(), k.data(),
                       v.data(), out.data(), lse.data<float>(),
                       static_cast<void*>(q.stream()));
  return {out, lse};
}

std::vector<paddle::Tensor> varlen_attn_bwd_gpu(
    const VarlenAttnShape& sh, const paddle::Tensor& q,
    const paddle::Tensor& k, const paddle::Tensor& v,
    const paddle::Tensor& out, const paddle::Tensor& dout,
    const paddle::Tensor& lse) {
  check_gpu_inputs(sh, q);
  const auto f32 = paddle::DataType::FLOAT32;
  paddle::Tensor delta = paddle::empty({sh.heads, sh.total_q}, f32, q.place());
  // float32 accumulators for the atomics, converted to q's dtype at the end.
  paddle::Tensor dq_accum = paddle::full(q.shape(), 0.f, f32, q.place());
  paddle::Tensor dk_accum = paddle::full(k.shape(), 0.f, f32, k.place());
  paddle::Tensor dv_accum = paddle::full(v.shape(), 0.f, f32, v.place());
  paddle::Tensor dq = paddle::empty(q.shape(), q.dtype(), q.place());
  paddle::Tensor dk = paddle::empty(k.shape(), k.dtype(), k.place());
  paddle::Tensor dv = paddle::empty(v.shape(), v.dtype(), v.place());
  varlen_attn_bwd_cuda(sh, varlen_dtype(q.dtype()), q.data(), k.data(),
                       v.data(), out.data(), dout.data(), lse.data<float>(),
                       delta.data<float>(), dq_accum.data<float>(),
                       dk_accum.data<float>(), dv_accum.data<float>(),
                       dq.data(), dk.data(), dv.data(),
                       static_cast<void*>(q.stream()));
  return {dq, dk, dv};
}

}  // namespace pmq_ops
