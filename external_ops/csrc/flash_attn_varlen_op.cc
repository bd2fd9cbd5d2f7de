// Paddle operators `qwen25vl_flash_attn_varlen` (with its registered gradient)
// and `qwen25vl_decode_attention` (CPU inference only).
//
// Validates the inputs, allocates outputs and dispatches to the raw-pointer
// kernels: CPU always, CUDA only when the package was built against a CUDA
// Paddle (then PMQ_WITH_CUDA is defined and flash_attn_varlen_cuda_binding.cc
// is compiled in). The Python wrapper (paddlemix_qwen25vl.ops) repeats the
// checks with ValueError messages; these PD_CHECKs guard direct callers.
#include <vector>

#include "flash_attn_varlen.h"
#include "op_tensors.h"
#include "paddle/extension.h"

namespace pmq_ops {

#ifdef PMQ_WITH_CUDA
// Defined in flash_attn_varlen_cuda_binding.cc.
std::vector<paddle::Tensor> varlen_attn_fwd_gpu(const VarlenAttnShape& sh,
                                                const paddle::Tensor& q,
                                                const paddle::Tensor& k,
                                                const paddle::Tensor& v);
std::vector<paddle::Tensor> varlen_attn_bwd_gpu(
    const VarlenAttnShape& sh, const paddle::Tensor& q,
    const paddle::Tensor& k, const paddle::Tensor& v,
    const paddle::Tensor& out, const paddle::Tensor& dout,
    const paddle::Tensor& lse);
#endif

namespace {

// t itself when each [len, kv_heads, head_dim] block of the 4-D t is packed
// (any batch stride), else a contiguous copy.
paddle::Tensor rows_packed(const paddle::Tensor& t) {
  if (t.is_contiguous()) return t;
  const auto& shape = t.shape();
  const auto& strides = t.strides();
  const bool packed = shape.size() == 4 && strides[3] == 1 &&
                      strides[2] == shape[3] &&
                      strides[1] == shape[2] * shape[3] &&
                      strides[0] >= shape[1] * strides[1];
  return packed ? t : t.contiguous();
}

// Checks shapes and cu_seqlens (values too when they live on the host) and
// fills the kernel's shape description.
VarlenAttnShape make_shape(const paddle::Tensor& q, const paddle::Tensor& k,
                           const paddle::Tensor& v,
                           const paddle::Tensor& cu_seqlens_q,
                           const paddle::Tensor& cu_seqlens_k,
                           int max_seqlen_q, int max_seqlen_k,
                           float softmax_scale, bool causal) {
  PD_CHECK(q.shape().size() == 3 && k.shape().size() == 3 &&
               v.shape().size() == 3,
           "q, k, v must be 3-D [tokens, heads, head_dim]");
  PD_CHECK(k.shape() == v.shape(), "k and v must have the same shape");
  PD_CHECK(q.shape()[2] == k.shape()[2], "q and k head_dim differ");
  PD_CHECK(k.shape()[1] > 0 && q.shape()[1] % k.shape()[1] == 0,
           "heads of q must be a multiple of kv heads");
  PD_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(),
           "q, k, v must have the same dtype");
  PD_CHECK(cu_seqlens_q.dtype() == paddle::DataType::INT32 &&
               cu_seqlens_k.dtype() == paddle::DataType::INT32,
           "cu_seqlens must be int32");
  PD_CHECK(cu_seqlens_q.shape().size() == 1 &&
               cu_seqlens_q.shape() == cu_seqlens_k.shape() &&
               cu_seqlens_q.shape()[0] >= 1,
           "cu_seqlens_q and cu_seqlens_k must be 1-D of equal length");
  PD_CHECK(cu_seqlens_q.place() == q.place() && cu_seqlens_k.place() == q.place(),
           "cu_seqlens must be on the device of q");
  PD_CHECK(!q.is_cpu() || q.dtype() == paddle::DataType::FLOAT32,
           "the CPU kernel supports float32 only");
  VarlenAttnShape sh;
  sh.cu_seqlens_q = cu_seqlens_q.data<int32_t>();
  sh.cu_seqlens_k = cu_seqlens_k.data<int32_t>();
  sh.batch = cu_seqlens_q.shape()[0] - 1;
  sh.heads = q.shape()[1];
  sh.kv_heads = k.shape()[1];
  sh.head_dim = q.shape()[2];
  sh.total_q = q.shape()[0];
  sh.total_k = k.shape()[0];
  sh.max_seqlen_q = max_seqlen_q;
  sh.max_seqlen_k = max_seqlen_k;
  sh.softmax_scale = softmax_scale;
  sh.causal = causal;
  if (q.is_cpu()) {
    PD_CHECK(sh.cu_seqlens_q[0] == 0 && sh.cu_seqlens_k[0] == 0,
             "cu_seqlens must start at 0");
    PD_CHECK(sh.cu_seqlens_q[sh.batch] == sh.total_q &&
                 sh.cu_seqlens_k[sh.batch] == sh.total_k,
             "cu_seqlens must end at the token counts of q and k");
    for (int64_t b = 0; b < sh.batch; ++b) {
      const int64_t lq = sh.cu_seqlens_q[b + 1] - sh.cu_seqlens_q[b];
      const int64_t lk = sh.cu_seqlens_k[b + 1] - sh.cu_seqlens_k[b];
      PD_CHECK(lq >= 0 && lk >= 0, "cu_seqlens must be non-decreasing");
      PD_CHECK(lq <= max_seqlen_q && lk <= max_seqlen_k,
               "a segment is longer than max_seqlen");
    }
  }
  return sh;
}

}  // namespace

