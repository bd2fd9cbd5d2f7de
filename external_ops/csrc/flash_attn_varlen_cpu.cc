// CPU kernels of variable-length attention (float32), forward and backward.
//
// Flash-attention algorithm on CPU: every (segment, head, block of 64 query
// rows) walks the keys in blocks of 64 with an online softmax, so memory is
// linear in the sequence length (a 64x64 score tile per thread, never the
// seqlen x seqlen matrix); the forward stores only the logsumexp per row and
// the backward recomputes the probabilities from it.
//
// Speed comes from one register-blocked micro-kernel (4 rows x up to 80
// columns of float accumulators with AVX-512, 4 x 24 with AVX2) that every
// product of the algorithm is mapped onto, after packing operands into
// zero-padded tiles so no product has a ragged edge. It is written with GCC
// vector extensions instead of intrinsics so it stays portable; the hot
// functions are compiled for AVX-512, AVX2+FMA and baseline x86-64, each with
// its own vector width, and one is picked per call (cpu_isa.h), so the library
// is safe on any x86-64 CPU without -march=native.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <limits>
#include <new>
#include <vector>

#include "cpu_isa.h"
#include "flash_attn_varlen.h"

namespace pmq_ops {
namespace {

constexpr int kLanes = 16;      // tile padding: rows are multiples of 16 floats
constexpr int kBlockQ = 64;     // query rows per tile
constexpr int kBlockK = 64;     // keys per tile
constexpr int kRows = 4;        // micro-kernel rows
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// The forward and backward compute with vectors of L floats, one register of
// the level they are compiled for: 16 (AVX-512), 8 (AVX2), 4 (baseline SSE2).
// With AVX-512's 64-byte vectors in the AVX2 copy, every vector was a pair of
// ymm registers, the micro-kernel's accumulators lived on the stack and each
// broadcast went through 16 scalar stores: attention ran several times slower
// than the AVX2 instructions allow.
template <int L>
struct Vec {
  typedef float f __attribute__((vector_size(4 * L)));
  typedef int32_t i __attribute__((vector_size(4 * L)));
};
typedef Vec<kLanes>::f vf;  // the decode kernel's vector

// 64-byte aligned float storage for the tiles: their row lengths are
// multiples of 16 floats, so every row then starts on a cache line and no
// vector load straddles two lines. With malloc's 16-byte alignment the
// forward ran 15% slower or not depending on where the buffers happened to
// land.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, std::size_t) {
    ::operator delete(p, std::align_val_t(64));
  }
  friend bool operator==(const CacheLineAllocator&, const CacheLineAllocator&) {
    return true;
  }
  friend bool operator!=(const CacheLineAllocator&, const CacheLineAllocator&) {
    return false;
  }
};
using Buffer = std::vector<float, CacheLineAllocator<float>>;

