// Raw-pointer interface of the variable-length attention kernels.
//
// This header includes no Paddle (and no CUDA) header on purpose: the CUDA
// kernels (.cu) and the CPU kernels are compiled against it alone, so they can
// be compile-checked with a bare `nvcc -c` / `g++ -c`. Only the operator
// binding files (flash_attn_varlen_op.cc, flash_attn_varlen_cuda_binding.cc)
// know about paddle::Tensor.
//
// Layout (flash-attention "varlen" convention, all tensors contiguous):
//   q, out, dq, dout : [total_q, heads, head_dim]
//   k, v, dk, dv     : [total_k, kv_heads, head_dim]
//   softmax_lse      : [heads, total_q], float32, natural-log logsumexp of the
//                      scaled scores of each query row; +inf for a row that
//                      sees no key (its output is 0).
//   cu_seqlens_q/k   : [batch + 1], int32, prefix sums of segment lengths.
// Causal masking uses flash-attn's bottom-right alignment: in a segment with
// seqlen_q rows and seqlen_k keys, query i sees key j iff
// j <= i + seqlen_k - seqlen_q.
#pragma once

#include <cstdint>

namespace pmq_ops {

struct VarlenAttnShape {
  const int32_t* cu_seqlens_q;  // host pointer on CPU, device pointer on CUDA
  const int32_t* cu_seqlens_k;
  int64_t batch;
  int64_t heads;
  int64_t kv_heads;
  int64_t head_dim;
  int64_t total_q;
  int64_t total_k;
  int64_t max_seqlen_q;
  int64_t max_seqlen_k;
  float softmax_scale;
  bool causal;
};

// CPU, float32. Parallelised with OpenMP.
void varlen_attn_fwd_cpu(const VarlenAttnShape& s, const float* q,
                         const float* k, const float* v, float* out,
                         float* lse);
void varlen_attn_bwd_cpu(const VarlenAttnShape& s, const float* q,
                         const float* k, const float* v, const float* out,
                         const float* dout, const float* lse, float* dq,
                         float* dk, float* dv);

// Decode attention on the CPU, float32: one new query per sequence against its
// whole cache (from key_starts[b] on, when given), no mask. q and out [batch, heads, head_dim]; k and v
// [batch, len, kv_heads, head_dim] (the KV cache layout), each sequence's rows
// packed, sequences kv_batch_stride elements apart; scores are
// (q . k) * softmax_scale, the softmax is taken over all len keys.
struct DecodeAttnShape {
  int64_t batch;
  int64_t heads;
  int64_t kv_heads;
  int64_t head_dim;
  int64_t len;
  // Elements from one sequence's cache to the next: len * kv_heads * head_dim
  // for a packed cache, capacity * kv_heads * head_dim for the filled prefix
  // of a preallocated one.
  int64_t kv_batch_stride;
  float softmax_scale;
  // Null, or the first key of each sequence [batch]: a left-padded batch's
  // padding keys before it are skipped (the softmax is over the rest).
  const int64_t* key_starts;
};

// Returns false (and writes nothing) unless head_dim is 16, 32, 64 or 128.
bool decode_attn_fwd_cpu(const DecodeAttnShape& s, const float* q,
                         const float* k, const float* v, float* out);

// CUDA launchers (flash_attn_varlen_cuda.cu). `stream` is a cudaStream_t.
enum class VarlenDType { kFloat32, kFloat16, kBFloat16 };

// Largest head_dim the CUDA kernels accept.
constexpr int64_t kCudaMaxHeadDim = 128;

void varlen_attn_fwd_cuda(const VarlenAttnShape& s, VarlenDType dtype,
                          const void* q, const void* k, const void* v,
                          void* out, float* lse, void* stream);

// Workspace: `delta` [heads, total_q]; `dq_accum` [total_q, heads, head_dim],
// `dk_accum` and `dv_accum` [total_k, kv_heads, head_dim], all float32; the
// three accumulators must be zero-filled by the caller.
void varlen_attn_bwd_cuda(const VarlenAttnShape& s, VarlenDType dtype,
                          const void* q, const void* k, const void* v,
                          const void* out, const void* dout, const float* lse,
                          float* delta, float* dq_accum, float* dk_accum,
                          float* dv_accum, void* dq, void* dk, void* dv,
                          void* stream);

}  // namespace pmq_ops
