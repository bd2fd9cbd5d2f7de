// CUDA kernels of variable-length attention: float16 / bfloat16 / float32
// storage, float32 arithmetic, tiled with an online softmax (memory linear in
// the sequence length; the forward saves only the per-row logsumexp).
//
// No Paddle header here on purpose (see flash_attn_varlen.h): this file is
// compile-checked with a bare `nvcc -c` (check_cuda_compile.sh) and launched
// from flash_attn_varlen_cuda_binding.cc on a CUDA build of Paddle.
//
// Work split: the forward gives each CTA 16 query rows of one (segment, head)
// (4 warps, one row at a time per warp, lanes = 32 keys of the current key
// tile for the scores and = head_dim slices for the output accumulator). The
// backward gives each single-warp CTA 16 keys of one (segment, head); it keeps
// dK/dV of its keys in shared memory, walks the query rows that can see them
// and adds dQ (and, for GQA, dK/dV across heads) with float32 atomics into
// workspaces that a last kernel converts to the output dtype. These kernels use
// CUDA cores, not tensor cores: correctness and memory behaviour first.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "flash_attn_varlen.h"

namespace pmq_ops {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kDimPerLane = kCudaMaxHeadDim / kWarp;  // output slice per lane
constexpr int kFwdWarps = 4;
constexpr int kFwdRowsPerWarp = 4;
constexpr int kFwdBlockQ = kFwdWarps * kFwdRowsPerWarp;
constexpr int kFwdBlockK = kWarp;  // one key per lane when scoring
constexpr int kBwdBlockK = 16;
// Stands for -inf in running maxima: finite, so no inf - inf = NaN can arise.
constexpr float kNoMax = -1e30f;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = kWarp / 2; o > 0; o >>= 1)
    x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = kWarp / 2; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