// Vector loads/stores at any float address (memcpy compiles to one unaligned move).
template <int L>
PMQ_INLINE typename Vec<L>::f load(const float* p) {
  typename Vec<L>::f x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
template <typename V>
PMQ_INLINE void store(float* p, V x) { std::memcpy(p, &x, sizeof(x)); }
// x - 0 is x exactly (also -0), so the compiler emits a bare broadcast.
template <typename V>
PMQ_INLINE V splat(float x) { return x - V{}; }
PMQ_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename V>
PMQ_INLINE V vmax(V a, V b) { return a > b ? a : b; }
// Horizontal reductions as a tree: fold the upper half onto the lower one
// (lane i with lane i + L/2) until one lane is left; log2(L) steps instead of
// L - 1 dependent scalar operations (they run once per score row and tile).
template <int L>
PMQ_INLINE void split_halves(typename Vec<L>::f x, typename Vec<L / 2>::f& lo,
                             typename Vec<L / 2>::f& hi) {
  std::memcpy(&lo, &x, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof(lo), sizeof(hi));
}
template <typename V, int L = sizeof(V) / sizeof(float)>
PMQ_INLINE float hmax(V x) {
  if constexpr (L == 1) {
    return x[0];
  } else {
    typename Vec<L / 2>::f lo, hi;
    split_halves<L>(x, lo, hi);
    return hmax(vmax(lo, hi));
  }
}
template <typename V, int L = sizeof(V) / sizeof(float)>
PMQ_INLINE float hsum(V x) {
  if constexpr (L == 1) {
    return x[0];
  } else {
    typename Vec<L / 2>::f lo, hi;
    split_halves<L>(x, lo, hi);
    return hsum(lo + hi);
  }
}

// exp(x) for x <= 88: Cephes expf (range reduction to |r| <= ln2/2 and a
// degree-6 polynomial, ~1e-7 relative error); below the float range it gives
// 0, so -inf (masked scores) maps to 0. The softmax spends most of its
// non-matmul time here, and libm's expf does not vectorise without
// -ffast-math.
template <typename V>
PMQ_INLINE V vexp(V x) {
  using I = decltype(x < x);  // the int vector of V's width
  const I underflow = x < splat<V>(-87.33654475f);
  x = x > splat<V>(88.0f) ? splat<V>(88.0f) : x;
  x = x < splat<V>(-87.33654475f) ? splat<V>(-87.33654475f) : x;
  // Round x*log2(e) to the nearest integer n with the 1.5*2^23 trick; the
  // low mantissa bits of t then hold n.
  const V t = x * 1.44269504088896341f + 12582912.0f;
  const V n = t - 12582912.0f;
  const I ni = (I)t - 0x4B400000;
  const V r = x - n * 0.693359375f + n * 2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V y = p * r * r + r + 1.0f;
  const I bits = (ni + 127) << 23;
  const V result = y * (V)bits;
  return underflow ? splat<V>(0.f) : result;
}

// C[R][W*L] (+)= A[R][kdim] * B[kdim][W*L], A read as scalars at
// a[r*sar + k*sak] (so A may be a transposed view), B rows contiguous.
template <int L, int R, int W>
PMQ_INLINE void micro_kernel(const float* a, int64_t sar, int64_t sak,
                             const float* b, int64_t ldb, float* c,
                             int64_t ldc, int64_t kdim, bool accumulate) {
  using V = typename Vec<L>::f;
  V acc[R][W];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w)
      acc[r][w] = accumulate ? load<L>(c + r * ldc + w * L) : splat<V>(0.f);
  for (int64_t kk = 0; kk < kdim; ++kk) {
    V bv[W];
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) bv[w] = load<L>(b + kk * ldb + w * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V av = splat<V>(a[r * sar + kk * sak]);
#pragma GCC unroll 8
      for (int w = 0; w < W; ++w) acc[r][w] += av * bv[w];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) store(c + r * ldc + w * L, acc[r][w]);
}

// micro_kernel<L, kRows, vectors> for a run of 1..W vectors known at run time.
template <int L, int W>
PMQ_INLINE void micro_kernel_tail(int64_t vectors, const float* a, int64_t sar,
                                  int64_t sak, const float* b, int64_t ldb,
                                  float* c, int64_t ldc, int64_t kdim,
                                  bool accumulate) {
  if (vectors == W)
    micro_kernel<L, kRows, W>(a, sar, sak, b, ldb, c, ldc, kdim, accumulate);
  else if constexpr (W > 1)
    micro_kernel_tail<L, W - 1>(vectors, a, sar, sak, b, ldb, c, ldc, kdim,
                                accumulate);
}

// C[m][n] (+)= A[m][kdim] * B[kdim][n] with m a multiple of kRows and n a
// multiple of kLanes (callers pad their tiles with zeros to guarantee it).
template <int L>
PMQ_INLINE void gemm(int64_t m, int64_t n, int64_t kdim, const float* a,
                     int64_t sar, int64_t sak, const float* b, int64_t ldb,
                     float* c, int64_t ldc, bool accumulate) {
  // Accumulators per micro-kernel within the vector registers: AVX-512 (32
  // registers) runs 4 vectors at a time but a last run of 5 (head_dim 80) in
  // one go, since a 1-vector tail would be bound by its broadcasts; AVX2 and
  // SSE2 (16 registers) run 3 (12 accumulators, 3 B vectors, 1 broadcast).
  constexpr int kStep = L == 16 ? 4 : 3;
  constexpr int kLast = L == 16 ? 5 : 3;
  for (int64_t i = 0; i < m; i += kRows) {
    const float* ai = a + i * sar;
    float* ci = c + i * ldc;
    int64_t j = 0;
    for (; n - j > kLast * L; j += kStep * L)
      micro_kernel<L, kRows, kStep>(ai, sar, sak, b + j, ldb, ci + j, ldc,
                                    kdim, accumulate);
    micro_kernel_tail<L, kLast>((n - j) / L, ai, sar, sak, b + j, ldb, ci + j,
                                ldc, kdim, accumulate);
  }
}