std::vector<paddle::Tensor> FlashAttnVarlenForward(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in,
    const paddle::Tensor& v_in, const paddle::Tensor& cu_seqlens_q,
    const paddle::Tensor& cu_seqlens_k, int max_seqlen_q, int max_seqlen_k,
    float softmax_scale, bool causal) {
  const paddle::Tensor q = contiguous(q_in), k = contiguous(k_in),
                       v = contiguous(v_in);
  const VarlenAttnShape sh =
      make_shape(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                 max_seqlen_k, softmax_scale, causal);
  if (q.is_cpu()) {
    paddle::Tensor out =
        paddle::empty(q.shape(), paddle::DataType::FLOAT32, q.place());
    paddle::Tensor lse = paddle::empty({sh.heads, sh.total_q},
                                       paddle::DataType::FLOAT32, q.place());
    varlen_attn_fwd_cpu(sh, q.data<float>(), k.data<float>(), v.data<float>(),
                        out.data<float>(), lse.data<float>());
    return {out, lse};
  }
#ifdef PMQ_WITH_CUDA
  if (q.is_gpu()) return varlen_attn_fwd_gpu(sh, q, k, v);
#endif
  PD_THROW("qwen25vl_flash_attn_varlen: no kernel for this device in this build");
}

std::vector<paddle::Tensor> FlashAttnVarlenBackward(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in,
    const paddle::Tensor& v_in, const paddle::Tensor& cu_seqlens_q,
    const paddle::Tensor& cu_seqlens_k, const paddle::Tensor& out_in,
    const paddle::Tensor& lse, const paddle::Tensor& dout_in,
    int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal) {
  const paddle::Tensor q = contiguous(q_in), k = contiguous(k_in),
                       v = contiguous(v_in), out = contiguous(out_in),
                       dout = contiguous(dout_in);
  const VarlenAttnShape sh =
      make_shape(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                 max_seqlen_k, softmax_scale, causal);
  if (q.is_cpu()) {
    paddle::Tensor dq =
        paddle::empty(q.shape(), paddle::DataType::FLOAT32, q.place());
    paddle::Tensor dk =
        paddle::empty(k.shape(), paddle::DataType::FLOAT32, k.place());
    paddle::Tensor dv =
        paddle::empty(v.shape(), paddle::DataType::FLOAT32, v.place());
    varlen_attn_bwd_cpu(sh, q.data<float>(), k.data<float>(), v.data<float>(),
                        out.data<float>(), dout.data<float>(),
                        lse.data<float>(), dq.data<float>(), dk.data<float>(),
                        dv.data<float>());
    return {dq, dk, dv};
  }
#ifdef PMQ_WITH_CUDA
  if (q.is_gpu()) return varlen_attn_bwd_gpu(sh, q, k, v, out, dout, lse);
#endif
  PD_THROW("qwen25vl_flash_attn_varlen: no kernel for this device in this build");
}

