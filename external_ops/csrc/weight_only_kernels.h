// The decode kernels of weight_only_cpu.cc at one vector width: included once
// per instruction-set level, under `#pragma GCC target` for the AVX2 and
// AVX-512 copies, with
//   PMQ_WO_LANES  floats per vector (16 AVX-512, 8 AVX2, 4 baseline)
//   PMQ_WO_NS     a namespace of its own for this copy
//   PMQ_WO_LEVEL  the level's name: entry points linear_rows_<level>,
//                 dequantize_rows_<level> and (AVX2, AVX-512) quantize_rows_<level>
// A pragma rather than per-function target attributes because the widening
// loads are intrinsics, and GCC inlines an AVX2 intrinsic only into functions
// compiled for AVX2: so every helper between the entry and the intrinsic must
// be, too. No include guard: included three times on purpose.
//
// Lanes: PMQ_WO_LANES-float vectors and the loads that widen stored weights to
// floats. GCC's __builtin_convertvector widens bytes lane by lane (pinsrd), so
// the AVX2 / AVX-512 copies use pmovsx/pmovzx intrinsics; the baseline keeps
// the portable vector extensions.

namespace pmq_ops {
namespace {
namespace PMQ_WO_NS {

template <int W>
struct Lanes;

#if PMQ_WO_LANES == 16
template <>
struct Lanes<16> {  // AVX-512
  typedef __m512 vf;
  static PMQ_INLINE vf load(const float* p) { return _mm512_loadu_ps(p); }
  static PMQ_INLINE void store(float* p, vf x) { _mm512_storeu_ps(p, x); }
  static PMQ_INLINE vf bf16(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static PMQ_INLINE vf int8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static PMQ_INLINE void nibbles(const uint8_t* p, vf& lo, vf& hi) {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
  }
};
#elif PMQ_WO_LANES == 8
template <>
struct Lanes<8> {  // AVX2
  typedef __m256 vf;
  static PMQ_INLINE vf load(const float* p) { return _mm256_loadu_ps(p); }
  static PMQ_INLINE void store(float* p, vf x) { _mm256_storeu_ps(p, x); }
  static PMQ_INLINE vf bf16(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static PMQ_INLINE vf int8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static PMQ_INLINE void nibbles(const uint8_t* p, vf& lo, vf& hi) {
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(15)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4));
  }
};
#else
template <>
struct Lanes<4> {  // baseline: SSE2 on x86-64, any target elsewhere
  typedef float vf __attribute__((vector_size(16)));
  typedef float vf_u __attribute__((vector_size(16), aligned(4)));
  typedef int32_t vi __attribute__((vector_size(16)));
  typedef uint32_t vu __attribute__((vector_size(16)));
  typedef int8_t vb_u __attribute__((vector_size(4), aligned(1)));
  typedef uint8_t vub_u __attribute__((vector_size(4), aligned(1)));
  typedef uint16_t vh_u __attribute__((vector_size(8), aligned(2)));
  static PMQ_INLINE vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
  static PMQ_INLINE void store(float* p, vf x) { *reinterpret_cast<vf_u*>(p) = x; }
  static PMQ_INLINE vf bf16(const uint16_t* p) {
    return (vf)(__builtin_convertvector(*reinterpret_cast<const vh_u*>(p), vu) << 16);
  }
  static PMQ_INLINE vf int8(const int8_t* p) {
    return __builtin_convertvector(__builtin_convertvector(*reinterpret_cast<const vb_u*>(p), vi), vf);
  }
  // 4 bytes -> their low nibbles (lo) and high nibbles (hi) as floats.
  static PMQ_INLINE void nibbles(const uint8_t* p, vf& lo, vf& hi) {
    const vi bytes = __builtin_convertvector(*reinterpret_cast<const vub_u*>(p), vi);
    lo = __builtin_convertvector(bytes & 15, vf);
    hi = __builtin_convertvector(bytes >> 4, vf);
  }
};
#endif

template <typename V>
PMQ_INLINE float hsum(V x) {
  float s = 0.f;
  for (int i = 0; i < int(sizeof(V) / sizeof(float)); ++i) s += x[i];
  return s;
}

// Weight rows as float vectors: bfloat16 is the top half of a float32; int8
// is converted unscaled (its one scale per row is applied to the sum).
template <int W>
struct Bf16Row {
  const uint16_t* p;
  PMQ_INLINE typename Lanes<W>::vf vec(int64_t i) const { return Lanes<W>::bf16(p + i); }
  PMQ_INLINE float one(int64_t i) const { return bf16_to_float(p[i]); }
};
template <int W>
struct Int8Row {
  const int8_t* p;
  PMQ_INLINE typename Lanes<W>::vf vec(int64_t i) const { return Lanes<W>::int8(p + i); }
  PMQ_INLINE float one(int64_t i) const { return float(p[i]); }
};

// Weight rows per tile for R activation rows: NB x R accumulators keep enough
// FMA chains in flight, give the prefetchers NB streams at once, and let each
// activation vector loaded serve NB weight rows: with one weight row per tile,
// 4 activation rows (from L2 beyond a few rows) cost one load per FMA and
// M = 8 ran 3.1x slower than M = 1 (bench_weight_only.py). AVX-512 has 32
// vector registers: 4 x 4 accumulators, or 3 x 8 (kWideTiles); AVX2 has 16:
// up to 4 x 2. The baseline keeps small tiles: its int4 tile holds two
// accumulator sets.
constexpr int tile_rows(int r) {
  return PMQ_WO_LANES == 16 ? (r <= kMaxRows ? 4 : 3)
                            : PMQ_WO_LANES == 8 ? (r <= 2 ? 4 : 2) : (r == 1 ? 4 : r == 2 ? 2 : 1);
}

// Bfloat16 on AVX-512, kMaxRows < M <= kWideRows activation rows (a decode
// batch): one tile of 3 weight rows x M activation rows reads and widens each
// weight once, where passes of 4 rows did it twice and re-read the tile from
// L2. Beyond kWideRows (prefill) the 4-row passes measured faster: with the
// weights in cache, 8 activation rows per 3 weight rows load more per FMA.
// The activations then come as a padded copy (Activations::rows).
constexpr bool kWideTiles = PMQ_WO_LANES == 16;

// sums[b][r] = w_b . x_r for NB weight rows and R activation rows ldx apart.
// Prefetch: the tile is the first to read these weight rows (the first pass
// of activation rows), so it prefetches the next tile's rows (NB rows on;
// past the weight's end a prefetch is a no-op). With several activation rows
// a tile computes long enough per weight byte that the hardware prefetchers
// fell behind and the reads waited on memory: M = 4 cost 1.2-1.3x M = 1, with
// this 1.0x. Later passes find the rows in cache, where the prefetches only
// took load slots (prefill M = 256 ran up to 1.5x slower with them); one row
// (R = 1) computes too little per byte to outrun the hardware prefetchers.
template <int W, int NB, int R, bool Prefetch, typename Row>
PMQ_INLINE void dot_tile(const Row (&w)[NB], const float* x, int64_t ldx, int64_t k, float (&sums)[NB][R]) {
  typedef Lanes<W> L;
  typename L::vf acc[NB][R] = {};
  int64_t i = 0;
  for (; i + W <= k; i += W) {
#if PMQ_WO_LANES >= 8
    if (Prefetch && R > 1)
      for (int b = 0; b < NB; ++b) _mm_prefetch(reinterpret_cast<const char*>(w[b].p + NB * k + i), _MM_HINT_T0);
#endif
    if (R <= kMaxRows) {
      typename L::vf xv[R];
      for (int r = 0; r < R; ++r) xv[r] = L::load(x + r * ldx + i);
      for (int b = 0; b < NB; ++b) {
        const typename L::vf wv = w[b].vec(i);
        for (int r = 0; r < R; ++r) acc[b][r] += wv * xv[r];
      }
    } else {  // a wide tile: NB weight vectors held, each activation vector loaded once
      typename L::vf wv[NB];
      for (int b = 0; b < NB; ++b) wv[b] = w[b].vec(i);
      for (int r = 0; r < R; ++r) {
        typename L::vf xv = L::load(x + r * ldx + i);
#if PMQ_WO_LANES >= 8
        // GCC would fold this load into each of the NB FMAs (NB loads per
        // vector) and the load ports, not the FMA units, set the pace: an
        // in-cache 8-row tile ran at 43 G lane-FMA/s, with one load 88.
        __asm__("" : "+v"(xv));
#endif
        for (int b = 0; b < NB; ++b) acc[b][r] += wv[b] * xv;
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[b][r]);
      for (int64_t j = i; j < k; ++j) s += w[b].one(j) * x[r * ldx + j];
      sums[b][r] = s;
    }
}

// Int4 rows p[b] (k/2 bytes each, group scales sc[b]) against activations
// split into even / odd halves xe, xo (ldh apart): sums[b][r] = w_b . x_r.
// Nibbles are summed unscaled per group, as sum(nibble * x) - 8 * sum(x)
// (xsum: the activation's group sums), then scaled once per group.
template <int W, int NB, int R>
PMQ_INLINE void dot_tile_int4(const uint8_t* const (&p)[NB], const float* const (&sc)[NB], const float* xe,
                              const float* xo, const float* xsum, int64_t ldh, int64_t groups,
                              int64_t kh, float (&sums)[NB][R]) {
  typedef Lanes<W> L;
  typename L::vf acc[NB][R] = {};
  float scalar[NB][R] = {};  // ragged ends and the -8 offsets, already scaled
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t j0 = g * kInt4GroupBytes, j1 = std::min(j0 + kInt4GroupBytes, kh);
    typename L::vf part[NB][R] = {};
    int64_t j = j0;
#pragma GCC unroll 2
    for (; j + W <= j1; j += W) {
      typename L::vf ev[R], ov[R];
      for (int r = 0; r < R; ++r) ev[r] = L::load(xe + r * ldh + j), ov[r] = L::load(xo + r * ldh + j);
      for (int b = 0; b < NB; ++b) {
        typename L::vf lo, hi;
        L::nibbles(p[b] + j, lo, hi);
        for (int r = 0; r < R; ++r) part[b][r] += lo * ev[r] + hi * ov[r];
      }
    }
    for (int b = 0; b < NB; ++b) {
      const float s = sc[b][g];
      for (int r = 0; r < R; ++r) {
        float ragged = 0.f;
        for (int64_t t = j; t < j1; ++t)
          ragged += float(p[b][t] & 15) * xe[r * ldh + t] + float(p[b][t] >> 4) * xo[r * ldh + t];
        acc[b][r] += part[b][r] * s;
        scalar[b][r] += s * (ragged - 8.f * xsum[r * groups + g]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) sums[b][r] = hsum(acc[b][r]) + scalar[b][r];
}

#if PMQ_WO_LANES >= 8
// Integer dot products on int8-quantised activations (QuantizedActivations,
// weight_only_cpu.cc), llama.cpp's q8_0 / q4_0 scheme on AVX2 (the AVX-512
// copy runs the same 256-bit code): vpmaddubsw multiplies unsigned by signed
// bytes into int16 pair sums, vpmaddwd adds pairs into int32, then one float
// multiply-add per activation block. Two integer ops per 32 weight bytes
// instead of widening every weight to float keeps decode memory bound.
// Prefetch this far ahead of the weight read: with one weight row at a time
// (linear_rows) the hardware prefetchers alone reached ~60% of a plain read's
// GB/s here.
constexpr int kPrefetchBytes = 4096;
PMQ_INLINE __m256i load_bytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
PMQ_INLINE float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// Activation quantisation (QuantizedActivations, weight_only_cpu.cc) in
// 256-bit vectors: per block d = max|x| / 127 and q = x * (127 / max|x|)
// rounded to nearest even (vcvtps2dq under the default rounding mode).
PMQ_INLINE __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }
PMQ_INLINE float hmax8(__m256 v) {
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
}
PMQ_INLINE float inverse_scale(float amax) { return amax > 0.f ? 127.f / amax : 0.f; }

// x[0..3] (32 floats) times inv, rounded, as 32 int8 in order at out;
// returns the int32 partial sums of q (8 lanes).
PMQ_INLINE __m256i quantize32(const __m256* x, __m256 inv, int8_t* out) {
  __m256i q[4];
  for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(x[i], inv));
  // packs work per 128-bit lane: 4-byte groups come out as q0 q1 q2 q3 (low
  // halves) then the high halves; the permutation restores input order.
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  return _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
}

// Row `row` of x quantised for int8 weights: one scale per 32 inputs.
PMQ_INLINE void quantize_row_int8(const float* row, QuantizedActivations& q, int64_t r) {
  int8_t* out = q.xq.data() + r * q.ld;
  for (int64_t b = 0; b < q.blocks; ++b) {
    __m256 x[4];
    for (int i = 0; i < 4; ++i) x[i] = _mm256_loadu_ps(row + b * kActBlock + 8 * i);
    const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(abs8(x[0]), abs8(x[1])), _mm256_max_ps(abs8(x[2]), abs8(x[3]))));
    q.dq[r * q.blocks + b] = amax / 127.f;
    quantize32(x, _mm256_set1_ps(inverse_scale(amax)), out + b * kActBlock);
  }
}

// Row `row` of x quantised for int4 weights: one scale per 128-input group;
// chunk c's 64 inputs become [32 even | 32 odd] (vshufps picks the even or
// odd floats of two vectors per 128-bit lane, vpermpd puts the lanes in order).
PMQ_INLINE void quantize_row_int4(const float* row, QuantizedActivations& q, int64_t r) {
  int8_t* out = q.xq.data() + r * q.ld;
  for (int64_t g = 0; g * kChunksPerGroup < q.blocks; ++g) {
    const int64_t c0 = g * kChunksPerGroup, chunks = std::min(kChunksPerGroup, q.blocks - c0);
    __m256 halves[kChunksPerGroup][2][4];  // [chunk][even, odd][8 inputs]
    __m256 amax = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c)
      for (int j = 0; j < 4; ++j) {
        const float* p = row + 2 * (c0 + c) * kChunkBytes + 16 * j;
        const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
        for (int half = 0; half < 2; ++half) {
          const __m256 picked = half == 0 ? _mm256_shuffle_ps(a, b, 0x88) : _mm256_shuffle_ps(a, b, 0xDD);
          halves[c][half][j] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(picked), 0xD8));
          amax = _mm256_max_ps(amax, abs8(halves[c][half][j]));
        }
      }
    const float m = hmax8(amax);
    const __m256 inv = _mm256_set1_ps(inverse_scale(m));
    __m256i sums = _mm256_setzero_si256();
    for (int64_t c = 0; c < chunks; ++c)
      for (int half = 0; half < 2; ++half)
        sums = _mm256_add_epi32(sums, quantize32(halves[c][half], inv, out + 2 * (c0 + c) * kChunkBytes + half * kChunkBytes));
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sums);
    q.dq[r * q.groups + g] = m / 127.f;
    q.qsums[r * q.groups + g] = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
  }
}