// Copies `rows` rows of `dim` floats (source row stride `stride`) into a
// [rows_padded][dim_padded] tile, scaled, zero-filling the padding.
PMQ_INLINE void pack_rows(const float* src, int64_t stride, int64_t rows,
                          int64_t dim, float scale, float* dst,
                          int64_t rows_padded, int64_t dim_padded) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * stride;
    float* d = dst + r * dim_padded;
    for (int64_t x = 0; x < dim; ++x) d[x] = s[x] * scale;
    std::fill(d + dim, d + dim_padded, 0.f);
  }
  std::fill(dst + rows * dim_padded, dst + rows_padded * dim_padded, 0.f);
}

// Transposed copy: dst[x][r] = src[r][x], into a [dim][cols_padded] tile.
// Source rows are read sequentially: they are tokens of one head, a whole
// [heads*dim] row apart, and walking them column by column would touch 64
// lines of one L1 set group per column and thrash the cache.
PMQ_INLINE void pack_transposed(const float* src, int64_t stride, int64_t rows,
                                int64_t dim, float* dst, int64_t cols_padded) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * stride;
    for (int64_t x = 0; x < dim; ++x) dst[x * cols_padded + r] = s[x];
  }
  for (int64_t x = 0; x < dim; ++x)
    std::fill(dst + x * cols_padded + rows, dst + (x + 1) * cols_padded, 0.f);
}

// Number of keys (from the block start `key0`, at most `n`) that query row
// `qi` of a segment may see; <= 0 means none.
PMQ_INLINE int64_t visible_keys(bool causal, int64_t qi, int64_t offset,
                                int64_t key0, int64_t n) {
  return causal ? std::min(n, qi + offset - key0 + 1) : n;
}

// Packs keys [key0, key0 + 64) of kv head `hk` of segment `seg`: K transposed
// into a [dim][64] tile and V into a [64][dp] tile, zero-padded past the
// segment end (so the K tile's row stride is always 64, whatever part of it a
// query block reads).
PMQ_INLINE void pack_kv_tile(const VarlenAttnShape& sh, const float* k,
                             const float* v, int64_t seg, int64_t key0,
                             int64_t hk, float* kt, float* vt) {
  const int64_t dim = sh.head_dim, stride = sh.kv_heads * dim;
  const int64_t seqlen_k = sh.cu_seqlens_k[seg + 1] - sh.cu_seqlens_k[seg];
  const int64_t n = std::min<int64_t>(kBlockK, seqlen_k - key0);
  const int64_t row = (sh.cu_seqlens_k[seg] + key0) * stride + hk * dim;
  pack_transposed(k + row, stride, n, dim, kt, kBlockK);
  pack_rows(v + row, stride, n, dim, 1.f, vt, round_up(n, kLanes),
            round_up(dim, kLanes));
}

// Key/value tiles of the segments whose tiles are read more than once (by
// several query blocks or GQA heads), packed before the forward. Those query
// blocks then stream contiguous tiles instead of gathering rows a
// [kv_heads*dim] stride apart again, which cost as much as the matmuls. Tiles
// read once (64-token vision windows) are packed by their unit instead:
// allocating and filling a K+V-sized buffer for them only costs page faults.
struct PackedKV {
  int64_t tile_size, kv_heads;
  std::vector<int64_t> block_start;  // [batch + 1] prefix sums of key blocks
  std::vector<char> packed;          // [batch] whether the segment is here
  Buffer kt, v;

  PackedKV(const VarlenAttnShape& sh, const float* k, const float* vsrc)
      : tile_size(round_up(sh.head_dim, kLanes) * kBlockK),
        kv_heads(sh.kv_heads),
        block_start(sh.batch + 1, 0),
        packed(sh.batch, 0) {
    const int64_t group = sh.heads / sh.kv_heads;
    for (int64_t b = 0; b < sh.batch; ++b) {
      const int64_t seqlen_q = sh.cu_seqlens_q[b + 1] - sh.cu_seqlens_q[b];
      const int64_t seqlen_k = sh.cu_seqlens_k[b + 1] - sh.cu_seqlens_k[b];
      packed[b] = (seqlen_q + kBlockQ - 1) / kBlockQ * group > 1;
      block_start[b + 1] =
          block_start[b] + (packed[b] ? (seqlen_k + kBlockK - 1) / kBlockK : 0);
    }
    const int64_t tiles = block_start[sh.batch] * kv_heads;
    kt.resize(tiles * tile_size);
    v.resize(tiles * tile_size);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t block = t / kv_heads;
      const int64_t b =
          std::upper_bound(block_start.begin(), block_start.end(), block) -
          block_start.begin() - 1;
      pack_kv_tile(sh, k, vsrc, b, (block - block_start[b]) * kBlockK,
                   t % kv_heads, kt.data() + t * tile_size,
                   v.data() + t * tile_size);
    }
  }
  int64_t tile(int64_t seg, int64_t key_block, int64_t hk) const {
    return ((block_start[seg] + key_block) * kv_heads + hk) * tile_size;
  }
};