__device__ __forceinline__ int64_t clamp(int64_t x, int64_t lo, int64_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

struct Segment {
  int64_t q_begin, k_begin;
  int seqlen_q, seqlen_k;
};

// Segment `b` from the device-side cu_seqlens, clamped to the tensor sizes:
// the binding does not read cu_seqlens back to the host (that would sync the
// device on every call), so bad offsets must not turn into wild accesses.
__device__ __forceinline__ Segment load_segment(const VarlenAttnShape& s,
                                                int b) {
  const int64_t q0 = clamp(s.cu_seqlens_q[b], 0, s.total_q);
  const int64_t q1 = clamp(s.cu_seqlens_q[b + 1], q0, s.total_q);
  const int64_t k0 = clamp(s.cu_seqlens_k[b], 0, s.total_k);
  const int64_t k1 = clamp(s.cu_seqlens_k[b + 1], k0, s.total_k);
  return {q0, k0, static_cast<int>(q1 - q0), static_cast<int>(k1 - k0)};
}

// Keys (from key0, at most n) that query row qi sees; bottom-right causal.
__device__ __forceinline__ int visible_keys(bool causal, int qi, int offset,
                                            int key0, int n) {
  return causal ? min(n, qi + offset - key0 + 1) : n;
}

template <typename T>
__global__ void __launch_bounds__(kFwdWarps* kWarp)
    fwd_kernel(VarlenAttnShape s, const T* __restrict__ q,
               const T* __restrict__ k, const T* __restrict__ v,
               T* __restrict__ out, float* __restrict__ lse) {
  __shared__ float sq[kFwdBlockQ][kCudaMaxHeadDim];
  __shared__ float sk[kFwdBlockK][kCudaMaxHeadDim + 1];  // +1: no bank conflicts
  __shared__ float sv[kFwdBlockK][kCudaMaxHeadDim];

  const int b = blockIdx.y, h = blockIdx.z;
  const Segment seg = load_segment(s, b);
  const int row0 = blockIdx.x * kFwdBlockQ;
  if (row0 >= seg.seqlen_q) return;
  const int dim = static_cast<int>(s.head_dim);
  const int hk = h / static_cast<int>(s.heads / s.kv_heads);
  const int64_t q_stride = s.heads * dim, kv_stride = s.kv_heads * dim;
  const int offset = seg.seqlen_k - seg.seqlen_q;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;

  for (int i = threadIdx.x; i < kFwdBlockQ * dim; i += blockDim.x) {
    const int r = i / dim, d = i % dim;
    sq[r][d] = row0 + r < seg.seqlen_q
                   ? to_float(q[(seg.q_begin + row0 + r) * q_stride + h * dim + d]) *
                         s.softmax_scale
                   : 0.f;
  }
  float row_max[kFwdRowsPerWarp], row_sum[kFwdRowsPerWarp];
  float acc[kFwdRowsPerWarp][kDimPerLane];
#pragma unroll
  for (int rr = 0; rr < kFwdRowsPerWarp; ++rr) {
    row_max[rr] = kNoMax;
    row_sum[rr] = 0.f;
#pragma unroll
    for (int t = 0; t < kDimPerLane; ++t) acc[rr][t] = 0.f;
  }

  const int last_row = min(row0 + kFwdBlockQ, seg.seqlen_q) - 1;
  const int key_end =
      s.causal ? max(0, min(seg.seqlen_k, last_row + offset + 1)) : seg.seqlen_k;
  for (int key0 = 0; key0 < key_end; key0 += kFwdBlockK) {
    const int n = min(kFwdBlockK, key_end - key0);
    __syncthreads();  // the previous tile is consumed (and sq is written)
    for (int i = threadIdx.x; i < n * dim; i += blockDim.x) {
      const int j = i / dim, d = i % dim;
      const int64_t src = (seg.k_begin + key0 + j) * kv_stride + hk * dim + d;
      sk[j][d] = to_float(k[src]);
      sv[j][d] = to_float(v[src]);
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kFwdRowsPerWarp; ++rr) {
      const int r = warp * kFwdRowsPerWarp + rr;
      const int qi = row0 + r;
      // Both conditions are uniform across the warp, so the shuffles below
      // always see all 32 lanes.
      if (qi >= seg.seqlen_q) continue;
      const int visible = visible_keys(s.causal, qi, offset, key0, n);
      if (visible <= 0) continue;
      float score = kNoMax;
      if (lane < visible) {
        float dot = 0.f;
        for (int d = 0; d < dim; ++d) dot += sq[r][d] * sk[lane][d];
        score = dot;
      }
      const float new_max = fmaxf(row_max[rr], warp_max(score));
      const float p = lane < visible ? __expf(score - new_max) : 0.f;
      const float alpha = __expf(row_max[rr] - new_max);
      row_sum[rr] = row_sum[rr] * alpha + warp_sum(p);
      row_max[rr] = new_max;
#pragma unroll
      for (int t = 0; t < kDimPerLane; ++t) acc[rr][t] *= alpha;
      for (int j = 0; j < visible; ++j) {
        const float pj = __shfl_sync(kFullMask, p, j);
#pragma unroll
        for (int t = 0; t < kDimPerLane; ++t) {
          const int d = lane + t * kWarp;
          if (d < dim) acc[rr][t] += pj * sv[j][d];
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kFwdRowsPerWarp; ++rr) {
    const int qi = row0 + warp * kFwdRowsPerWarp + rr;
    if (qi >= seg.seqlen_q) continue;
    const float l = row_sum[rr];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* dst = out + (seg.q_begin + qi) * q_stride + h * dim;
#pragma unroll
    for (int t = 0; t < kDimPerLane; ++t) {
      const int d = lane + t * kWarp;
      if (d < dim) dst[d] = from_float<T>(acc[rr][t] * inv);
    }
    if (lane == 0)
      lse[h * s.total_q + seg.q_begin + qi] =
          l > 0.f ? row_max[rr] + logf(l) : INFINITY;
  }
}

// delta[h, t] = sum_d dout[t, h, d] * out[t, h, d]; one warp per (t, h).
template <typename T>
__global__ void delta_kernel(VarlenAttnShape s, const T* __restrict__ out,
                             const T* __restrict__ dout,
                             float* __restrict__ delta) {
  const int64_t item =
      static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (item >= s.total_q * s.heads) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t = item / s.heads, h = item % s.heads;
  const int64_t base = item * s.head_dim;
  float acc = 0.f;
  for (int d = lane; d < s.head_dim; d += kWarp)
    acc += to_float(out[base + d]) * to_float(dout[base + d]);
  acc = warp_sum(acc);
  if (lane == 0) delta[h * s.total_q + t] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kWarp)
    bwd_kernel(VarlenAttnShape s, const T* __restrict__ q,
               const T* __restrict__ k, const T* __restrict__ v,
               const T* __restrict__ dout, const float* __restrict__ lse,
               const float* __restrict__ delta, float* __restrict__ dq_accum,
               float* __restrict__ dk_accum, float* __restrict__ dv_accum) {
  __shared__ float sk[kBwdBlockK][kCudaMaxHeadDim + 1];
  __shared__ float sv[kBwdBlockK][kCudaMaxHeadDim + 1];
  __shared__ float sdk[kBwdBlockK][kCudaMaxHeadDim];
  __shared__ float sdv[kBwdBlockK][kCudaMaxHeadDim];
  __shared__ float sq[kCudaMaxHeadDim];
  __shared__ float sdo[kCudaMaxHeadDim];

  const int b = blockIdx.y, h = blockIdx.z;
  const Segment seg = load_segment(s, b);
  const int key0 = blockIdx.x * kBwdBlockK;
  if (key0 >= seg.seqlen_k) return;
  const int n = min(kBwdBlockK, seg.seqlen_k - key0);
  const int dim = static_cast<int>(s.head_dim);
  const int hk = h / static_cast<int>(s.heads / s.kv_heads);
  const int64_t q_stride = s.heads * dim, kv_stride = s.kv_heads * dim;
  const int offset = seg.seqlen_k - seg.seqlen_q;
  const int lane = threadIdx.x;

  for (int i = lane; i < kBwdBlockK * dim; i += kWarp) {
    const int j = i / dim, d = i % dim;
    const int64_t src = (seg.k_begin + key0 + j) * kv_stride + hk * dim + d;
    sk[j][d] = j < n ? to_float(k[src]) : 0.f;
    sv[j][d] = j < n ? to_float(v[src]) : 0.f;
    sdk[j][d] = 0.f;
    sdv[j][d] = 0.f;
  }

  // Rows before first_row see none of these keys (causal).
  const int first_row = s.causal ? max(0, key0 - offset) : 0;
  for (int qi = first_row; qi < seg.seqlen_q; ++qi) {
    const int64_t row = seg.q_begin + qi;
    __syncwarp();
    for (int d = lane; d < dim; d += kWarp) {
      sq[d] = to_float(q[row * q_stride + h * dim + d]) * s.softmax_scale;
      sdo[d] = to_float(dout[row * q_stride + h * dim + d]);
    }
    __syncwarp();
    const int visible = visible_keys(s.causal, qi, offset, key0, n);
    float p = 0.f, ds = 0.f;
    if (lane < visible) {
      float score = 0.f, dp = 0.f;
      for (int d = 0; d < dim; ++d) {
        score += sq[d] * sk[lane][d];
        dp += sdo[d] * sv[lane][d];
      }
      // visible > 0 means the row sees a key, so its lse is finite.
      p = __expf(score - lse[h * s.total_q + row]);
      ds = p * (dp - delta[h * s.total_q + row]);
    }
    float dq[kDimPerLane] = {};
    for (int j = 0; j < visible; ++j) {
      const float pj = __shfl_sync(kFullMask, p, j);
      const float dsj = __shfl_sync(kFullMask, ds, j);
#pragma unroll
      for (int t = 0; t < kDimPerLane; ++t) {
        const int d = lane + t * kWarp;
        if (d < dim) {
          sdv[j][d] += pj * sdo[d];
          sdk[j][d] += dsj * sq[d];
          dq[t] += dsj * sk[j][d];
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kDimPerLane; ++t) {
      const int d = lane + t * kWarp;
      if (d < dim && visible > 0)
        atomicAdd(dq_accum + row * q_stride + h * dim + d, dq[t] * s.softmax_scale);
    }
  }
  __syncwarp();
  // Heads of one GQA group share these dK/dV rows: add, do not store.
  for (int j = 0; j < n; ++j) {
    const int64_t dst = (seg.k_begin + key0 + j) * kv_stride + hk * dim;
    for (int d = lane; d < dim; d += kWarp) {
      atomicAdd(dk_accum + dst + d, sdk[j][d]);
      atomicAdd(dv_accum + dst + d, sdv[j][d]);
    }
  }
}

template <typename T>
__global__ void convert_kernel(const float* __restrict__ src,
                               T* __restrict__ dst, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_float<T>(src[i]);
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

void check_head_dim(const VarlenAttnShape& s) {
  if (s.head_dim > kCudaMaxHeadDim)
    throw std::invalid_argument("CUDA varlen attention supports head_dim <= " +
                                std::to_string(kCudaMaxHeadDim));
}

template <typename T>
void fwd_launch(const VarlenAttnShape& s, const void* q, const void* k,
                const void* v, void* out, float* lse, cudaStream_t stream) {
  const dim3 grid((s.max_seqlen_q + kFwdBlockQ - 1) / kFwdBlockQ, s.batch, s.heads);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  fwd_kernel<T><<<grid, kFwdWarps * kWarp, 0, stream>>>(
      s, static_cast<const T*>(q), static_cast<const T*>(k),
      static_cast<const T*>(v), static_cast<T*>(out), lse);
  check_launch("flash_attn_varlen forward");
}

template <typename T>
void convert(const float* src, void* dst, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((count + threads - 1) / threads, 65535);
  convert_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      src, static_cast<T*>(dst), count);
}

template <typename T>
void bwd_launch(const VarlenAttnShape& s, const void* q, const void* k,
                const void* v, const void* out, const void* dout,
                const float* lse, float* delta, float* dq_accum,
                float* dk_accum, float* dv_accum, void* dq, void* dk, void* dv,
                cudaStream_t stream) {
  const int64_t rows = s.total_q * s.heads;
  const int warps_per_block = 4;
  if (rows > 0) {
    delta_kernel<T><<<static_cast<unsigned>((rows + warps_per_block - 1) / warps_per_block),
                      warps_per_block * kWarp, 0, stream>>>(
        s, static_cast<const T*>(out), static_cast<const T*>(dout), delta);
  }
  const dim3 grid((s.max_seqlen_k + kBwdBlockK - 1) / kBwdBlockK, s.batch, s.heads);
  if (grid.x > 0 && grid.y > 0 && grid.z > 0) {
    bwd_kernel<T><<<grid, kWarp, 0, stream>>>(
        s, static_cast<const T*>(q), static_cast<const T*>(k),
        static_cast<const T*>(v), static_cast<const T*>(dout), lse, delta,
        dq_accum, dk_accum, dv_accum);
  }
  convert<T>(dq_accum, dq, s.total_q * s.heads * s.head_dim, stream);
  convert<T>(dk_accum, dk, s.total_k * s.kv_heads * s.head_dim, stream);
  convert<T>(dv_accum, dv, s.total_k * s.kv_heads * s.head_dim, stream);
  check_launch("flash_attn_varlen backward");
}

}  // namespace

void varlen_attn_fwd_cuda(const VarlenAttnShape& s, VarlenDType dtype,
                          const void* q, const void* k, const void* v,
                          void* out, float* lse, void* stream) {
  check_head_dim(s);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case VarlenDType::kFloat32:
      return fwd_launch<float>(s, q, k, v, out, lse, st);
    case VarlenDType::kFloat16:
      return fwd_launch<__half>(s, q, k, v, out, lse, st);
    case VarlenDType::kBFloat16:
      return fwd_launch<__nv_bfloat16>(s, q, k, v, out, lse, st);
  }
}

void varlen_attn_bwd_cuda(const VarlenAttnShape& s, VarlenDType dtype,
                          const void* q, const void* k, const void* v,
                          const void* out, const void* dout, const float* lse,
                          float* delta, float* dq_accum, float* dk_accum,
                          float* dv_accum, void* dq, void* dk, void* dv,
                          void* stream) {
  check_head_dim(s);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case VarlenDType::kFloat32:
      return bwd_launch<float>(s, q, k, v, out, dout, lse, delta, dq_accum,
                               dk_accum, dv_accum, dq, dk, dv, st);
    case VarlenDType::kFloat16:
      return bwd_launch<__half>(s, q, k, v, out, dout, lse, delta, dq_accum,
                                dk_accum, dv_accum, dq, dk, dv, st);
    case VarlenDType::kBFloat16:
      return bwd_launch<__nv_bfloat16>(s, q, k, v, out, dout, lse, delta,
                                       dq_accum, dk_accum, dv_accum, dq, dk, dv,
                                       st);
  }
}

}  // namespace pmq_ops