// Every row of x [m, k] quantised for weights of `kind` into q (sized by size_activations).
PMQ_INLINE void quantize_rows(const float* x, int64_t m, int64_t k, Kind kind, QuantizedActivations& q) {
  for (int64_t r = 0; r < m; ++r) {
    if (kind == Kind::kInt4) quantize_row_int4(x + r * k, q, r);
    else quantize_row_int8(x + r * k, q, r);
  }
}

// Int8 rows w[b] against quantised activation rows r (32-input blocks):
// sums[b][r] = sum over blocks of d_r,blk * (w_b . q_r), unscaled by the row's scale.
// |w| <= 127 keeps vpmaddubsw's pair sums (<= 2 * 127 * 127) from saturating;
// vpsignb moves w's sign onto x so that |w| can be the unsigned operand.
template <int NB, int R>
PMQ_INLINE void dot_tile_q8(const int8_t* const (&w)[NB], const QuantizedActivations& q, int64_t m0,
                            float (&sums)[NB][R]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[NB][R];
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = _mm256_setzero_ps();
  for (int64_t blk = 0; blk < q.blocks; ++blk) {
    __m256i xv[R];
    __m256 d[R];
    for (int r = 0; r < R; ++r) {
      xv[r] = load_bytes(q.x + (m0 + r) * q.ld + blk * kActBlock);
      d[r] = _mm256_broadcast_ss(q.d + (m0 + r) * q.blocks + blk);
    }
    for (int b = 0; b < NB; ++b) {
      _mm_prefetch(reinterpret_cast<const char*>(w[b] + blk * kActBlock) + kPrefetchBytes, _MM_HINT_T0);
      const __m256i wv = load_bytes(w[b] + blk * kActBlock);
      const __m256i aw = _mm256_abs_epi8(wv);
      for (int r = 0; r < R; ++r) {
        const __m256i pairs = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[r], wv));
        acc[b][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones)), d[r], acc[b][r]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) sums[b][r] = hsum8(acc[b][r]);
}