// Per-thread scratch of the forward (all tiles are a few tens of KiB).
struct FwdScratch {
  int64_t dp;  // head_dim padded to kLanes
  Buffer q, o, kt, v, s, row_max, row_sum;
  explicit FwdScratch(int64_t head_dim)
      : dp(round_up(head_dim, kLanes)),
        q(kBlockQ * dp),
        o(kBlockQ * dp),
        kt(dp * kBlockK),
        v(kBlockK * dp),
        s(kBlockQ * kBlockK),
        row_max(kBlockQ),
        row_sum(kBlockQ) {}
};

// One (segment, head, query block) of the forward.
template <int L>
PMQ_INLINE void fwd_unit(const VarlenAttnShape& sh, const float* q, const float* k,
              const float* v, const PackedKV& kv, float* out, float* lse,
              int64_t seg, int64_t head, int64_t qblock, FwdScratch& ws) {
  using V = typename Vec<L>::f;
  const int64_t dim = sh.head_dim, dp = ws.dp;
  const int64_t kv_head = head / (sh.heads / sh.kv_heads);
  const int64_t q_begin = sh.cu_seqlens_q[seg];
  const int64_t k_begin = sh.cu_seqlens_k[seg];
  const int64_t seqlen_q = sh.cu_seqlens_q[seg + 1] - q_begin;
  const int64_t seqlen_k = sh.cu_seqlens_k[seg + 1] - k_begin;
  const int64_t offset = seqlen_k - seqlen_q;  // bottom-right causal alignment
  const int64_t row0 = qblock * kBlockQ;
  const int64_t m = std::min<int64_t>(kBlockQ, seqlen_q - row0);
  const int64_t mp = round_up(m, kRows);
  const int64_t q_stride = sh.heads * dim;

  pack_rows(q + (q_begin + row0) * q_stride + head * dim, q_stride, m, dim,
            sh.softmax_scale, ws.q.data(), mp, dp);
  std::fill(ws.o.begin(), ws.o.begin() + mp * dp, 0.f);
  std::fill(ws.row_max.begin(), ws.row_max.end(), kNegInf);
  std::fill(ws.row_sum.begin(), ws.row_sum.end(), 0.f);

  // Keys beyond the last row's causal limit contribute nothing.
  const int64_t key_end =
      sh.causal ? std::max<int64_t>(
                      0, std::min(seqlen_k, row0 + m - 1 + offset + 1))
                : seqlen_k;
  for (int64_t key0 = 0; key0 < key_end; key0 += kBlockK) {
    const int64_t n = std::min<int64_t>(kBlockK, key_end - key0);
    const int64_t np = round_up(n, kLanes);
    const float* kt = ws.kt.data();
    const float* vt = ws.v.data();
    if (kv.packed[seg]) {
      const int64_t tile = kv.tile(seg, key0 / kBlockK, kv_head);
      kt = kv.kt.data() + tile;
      vt = kv.v.data() + tile;
    } else {
      pack_kv_tile(sh, k, v, seg, key0, kv_head, ws.kt.data(), ws.v.data());
    }

    float* s = ws.s.data();
    gemm<L>(mp, np, dim, ws.q.data(), dp, 1, kt, kBlockK, s, np, false);

    // Online softmax: rescale what was accumulated when the row max grows.
    for (int64_t r = 0; r < mp; ++r) {
      float* srow = s + r * np;
      const int64_t visible =
          r < m ? visible_keys(sh.causal, row0 + r, offset, key0, n) : 0;
      if (visible <= 0) {
        std::fill(srow, srow + np, 0.f);
        continue;
      }
      // Masked and padding columns become -inf, which vexp maps to 0.
      std::fill(srow + visible, srow + np, kNegInf);
      V block_max = load<L>(srow);
      for (int64_t c = L; c < np; c += L)
        block_max = vmax(block_max, load<L>(srow + c));
      const float new_max = std::max(ws.row_max[r], hmax(block_max));
      const float alpha = std::exp(ws.row_max[r] - new_max);  // 0 at first
      V vsum = splat<V>(0.f);
      for (int64_t c = 0; c < np; c += L) {
        const V p = vexp(load<L>(srow + c) - new_max);
        store(srow + c, p);
        vsum += p;
      }
      ws.row_sum[r] = ws.row_sum[r] * alpha + hsum(vsum);
      ws.row_max[r] = new_max;
      if (alpha != 1.f) {
        float* orow = ws.o.data() + r * dp;
        for (int64_t x = 0; x < dp; x += L)
          store(orow + x, load<L>(orow + x) * alpha);
      }
    }
    gemm<L>(mp, dp, n, s, np, 1, vt, dp, ws.o.data(), dp, true);
  }

  for (int64_t r = 0; r < m; ++r) {
    const float l = ws.row_sum[r];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float* orow = ws.o.data() + r * dp;
    float* dst = out + (q_begin + row0 + r) * q_stride + head * dim;
    for (int64_t x = 0; x < dim; ++x) dst[x] = orow[x] * inv;
    lse[head * sh.total_q + q_begin + row0 + r] =
        l > 0.f ? ws.row_max[r] + std::log(l) : kPosInf;
  }
}