std::vector<paddle::Tensor> DecodeAttentionForward(const paddle::Tensor& q_in,
                                                   const paddle::Tensor& k_in,
                                                   const paddle::Tensor& v_in,
                                                   const paddle::optional<paddle::Tensor>& key_starts_in,
                                                   float softmax_scale) {
  // k/v may be the filled prefix of a preallocated cache, [batch, len, ...] of
  // [batch, capacity, ...]: read in place, only the batch stride differs.
  const paddle::Tensor q = contiguous(q_in), k = rows_packed(k_in),
                       v = rows_packed(v_in);
  PD_CHECK(q.is_cpu() && k.is_cpu() && v.is_cpu(),
           "qwen25vl_decode_attention runs on the CPU only");
  PD_CHECK(q.dtype() == paddle::DataType::FLOAT32 && k.dtype() == q.dtype() &&
               v.dtype() == q.dtype(),
           "qwen25vl_decode_attention supports float32 only");
  PD_CHECK(q.shape().size() == 4 && q.shape()[1] == 1,
           "q must be [batch, 1, heads, head_dim]");
  PD_CHECK(k.shape().size() == 4 && k.shape() == v.shape(),
           "k and v must be [batch, len, kv_heads, head_dim]");
  PD_CHECK(k.shape()[0] == q.shape()[0] && k.shape()[3] == q.shape()[3] &&
               k.shape()[2] > 0 && q.shape()[2] % k.shape()[2] == 0,
           "q and k/v disagree on batch, head_dim or head grouping");
  PD_CHECK(k.shape()[1] > 0, "the cache is empty");
  PD_CHECK(k.strides()[0] == v.strides()[0],
           "k and v must have the same batch stride");
  const int64_t* key_starts = nullptr;
  paddle::Tensor starts;
  if (key_starts_in.is_initialized()) {
    starts = contiguous(key_starts_in.get());
    PD_CHECK(starts.is_cpu() && starts.dtype() == paddle::DataType::INT64 &&
                 starts.shape().size() == 1 && starts.shape()[0] == q.shape()[0],
             "key_starts must be int64 [batch] on the CPU");
    key_starts = starts.data<int64_t>();
    for (int64_t b = 0; b < q.shape()[0]; ++b)
      PD_CHECK(key_starts[b] >= 0 && key_starts[b] < k.shape()[1], "key_starts[", b, "] = ", key_starts[b],
               " leaves no key of the ", k.shape()[1], " cached");
  }
  DecodeAttnShape sh{q.shape()[0], q.shape()[2], k.shape()[2], q.shape()[3],
                     k.shape()[1], k.strides()[0], softmax_scale, key_starts};
  paddle::Tensor out =
      paddle::empty(q.shape(), paddle::DataType::FLOAT32, q.place());
  PD_CHECK(decode_attn_fwd_cpu(sh, q.data<float>(), k.data<float>(),
                               v.data<float>(), out.data<float>()),
           "qwen25vl_decode_attention: head_dim must be 16, 32, 64 or 128");
  return {out};
}

std::vector<std::vector<int64_t>> FlashAttnVarlenForwardShape(
    const std::vector<int64_t>& q_shape, const std::vector<int64_t>&,
    const std::vector<int64_t>&, const std::vector<int64_t>&,
    const std::vector<int64_t>&) {
  return {q_shape, {q_shape[1], q_shape[0]}};
}

std::vector<paddle::DataType> FlashAttnVarlenForwardDtype(
    const paddle::DataType& q_dtype, const paddle::DataType&,
    const paddle::DataType&, const paddle::DataType&,
    const paddle::DataType&) {
  return {q_dtype, paddle::DataType::FLOAT32};
}

}  // namespace pmq_ops

PD_BUILD_OP(qwen25vl_flash_attn_varlen)
    .Inputs({"q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"})
    .Outputs({"out", "softmax_lse"})
    .Attrs({"max_seqlen_q: int", "max_seqlen_k: int", "softmax_scale: float",
            "causal: bool"})
    .SetKernelFn(PD_KERNEL(pmq_ops::FlashAttnVarlenForward))
    .SetInferShapeFn(PD_INFER_SHAPE(pmq_ops::FlashAttnVarlenForwardShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(pmq_ops::FlashAttnVarlenForwardDtype));

PD_BUILD_GRAD_OP(qwen25vl_flash_attn_varlen)
    .Inputs({"q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "out",
             "softmax_lse", paddle::Grad("out")})
    .Outputs({paddle::Grad("q"), paddle::Grad("k"), paddle::Grad("v")})
    .Attrs({"max_seqlen_q: int", "max_seqlen_k: int", "softmax_scale: float",
            "causal: bool"})
    .SetKernelFn(PD_KERNEL(pmq_ops::FlashAttnVarlenBackward));

PD_BUILD_OP(qwen25vl_decode_attention)
    .Inputs({"q", "k", "v", paddle::Optional("key_starts")})
    .Outputs({"out"})
    .Attrs({"softmax_scale: float"})
    .SetKernelFn(PD_KERNEL(pmq_ops::DecodeAttentionForward));