// Int4 rows p[b] (group scales sc[b]) against quantised activation rows r
// (one block per 128-input group; each 32-byte chunk of nibbles meets its 64
// inputs as [32 even | 32 odd]): per group the unsigned nibbles' products add
// up in int16 (4 vpmaddubsw pair sums of <= 2 * 15 * 127 each), the -8 offset
// is s_w * d * 8 * sum(q) per group, and the group's scale product is applied once.
template <int NB, int R>
PMQ_INLINE void dot_tile_q4(const uint8_t* const (&p)[NB], const float* const (&sc)[NB],
                            const QuantizedActivations& q, int64_t m0, float (&sums)[NB][R]) {
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(15);
  __m256 acc[NB][R];
  float offset[NB][R] = {};
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = _mm256_setzero_ps();
  for (int64_t g = 0; g * kChunksPerGroup < q.blocks; ++g) {
    const int64_t c1 = std::min<int64_t>((g + 1) * kChunksPerGroup, q.blocks);
    __m256i part[NB][R];
    for (int b = 0; b < NB; ++b)
      for (int r = 0; r < R; ++r) part[b][r] = _mm256_setzero_si256();
    for (int64_t c = g * kChunksPerGroup; c < c1; ++c)
      for (int b = 0; b < NB; ++b) {
        _mm_prefetch(reinterpret_cast<const char*>(p[b] + c * kChunkBytes) + kPrefetchBytes, _MM_HINT_T0);
        const __m256i raw = load_bytes(p[b] + c * kChunkBytes);
        const __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
        for (int r = 0; r < R; ++r) {
          const int8_t* x = q.x + (m0 + r) * q.ld + 2 * c * kChunkBytes;
          const __m256i both = _mm256_add_epi16(_mm256_maddubs_epi16(lo, load_bytes(x)),
                                                _mm256_maddubs_epi16(hi, load_bytes(x + kChunkBytes)));
          part[b][r] = _mm256_add_epi16(part[b][r], both);
        }
      }
    for (int r = 0; r < R; ++r) {
      const float d = q.d[(m0 + r) * q.groups + g], qsum = float(q.qsum[(m0 + r) * q.groups + g]);
      for (int b = 0; b < NB; ++b) {
        const float s = sc[b][g] * d;
        acc[b][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(part[b][r], ones)), _mm256_set1_ps(s),
                                    acc[b][r]);
        offset[b][r] += s * qsum;
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) sums[b][r] = hsum8(acc[b][r]) - 8.f * offset[b][r];
}
#endif

// out[m0 + r, n + b] for NB weight rows from n and R activation rows from m0
// (Prefetch: see dot_tile).
template <int W, int NB, int R, bool Prefetch>
PMQ_INLINE void tile(const Weights& w, const Activations& a, int64_t m0, int64_t n,
                     const float* bias, float* out) {
  float sums[NB][R];
  switch (w.kind) {
    case Kind::kBf16: {
      Bf16Row<W> rows[NB];
      for (int b = 0; b < NB; ++b) rows[b].p = static_cast<const uint16_t*>(w.data) + (n + b) * w.k;
      dot_tile<W, NB, R, Prefetch>(rows, a.rows + m0 * a.ld, a.ld, w.k, sums);
      break;
    }
    case Kind::kInt8: {
#if PMQ_WO_LANES >= 8
      const int8_t* rows[NB];
      for (int b = 0; b < NB; ++b) rows[b] = static_cast<const int8_t*>(w.data) + (n + b) * w.k;
      dot_tile_q8<NB, R>(rows, *a.q, m0, sums);
      for (int b = 0; b < NB; ++b)  // the inputs after the last full block, in float
        for (int r = 0; r < R; ++r)
          for (int64_t j = a.q->blocks * kActBlock; j < w.k; ++j) sums[b][r] += float(rows[b][j]) * a.x[(m0 + r) * w.k + j];
#else
      Int8Row<W> rows[NB];
      for (int b = 0; b < NB; ++b) rows[b].p = static_cast<const int8_t*>(w.data) + (n + b) * w.k;
      dot_tile<W, NB, R, false>(rows, a.x + m0 * w.k, w.k, w.k, sums);
#endif
      for (int b = 0; b < NB; ++b)
        for (int r = 0; r < R; ++r) sums[b][r] *= w.scales[n + b];
      break;
    }
    case Kind::kInt4: {
      const int64_t kh = w.k / 2, groups = w.groups();
      const uint8_t* rows[NB];
      const float* scales[NB];
      for (int b = 0; b < NB; ++b) {
        rows[b] = static_cast<const uint8_t*>(w.data) + (n + b) * kh;
        scales[b] = w.scales + (n + b) * groups;
      }
#if PMQ_WO_LANES >= 8
      dot_tile_q4<NB, R>(rows, scales, *a.q, m0, sums);
      for (int b = 0; b < NB; ++b)  // the bytes after the last full chunk, in float
        for (int r = 0; r < R; ++r)
          for (int64_t t = a.q->blocks * kChunkBytes; t < kh; ++t) {
            const float* x = a.x + (m0 + r) * w.k + 2 * t;
            sums[b][r] += scales[b][t / kInt4GroupBytes] * (float((rows[b][t] & 15) - 8) * x[0] + float((rows[b][t] >> 4) - 8) * x[1]);
          }
#else
      dot_tile_int4<W, NB, R>(rows, scales, a.xe + m0 * kh, a.xo + m0 * kh, a.xsum + m0 * groups, kh,
                              groups, kh, sums);
#endif
      break;
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) out[(m0 + r) * w.n + n + b] = sums[b][r] + (bias != nullptr ? bias[n + b] : 0.f);
}

// Weight rows [n, n + NB) against R activation rows from m0, as tiles of
// tile_rows(R) weight rows (NB is 1 or a multiple of them).
template <int W, int NB, int R, bool Prefetch>
PMQ_INLINE void rows_against(const Weights& w, const Activations& a, int64_t m0, int64_t n, const float* bias,
                             float* out) {
  constexpr int TB = std::min(NB, tile_rows(R));
  for (int b = 0; b < NB; b += TB) tile<W, TB, R, Prefetch>(w, a, m0, n + b, bias, out);
}

// The last a.m - m0 < kMaxRows activation rows against weight rows [n, n + NB).
template <int W, int NB, bool Prefetch>
PMQ_INLINE void rows_against_rest(const Weights& w, const Activations& a, int64_t m0, int64_t n, const float* bias,
                                  float* out) {
  switch (a.m - m0) {
    case 3: rows_against<W, NB, 3, Prefetch>(w, a, m0, n, bias, out); break;
    case 2: rows_against<W, NB, 2, Prefetch>(w, a, m0, n, bias, out); break;
    case 1: rows_against<W, NB, 1, Prefetch>(w, a, m0, n, bias, out); break;
    default: break;
  }
}

// Weight rows [n, n + NB) against every activation row, kMaxRows at a time.
template <int W, int NB>
PMQ_INLINE void rows_against_all(const Weights& w, const Activations& a, int64_t n, const float* bias, float* out) {
  if (a.m < kMaxRows) return rows_against_rest<W, NB, true>(w, a, 0, n, bias, out);
  rows_against<W, NB, kMaxRows, true>(w, a, 0, n, bias, out);
  int64_t m0 = kMaxRows;
  for (; m0 + kMaxRows <= a.m; m0 += kMaxRows) rows_against<W, NB, kMaxRows, false>(w, a, m0, n, bias, out);
  rows_against_rest<W, NB, false>(w, a, m0, n, bias, out);
}

// Bfloat16 weight rows [n, n + NB) against all rows of a wide_bf16_batch.
template <int W, int NB>
PMQ_INLINE void rows_against_all_wide(const Weights& w, const Activations& a, int64_t n, const float* bias,
                                      float* out) {
  switch (a.m) {
    case 8: tile<W, NB, 8, true>(w, a, 0, n, bias, out); break;
    case 7: tile<W, NB, 7, true>(w, a, 0, n, bias, out); break;
    case 6: tile<W, NB, 6, true>(w, a, 0, n, bias, out); break;
    default: tile<W, NB, 5, true>(w, a, 0, n, bias, out); break;
  }
}

// Output rows [n0, n1) of out [m, n] for every activation row, W-float vectors.
template <int W>
PMQ_INLINE void linear_rows(const Weights& w, const Activations& a, const float* bias,
                            float* out, int64_t n0, int64_t n1) {
  constexpr int NB = tile_rows(1);
  int64_t n = n0;
  if (kWideTiles && wide_bf16_batch(w.kind, a.m)) {
    constexpr int TB = tile_rows(kWideRows);
    for (; n + TB <= n1; n += TB) rows_against_all_wide<W, TB>(w, a, n, bias, out);
    if (n1 - n == 2) rows_against_all_wide<W, 2>(w, a, n, bias, out);
    else if (n1 - n == 1) rows_against_all_wide<W, 1>(w, a, n, bias, out);
    return;
  }
#if PMQ_WO_LANES >= 8
  // The integer kernels are light enough to read one weight row at a time: a
  // single sequential stream, which measured faster than NB interleaved ones.
  if (w.kind == Kind::kBf16)
#endif
    for (; n + NB <= n1; n += NB) rows_against_all<W, NB>(w, a, n, bias, out);
  for (; n < n1; ++n) rows_against_all<W, 1>(w, a, n, bias, out);
}

// out [k] = float32 weights of row n: bfloat16 and int8 W floats at a time;
// int4 in a plain loop (GCC vectorises it; it already ran 7x faster than the
// scalar bfloat16 / int8 loops did).
template <int W>
PMQ_INLINE void dequantize_row(const Weights& w, int64_t n, float* out) {
  typedef Lanes<W> L;
  int64_t i = 0;
  switch (w.kind) {
    case Kind::kBf16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + n * w.k;
      for (; i + W <= w.k; i += W) L::store(out + i, L::bf16(p + i));
      for (; i < w.k; ++i) out[i] = bf16_to_float(p[i]);
      break;
    }
    case Kind::kInt8: {
      const int8_t* p = static_cast<const int8_t*>(w.data) + n * w.k;
      const float s = w.scales[n];
      const typename L::vf scale = typename L::vf{} + s;
      for (; i + W <= w.k; i += W) L::store(out + i, L::int8(p + i) * scale);
      for (; i < w.k; ++i) out[i] = float(p[i]) * s;
      break;
    }
    case Kind::kInt4: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + n * (w.k / 2);
      const float* scales = w.scales + n * w.groups();
      for (int64_t g0 = 0; g0 < w.k / 2; g0 += kInt4GroupBytes) {
        const int64_t g1 = std::min(g0 + kInt4GroupBytes, w.k / 2);
        const float s = scales[g0 / kInt4GroupBytes];
        for (int64_t j = g0; j < g1; ++j) {
          out[2 * j] = float((p[j] & 15) - 8) * s;
          out[2 * j + 1] = float((p[j] >> 4) - 8) * s;
        }
      }
      break;
    }
  }
}

// Rows ids[r0..r1) of the weight, dequantised into out [rows, k].
template <int W>
PMQ_INLINE void dequantize_rows(const Weights& w, const int64_t* ids, float* out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) dequantize_row<W>(w, ids[r], out + r * w.k);
}

}  // namespace PMQ_WO_NS

template <typename... A>
void PMQ_WO_CAT(linear_rows_, PMQ_WO_LEVEL)(A&&... a) {
  PMQ_WO_NS::linear_rows<PMQ_WO_LANES>(std::forward<A>(a)...);
}
template <typename... A>
void PMQ_WO_CAT(dequantize_rows_, PMQ_WO_LEVEL)(A&&... a) {
  PMQ_WO_NS::dequantize_rows<PMQ_WO_LANES>(std::forward<A>(a)...);
}
#if PMQ_WO_LANES >= 8
template <typename... A>
void PMQ_WO_CAT(quantize_rows_, PMQ_WO_LEVEL)(A&&... a) {
  PMQ_WO_NS::quantize_rows(std::forward<A>(a)...);
}
#endif

}  // namespace
}  // namespace pmq_ops