// Per-thread scratch of the backward: whole-segment Q, dO and dQ for one
// head (linear in the sequence length) plus key-block tiles.
struct BwdScratch {
  int64_t dp;
  Buffer q, dout, dq, delta, kmat, kt, vt, dk, dv, p, ds;
  BwdScratch(int64_t head_dim, int64_t max_seqlen_q)
      : dp(round_up(head_dim, kLanes)),
        q(round_up(max_seqlen_q, kBlockQ) * dp),
        dout(round_up(max_seqlen_q, kBlockQ) * dp),
        dq(round_up(max_seqlen_q, kBlockQ) * dp),
        delta(max_seqlen_q),
        kmat(kBlockK * dp),
        kt(dp * kBlockK),
        vt(dp * kBlockK),
        dk(kBlockK * dp),
        dv(kBlockK * dp),
        p(kBlockQ * kBlockK),
        ds(kBlockQ * kBlockK) {}
};

// One (segment, head) of the backward (flash-attention 2 loop order: key
// blocks outside, query blocks inside). dq of this head is owned by this unit;
// dk/dv go to `dk_out`/`dv_out`, laid out [total_k, dk_heads, head_dim] where
// dk_heads is kv_heads (no GQA) or heads (GQA partials, summed by the caller).
template <int L>
PMQ_INLINE void bwd_unit(const VarlenAttnShape& sh, const float* q, const float* k,
              const float* v, const float* out, const float* dout,
              const float* lse, float* dq, float* dk_out, float* dv_out,
              int64_t dk_heads, int64_t seg, int64_t head, BwdScratch& ws) {
  using V = typename Vec<L>::f;
  const int64_t dim = sh.head_dim, dp = ws.dp;
  const int64_t kv_head = head / (sh.heads / sh.kv_heads);
  const int64_t dk_head = dk_heads == sh.heads ? head : kv_head;
  const int64_t q_begin = sh.cu_seqlens_q[seg];
  const int64_t k_begin = sh.cu_seqlens_k[seg];
  const int64_t seqlen_q = sh.cu_seqlens_q[seg + 1] - q_begin;
  const int64_t seqlen_k = sh.cu_seqlens_k[seg + 1] - k_begin;
  const int64_t offset = seqlen_k - seqlen_q;
  const int64_t q_stride = sh.heads * dim, kv_stride = sh.kv_heads * dim;
  const int64_t dk_stride = dk_heads * dim;
  const int64_t sqp = round_up(seqlen_q, kBlockQ);
  const float* lse_h = lse + head * sh.total_q + q_begin;

  const float* qh = q + q_begin * q_stride + head * dim;
  const float* douth = dout + q_begin * q_stride + head * dim;
  const float* outh = out + q_begin * q_stride + head * dim;
  pack_rows(qh, q_stride, seqlen_q, dim, sh.softmax_scale, ws.q.data(), sqp,
            dp);
  pack_rows(douth, q_stride, seqlen_q, dim, 1.f, ws.dout.data(), sqp, dp);
  std::fill(ws.dq.begin(), ws.dq.begin() + sqp * dp, 0.f);
  // delta_i = sum_d dout_i * out_i, the softmax-Jacobian term of row i.
  for (int64_t r = 0; r < seqlen_q; ++r) {
    float acc = 0.f;
    for (int64_t x = 0; x < dim; ++x)
      acc += douth[r * q_stride + x] * outh[r * q_stride + x];
    ws.delta[r] = acc;
  }

  for (int64_t key0 = 0; key0 < seqlen_k; key0 += kBlockK) {
    const int64_t n = std::min<int64_t>(kBlockK, seqlen_k - key0);
    const int64_t np = round_up(n, kLanes);
    const float* kblk = k + (k_begin + key0) * kv_stride + kv_head * dim;
    const float* vblk = v + (k_begin + key0) * kv_stride + kv_head * dim;
    pack_rows(kblk, kv_stride, n, dim, 1.f, ws.kmat.data(), np, dp);
    pack_transposed(kblk, kv_stride, n, dim, ws.kt.data(), np);
    pack_transposed(vblk, kv_stride, n, dim, ws.vt.data(), np);
    std::fill(ws.dk.begin(), ws.dk.begin() + np * dp, 0.f);
    std::fill(ws.dv.begin(), ws.dv.begin() + np * dp, 0.f);

    // With causal masking the first rows may see none of these keys.
    const int64_t first_row =
        sh.causal ? std::max<int64_t>(0, key0 - offset) : 0;
    for (int64_t row0 = first_row / kBlockQ * kBlockQ; row0 < seqlen_q;
         row0 += kBlockQ) {
      const int64_t m = std::min<int64_t>(kBlockQ, seqlen_q - row0);
      const int64_t mp = round_up(m, kRows);
      const float* qblk = ws.q.data() + row0 * dp;
      const float* doblk = ws.dout.data() + row0 * dp;
      float* p = ws.p.data();
      float* ds = ws.ds.data();

      gemm<L>(mp, np, dim, qblk, dp, 1, ws.kt.data(), np, p, np, false);
      gemm<L>(mp, np, dim, doblk, dp, 1, ws.vt.data(), np, ds, np, false);
      for (int64_t r = 0; r < mp; ++r) {
        float* prow = p + r * np;
        float* dsrow = ds + r * np;
        const int64_t visible =
            r < m ? visible_keys(sh.causal, row0 + r, offset, key0, n) : 0;
        if (visible <= 0) {
          std::fill(prow, prow + np, 0.f);
          std::fill(dsrow, dsrow + np, 0.f);
          continue;
        }
        // lse is +inf for rows that see no key at all; visible > 0 excludes
        // them here, so the subtraction is finite.
        const float row_lse = lse_h[row0 + r];
        const float row_delta = ws.delta[row0 + r];
        std::fill(prow + visible, prow + np, kNegInf);
        for (int64_t c = 0; c < np; c += L) {
          const V pr = vexp(load<L>(prow + c) - row_lse);
          store(prow + c, pr);
          store(dsrow + c, pr * (load<L>(dsrow + c) - row_delta));
        }
      }
      // dV += P^T dO, dK += dS^T (scale*Q), dQ += dS K (scaled at the end).
      gemm<L>(np, dp, m, p, 1, np, doblk, dp, ws.dv.data(), dp, true);
      gemm<L>(np, dp, m, ds, 1, np, qblk, dp, ws.dk.data(), dp, true);
      gemm<L>(mp, dp, n, ds, np, 1, ws.kmat.data(), dp, ws.dq.data() + row0 * dp,
           dp, true);
    }
    for (int64_t r = 0; r < n; ++r) {
      float* dkr = dk_out + (k_begin + key0 + r) * dk_stride + dk_head * dim;
      float* dvr = dv_out + (k_begin + key0 + r) * dk_stride + dk_head * dim;
      std::memcpy(dkr, ws.dk.data() + r * dp, dim * sizeof(float));
      std::memcpy(dvr, ws.dv.data() + r * dp, dim * sizeof(float));
    }
  }
  for (int64_t r = 0; r < seqlen_q; ++r) {
    float* dst = dq + (q_begin + r) * q_stride + head * dim;
    const float* src = ws.dq.data() + r * dp;
    for (int64_t x = 0; x < dim; ++x) dst[x] = src[x] * sh.softmax_scale;
  }
}


// One kv head of one sequence at decode: the `group` query rows q [group][dim]
// (scaled by the caller's scale after the dot product, as the reference's
// eager attention does) against `len` keys/values whose rows are `stride`
// floats apart. kNv vectors of kLanes floats hold one key or value row.
template <int kNv>
PMQ_INLINE void decode_group(const float* q, const float* k, const float* v,
                             float* out, int64_t group, int64_t len,
                             int64_t stride, float scale, float* scores,
                             int64_t len_padded) {
  constexpr int64_t dim = kNv * kLanes;
  for (int64_t j = 0; j < len; ++j) {
    vf key[kNv];
#pragma GCC unroll 16
    for (int x = 0; x < kNv; ++x) key[x] = load<kLanes>(k + j * stride + x * kLanes);
    for (int64_t g = 0; g < group; ++g) {
      vf acc = load<kLanes>(q + g * dim) * key[0];
#pragma GCC unroll 16
      for (int x = 1; x < kNv; ++x) acc += load<kLanes>(q + g * dim + x * kLanes) * key[x];
      scores[g * len_padded + j] = hsum(acc) * scale;
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    float* s = scores + g * len_padded;
    std::fill(s + len, s + len_padded, kNegInf);  // vexp maps the padding to 0
    vf vmax_acc = load<kLanes>(s);
    for (int64_t j = kLanes; j < len_padded; j += kLanes)
      vmax_acc = vmax(vmax_acc, load<kLanes>(s + j));
    const float row_max = hmax(vmax_acc);
    vf vsum = splat<vf>(0.f);
    for (int64_t j = 0; j < len_padded; j += kLanes) {
      const vf p = vexp(load<kLanes>(s + j) - row_max);
      store(s + j, p);
      vsum += p;
    }
    vf acc[kNv];
#pragma GCC unroll 16
    for (int x = 0; x < kNv; ++x) acc[x] = splat<vf>(0.f);
    for (int64_t j = 0; j < len; ++j) {
      const vf p = splat<vf>(s[j]);
#pragma GCC unroll 16
      for (int x = 0; x < kNv; ++x) acc[x] += p * load<kLanes>(v + j * stride + x * kLanes);
    }
    const vf inv = splat<vf>(1.f / hsum(vsum));
#pragma GCC unroll 16
    for (int x = 0; x < kNv; ++x) store(out + g * dim + x * kLanes, acc[x] * inv);
  }
}

template <int kNv>
PMQ_INLINE void decode_attn_kernel(std::integral_constant<int, kNv>,
                                   const DecodeAttnShape& sh, const float* q,
                                   const float* k, const float* v, float* out) {
  const int64_t group = sh.heads / sh.kv_heads;
  const int64_t stride = sh.kv_heads * sh.head_dim;
  const int64_t len_padded = round_up(sh.len, kLanes);
  Buffer scores(group * len_padded);
  for (int64_t b = 0; b < sh.batch; ++b) {
    const int64_t start = sh.key_starts != nullptr ? sh.key_starts[b] : 0;
    for (int64_t hk = 0; hk < sh.kv_heads; ++hk) {
      const int64_t q_row = (b * sh.heads + hk * group) * sh.head_dim;
      const int64_t kv_row = b * sh.kv_batch_stride + start * stride + hk * sh.head_dim;
      decode_group<kNv>(q + q_row, k + kv_row, v + kv_row, out + q_row, group,
                        sh.len - start, stride, sh.softmax_scale, scores.data(),
                        len_padded);
    }
  }
}
// name_avx512 / name_avx2 / name_baseline as PMQ_ISA_VARIANTS makes them, each
// running the body with its level's vector width (see Vec).
#define PMQ_WIDTH_VARIANTS(name)                                 \
  template <typename... A>                                       \
  PMQ_TARGET_AVX512 void name##_avx512(A&&... a) {               \
    name<16>(std::forward<A>(a)...);                             \
  }                                                              \
  template <typename... A>                                       \
  PMQ_TARGET_AVX2 void name##_avx2(A&&... a) {                   \
    name<8>(std::forward<A>(a)...);                              \
  }                                                              \
  template <typename... A>                                       \
  void name##_baseline(A&&... a) {                               \
    name<4>(std::forward<A>(a)...);                              \
  }
PMQ_WIDTH_VARIANTS(fwd_unit)
PMQ_WIDTH_VARIANTS(bwd_unit)
PMQ_ISA_VARIANTS(decode_attn_kernel)
}  // namespace

void varlen_attn_fwd_cpu(const VarlenAttnShape& sh, const float* q,
                         const float* k, const float* v, float* out,
                         float* lse) {
  // Work units (segment, head, query block), flattened so OpenMP can balance
  // windows of 64 tokens and long segments alike.
  std::vector<int64_t> unit_start(sh.batch + 1, 0);
  for (int64_t b = 0; b < sh.batch; ++b) {
    const int64_t seqlen_q = sh.cu_seqlens_q[b + 1] - sh.cu_seqlens_q[b];
    unit_start[b + 1] =
        unit_start[b] + (seqlen_q + kBlockQ - 1) / kBlockQ * sh.heads;
  }
  const int64_t units = unit_start[sh.batch];
  const PackedKV kv(sh, k, v);
  const Isa isa = cpu_isa();
// monotonic: GCC's default dynamic schedule calls GOMP_loop_nonmonotonic_*, which the Intel
// OpenMP runtime these operators link (build_config.py) does not implement.
#pragma omp parallel
  {
    FwdScratch ws(sh.head_dim);
#pragma omp for schedule(monotonic: dynamic, 4)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t b =
          std::upper_bound(unit_start.begin(), unit_start.end(), u) -
          unit_start.begin() - 1;
      const int64_t local = u - unit_start[b];
      PMQ_CALL_ISA(isa, fwd_unit, sh, q, k, v, kv, out, lse, b,
                   local % sh.heads, local / sh.heads, ws);
    }
  }
}

void varlen_attn_bwd_cpu(const VarlenAttnShape& sh, const float* q,
                         const float* k, const float* v, const float* out,
                         const float* dout, const float* lse, float* dq,
                         float* dk, float* dv) {
  const int64_t group = sh.heads / sh.kv_heads;
  // With GQA several heads write the same dk/dv rows: each head writes its
  // own float32 partial and the partials are summed afterwards, which keeps
  // the result deterministic and needs no atomics.
  std::vector<float> dk_part, dv_part;
  float* dk_dst = dk;
  float* dv_dst = dv;
  if (group > 1) {
    dk_part.resize(sh.total_k * sh.heads * sh.head_dim);
    dv_part.resize(sh.total_k * sh.heads * sh.head_dim);
    dk_dst = dk_part.data();
    dv_dst = dv_part.data();
  }

  // Largest segments first so the dynamic schedule ends balanced.
  std::vector<int64_t> order(sh.batch * sh.heads);
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  auto cost = [&](int64_t u) {
    const int64_t b = u / sh.heads;
    return static_cast<int64_t>(sh.cu_seqlens_q[b + 1] - sh.cu_seqlens_q[b]) *
           (sh.cu_seqlens_k[b + 1] - sh.cu_seqlens_k[b]);
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost(a) > cost(b); });
  const int64_t units = static_cast<int64_t>(order.size());
  const Isa isa = cpu_isa();
  // Scratch is sized from cu_seqlens, not from the caller's max_seqlen_q.
  int64_t longest_q = 0;
  for (int64_t b = 0; b < sh.batch; ++b)
    longest_q = std::max<int64_t>(
        longest_q, sh.cu_seqlens_q[b + 1] - sh.cu_seqlens_q[b]);
#pragma omp parallel  // monotonic: as in the forward
  {
    BwdScratch ws(sh.head_dim, longest_q);
#pragma omp for schedule(monotonic: dynamic, 1)
    for (int64_t i = 0; i < units; ++i) {
      const int64_t u = order[i];
      PMQ_CALL_ISA(isa, bwd_unit, sh, q, k, v, out, dout, lse, dq, dk_dst,
                   dv_dst, group > 1 ? sh.heads : sh.kv_heads, u / sh.heads,
                   u % sh.heads, ws);
    }
  }
  if (group > 1) {
    const int64_t dim = sh.head_dim;
#pragma omp parallel for
    for (int64_t t = 0; t < sh.total_k; ++t) {
      for (int64_t hk = 0; hk < sh.kv_heads; ++hk) {
        float* dkr = dk + (t * sh.kv_heads + hk) * dim;
        float* dvr = dv + (t * sh.kv_heads + hk) * dim;
        for (int64_t x = 0; x < dim; ++x) {
          float dk_sum = 0.f, dv_sum = 0.f;
          for (int64_t g = 0; g < group; ++g) {
            const int64_t src = (t * sh.heads + hk * group + g) * dim + x;
            dk_sum += dk_part[src];
            dv_sum += dv_part[src];
          }
          dkr[x] = dk_sum;
          dvr[x] = dv_sum;
        }
      }
    }
  }
}

bool decode_attn_fwd_cpu(const DecodeAttnShape& sh, const float* q,
                         const float* k, const float* v, float* out) {
  // One thread: a step attends over ~1 MB of cache per layer in tens of
  // microseconds, less than what waking a thread team costs.
  if (sh.head_dim % kLanes != 0) return false;
  const Isa isa = cpu_isa();
  switch (sh.head_dim / kLanes) {
    case 1: PMQ_CALL_ISA(isa, decode_attn_kernel, std::integral_constant<int, 1>{}, sh, q, k, v, out); return true;
    case 2: PMQ_CALL_ISA(isa, decode_attn_kernel, std::integral_constant<int, 2>{}, sh, q, k, v, out); return true;
    case 4: PMQ_CALL_ISA(isa, decode_attn_kernel, std::integral_constant<int, 4>{}, sh, q, k, v, out); return true;
    case 8: PMQ_CALL_ISA(isa, decode_attn_kernel, std::integral_constant<int, 8>{}, sh, q, k, v, out); return true;
    default: return false;
  }
}

}  // namespace pmq_ops
