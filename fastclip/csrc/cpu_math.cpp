// fastclip's optional native helper, CPU math: the power sum of gradient spans and their in-place
// scaling, at memory speed on one thread, with the GIL released.
//
// power_sum(tensors, p, max_numel=-1) -> float or None
//   sum over every element x of every tensor of |x|^p (p = inf: max |x|), as a Python float.
//   fp32/bf16/fp16 accumulate in fp32 lanes (kLanes independent sums, which the compiler turns
//   into vector registers) over blocks of kBlock elements; each block's lanes are added in fp64.
//   A lane sums at most kBlock / kLanes = 128 values, so the relative error of a sum of squares
//   is below 128 * 2^-24 = 7.6e-6 in the worst case (~1e-7 for random data), the same scheme as
//   the Triton kernel.  fp64 accumulates in fp64.  NaN propagates (also through the max).
//   Reads 1x the bytes: 16.8 M bf16 elements in 3.1 ms on one core of a 2-core EPYC VM, where
//   copying into an fp32 block and calling dot (the plain-PyTorch way) takes 11.9 ms.
//
// scale_(tensors, coef, max_numel=-1) -> bool
//   x *= coef in place, bitwise what torch's ``x.mul_(coef_tensor)`` gives on the CPU for every
//   non-NaN result (NaN stays NaN; torch's own NaN bits differ between its vector and scalar
//   loops): the product in the op-math type (fp32 for fp32/bf16/fp16, the coefficient rounded
//   to fp32 first; fp64 for fp64), rounded to nearest-even back to the storage type.  Reads and
//   writes 1x the bytes; bumps each tensor's version counter, as an in-place torch op does.
//
// Both take a list of CPU tensors, each one dense span of memory (contiguous, transposed,
// channels_last: any non-overlapping dense layout; order does not matter to a sum or a uniform
// scale) of dtype fp32, fp64, bf16 or fp16.  Anything else in the list (a strided view with
// gaps, another dtype or device), or more than ``max_numel`` elements in all (when >= 0), and
// they touch nothing and return None / False: the Python caller then takes its torch path.
//
// Parallelism: the spans are cut into *pieces* (runs of whole small spans, or block-aligned slices
// of a large one) whose size depends only on the total element count.  A call of ``kParallelNumel``
// (2 M) elements or more, built with OpenMP (``openmp()``), runs the pieces in one parallel region of
// torch's own OpenMP team (the same libgomp, the same threads as torch's ops) and every thread
// claims pieces one at a time from an atomic counter, or on the calling thread alone when that
// measured faster for this kind of call (team_choice.cpp: with a core taken by a process of
// another session, one thread is about twice as fast as the team); smaller calls run them on the
// calling thread.
// The power sum adds the pieces' partial sums in piece order afterwards, so the result is bitwise
// the same whichever thread ran what and however many threads there are.  Why torch's team and
// not threads of our own (fastclip/_workers.py, which the Python path still uses): after every
// torch op libgomp's threads keep spinning for a few milliseconds (GOMP_SPINCOUNT), so threads of
// our own shared the cores with them: one 33.6 M-element bf16 clip took 15-19 ms through our
// workers and 12.5 ms with the spinning switched off (bench/omp_spin.py).  In torch's team, the
// spinning threads are the ones that do the work.  Why claiming and not torch's static split: a
// thread whose core another process has taken runs fewer pieces instead of holding up the call
// with a fixed share (the region still ends when that thread arrives, as every torch op does).
// The GIL is released throughout.
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/csrc/autograd/python_variable.h>

#include "team_choice.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif
// the vector loops below: built with -mavx2 -mfma -mf16c where the building CPU has them (native.py)
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FASTCLIP_AVX2 1
#endif

namespace {

constexpr int64_t kLanes = 32;    // fp32 accumulators: four 8-wide vector registers per sum
constexpr int64_t kBlock = 4096;  // elements per fp32 block, folded into fp64 after each block
// A piece holds ~1/64 of a call's elements, between 16 K and 256 K: 64 pieces let a thread that
// lost its core to another process fall behind by 1/64 of the work at most, and 256 K elements
// (0.05-0.1 ms of one core) make the atomic claim per piece (~0.1 us) negligible.
constexpr int64_t kMinPiece = 4 * kBlock;
constexpr int64_t kMaxPiece = 64 * kBlock;
constexpr int64_t kPiecesPerCall = 64;
// Calls of fewer elements run on the calling thread.  An OpenMP region ends only when every
// thread of the team has arrived, and on a machine where another process holds a core the
// thread that must be woken there arrives late: a region then costs ~6-8 ms whatever its size
// (2 000 x 512 bf16 elements, one core busy, 2-core EPYC VM: 8.0 ms per norm in the team against
// 2-4 ms on the calling thread; quiet the team saves only ~0.5 ms there).  One thread reads
// 2 M elements in ~0.4-0.7 ms, so from 2 M on the team's second core is worth that risk.
constexpr int64_t kParallelNumel = 1 << 21;

enum class Kind { kAbsSum, kSquareSum, kMaxAbs, kPowSum };

struct Span {
  void* data;
  int64_t numel;
  c10::ScalarType dtype;
};

inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float half_to_float(uint16_t bits) {
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// round to nearest even, as c10::BFloat16 does; NaN stays NaN (0x7FC0)
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

// Converts n <= kBlock elements of a half type to fp32 (fp16: vector F16C when compiled for it).
inline void load_block(const uint16_t* x, int64_t n, float* out, c10::ScalarType dtype) {
  if (dtype == c10::ScalarType::BFloat16) {
    for (int64_t i = 0; i < n; ++i) {
      out[i] = bf16_to_float(x[i]);
    }
    return;
  }
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  }
#endif
  for (; i < n; ++i) {
    out[i] = half_to_float(x[i]);
  }
}

template <Kind K, typename Acc>
inline Acc element(Acc x, Acc p) {
  if constexpr (K == Kind::kAbsSum || K == Kind::kMaxAbs) {
    return std::abs(x);
  } else if constexpr (K == Kind::kSquareSum) {
    return x * x;
  } else {
    return std::pow(std::abs(x), p);
  }
}

// One value into a lane: added, or for the max taken where larger or NaN (so a NaN sticks).
template <Kind K, typename Acc>
inline void accumulate(Acc& lane, Acc v) {
  if constexpr (K == Kind::kMaxAbs) {
    lane = (v > lane || v != v) ? v : lane;
  } else {
    lane += v;
  }
}

// A block's kLanes sums added (maxima taken) in fp64, lane 0 first.
template <Kind K, typename Acc>
double fold_lanes(const Acc* lanes) {
  double total = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) {
    if constexpr (K == Kind::kMaxAbs) {
      const double v = lanes[l];
      total = (v > total || v != v) ? v : total;
    } else {
      total += static_cast<double>(lanes[l]);
    }
  }
  return total;
}

// One block of n <= kBlock values: kLanes independent accumulators, folded in fp64.
template <Kind K, typename Acc>
double reduce_block(const Acc* x, int64_t n, Acc p) {
  Acc lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {
    lanes[l] = 0;
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      accumulate<K>(lanes[l], element<K>(x[i + l], p));
    }
  }
  for (; i < n; ++i) {
    accumulate<K>(lanes[0], element<K>(x[i], p));
  }
  return fold_lanes<K>(lanes);
}

#if defined(FASTCLIP_AVX2)
// 8 bf16 (kBf16) or fp16 values at x, as fp32: bf16 is the top half of an fp32, fp16 needs F16C
template <bool kBf16>
inline __m256 load8(const uint16_t* x) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
  if constexpr (kBf16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  } else {
    return _mm256_cvtph_ps(raw);
  }
}

// reduce_block<K, float> for n <= kBlock half-type values read in place: the same kLanes lanes
// (four 8-wide registers, element i in lane i % kLanes) and the same fp64 fold, without the
// round trip through an fp32 buffer.  Written out because GCC vectorises the buffered form only
// in part (one core of a 2-core EPYC VM, ms per 33.6 M bf16 squares, in cache / from memory:
// buffered 4.1-5.6 / 6.5-7.2, here 2.7-2.8 / 4.6-5.0, torch's bf16 sum 4.5-5.3 / 5.1-6.5;
// fp16 8.3-9.4 from memory, here 4.4-4.6).
template <Kind K, bool kBf16>
double reduce_half_block(const uint16_t* x, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int r = 0; r < 4; ++r) {
      const __m256 v = load8<kBf16>(x + i + 8 * r);
      if constexpr (K == Kind::kSquareSum) {
        acc[r] = _mm256_fmadd_ps(v, v, acc[r]);
      } else if constexpr (K == Kind::kAbsSum) {
        acc[r] = _mm256_add_ps(acc[r], _mm256_and_ps(v, abs_mask));
      } else {  // kMaxAbs: take |v| where it is larger or NaN, so a NaN sticks
        const __m256 a = _mm256_and_ps(v, abs_mask);
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(a, acc[r], _CMP_GT_OQ), _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        acc[r] = _mm256_blendv_ps(acc[r], a, take);
      }
    }
  }
  alignas(32) float lanes[kLanes];
  for (int r = 0; r < 4; ++r) {
    _mm256_store_ps(lanes + 8 * r, acc[r]);
  }
  for (; i < n; ++i) {  // the tail, in lane 0, as reduce_block does
    accumulate<K>(lanes[0], element<K>(kBf16 ? bf16_to_float(x[i]) : half_to_float(x[i]), 0.0f));
  }
  return fold_lanes<K>(lanes);
}
#endif

inline double combine(Kind kind, double a, double b) {
  if (kind == Kind::kMaxAbs) {
    return (b > a || b != b) ? b : a;
  }
  return a + b;
}

template <Kind K>
double reduce_range(const Span& s, int64_t offset, int64_t numel, double p) {
  double total = 0.0;
  alignas(64) float buffer[kBlock];
  for (int64_t start = offset; start < offset + numel; start += kBlock) {
    const int64_t n = std::min(kBlock, offset + numel - start);
    double block;
    switch (s.dtype) {
      case c10::ScalarType::Float:
        block = reduce_block<K, float>(static_cast<const float*>(s.data) + start, n, static_cast<float>(p));
        break;
      case c10::ScalarType::Double:
        block = reduce_block<K, double>(static_cast<const double*>(s.data) + start, n, p);
        break;
      default: {  // bf16, fp16
        const uint16_t* x = static_cast<const uint16_t*>(s.data) + start;
#if defined(FASTCLIP_AVX2)
        if constexpr (K != Kind::kPowSum) {
          block = s.dtype == c10::ScalarType::BFloat16 ? reduce_half_block<K, true>(x, n)
                                                       : reduce_half_block<K, false>(x, n);
          break;
        }
#endif
        load_block(x, n, buffer, s.dtype);
        block = reduce_block<K, float>(buffer, n, static_cast<float>(p));
      }
    }
    total = combine(K, total, block);
  }
  return total;
}

double reduce_range(const Span& s, int64_t offset, int64_t numel, Kind kind, double p) {
  switch (kind) {
    case Kind::kAbsSum: return reduce_range<Kind::kAbsSum>(s, offset, numel, p);
    case Kind::kSquareSum: return reduce_range<Kind::kSquareSum>(s, offset, numel, p);
    case Kind::kMaxAbs: return reduce_range<Kind::kMaxAbs>(s, offset, numel, p);
    default: return reduce_range<Kind::kPowSum>(s, offset, numel, p);
  }
}

// Spans [first, first + count): whole spans when count > 1, else elements [offset, offset + numel)
// of span ``first`` (offset a multiple of kBlock, so the blocks are those of the whole span).
struct Piece {
  size_t first;
  size_t count;
  int64_t offset;
  int64_t numel;
};

std::vector<Piece> cut_into_pieces(const std::vector<Span>& spans, int64_t total) {
  const int64_t target = (total / kPiecesPerCall + kBlock - 1) / kBlock * kBlock;
  const int64_t size = std::min(kMaxPiece, std::max(kMinPiece, target));
  std::vector<Piece> pieces;
  bool growing = false;  // the last piece is a run of whole small spans that may take more
  for (size_t i = 0; i < spans.size(); ++i) {
    const int64_t n = spans[i].numel;
    if (n >= size) {
      for (int64_t offset = 0; offset < n; offset += size) {
        pieces.push_back(Piece{i, 1, offset, std::min(size, n - offset)});
      }
      growing = false;
    } else if (growing && pieces.back().numel + n <= size) {
      pieces.back().count += 1;
      pieces.back().numel += n;
    } else {
      pieces.push_back(Piece{i, 1, 0, n});
      growing = true;
    }
  }
  return pieces;
}

template <typename F>
void in_order(int64_t count, const F& fn) {
  for (int64_t i = 0; i < count; ++i) {
    fn(i);
  }
}

// team_choice.cpp's kind of a call: 0-2 power sums of 2-, 4-, 8-byte elements, 3-5 scalings (a
// call's spans have one dtype when fastclip makes it; a mixed call counts as its first span's)
int call_kind(bool scaling, const std::vector<Span>& spans) {
  const size_t size = spans.empty() ? 4 : c10::elementSize(spans[0].dtype);
  return (scaling ? 3 : 0) + (size == 2 ? 0 : size == 4 ? 1 : 2);
}

// fn(piece index) for every piece: in torch's OpenMP team, pieces claimed one at a time, when the
// call is large enough, torch has more than one thread here and team_choice.cpp picks the team
// for this kind of call (``call_kind``); else on the calling thread.
template <typename F>
void for_each_piece(int64_t count, int64_t total, int kind, const F& fn) {
#if defined(_OPENMP)
  // at::get_num_threads() (libtorch's, which initialises this thread's count the way torch's ops
  // see it) and not at::internal::lazy_init_num_threads(): an inline function with a thread-local
  // flag of its own in this library, it would reset a count torch had already set here (the
  // single-threaded workers of fastclip/_workers.py)
  if (total >= kParallelNumel && count > 1 && !at::in_parallel_region() && at::get_num_threads() > 1) {
    const fastclip::TeamPick pick = fastclip::pick_team(kind);
    const auto start = std::chrono::steady_clock::now();
    if (pick.team) {
      // libgomp's own end-of-region barrier: a first thread that sleep-waited for the others
      // instead (to leave its core to a thread queued behind another process) was slower with a
      // core busy, huge bf16 clip 19-27 ms against 15-16 ms (medians of 31 calls, seven runs each)
      std::atomic<int64_t> next{0};
#pragma omp parallel
      {
        for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < count;
             i = next.fetch_add(1, std::memory_order_relaxed)) {
          fn(i);
        }
      }
    } else {
      in_order(count, fn);
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    fastclip::record_team(kind, pick, took.count(), total);
    return;
  }
#endif
  in_order(count, fn);
}

// fn(span, offset, numel) for each stretch of memory a piece covers, in order.
template <typename F>
void each_range(const Piece& piece, const std::vector<Span>& spans, const F& fn) {
  if (piece.count == 1) {
    fn(spans[piece.first], piece.offset, piece.numel);
    return;
  }
  for (size_t j = piece.first; j < piece.first + piece.count; ++j) {
    fn(spans[j], 0, spans[j].numel);
  }
}

double reduce_spans(const std::vector<Span>& spans, int64_t total, Kind kind, double p) {
  const std::vector<Piece> pieces = cut_into_pieces(spans, total);
  std::vector<double> partial(pieces.size(), 0.0);
  for_each_piece(static_cast<int64_t>(pieces.size()), total, call_kind(false, spans), [&](int64_t i) {
    double sum = 0.0;
    each_range(pieces[i], spans, [&](const Span& s, int64_t offset, int64_t numel) {
      sum = combine(kind, sum, reduce_range(s, offset, numel, kind, p));
    });
    partial[i] = sum;
  });
  double result = 0.0;
  for (const double part : partial) {  // in piece order: the same bits for any thread count
    result = combine(kind, result, part);
  }
  return result;
}

#if defined(FASTCLIP_AVX2)
// float_to_bf16(bf16_to_float(v) * c) for the bf16 values v in the high halves of 32-bit lanes
// (low halves zero), the result in the low halves.  No NaN fix-up: a product is NaN only from a
// NaN value (its low 16 bits zero) or inf * 0 (the default NaN, likewise), and rounding then
// leaves its high half, a NaN, as it is; the caller keeps a NaN coefficient off this path.
inline __m256i bf16_times(__m256i v, __m256 c) {
  const __m256i u = _mm256_castps_si256(_mm256_mul_ps(_mm256_castsi256_ps(v), c));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd)), 16);
}
#endif

void scale_range(const Span& s, int64_t offset, int64_t numel, double coef) {
  const float c = static_cast<float>(coef);  // torch's op-math scalar for fp32, bf16, fp16
  switch (s.dtype) {
    case c10::ScalarType::Float: {
      float* x = static_cast<float*>(s.data) + offset;
      for (int64_t i = 0; i < numel; ++i) {
        x[i] *= c;
      }
      break;
    }
    case c10::ScalarType::Double: {
      double* x = static_cast<double*>(s.data) + offset;
      for (int64_t i = 0; i < numel; ++i) {
        x[i] *= coef;
      }
      break;
    }
    case c10::ScalarType::BFloat16: {
      uint16_t* x = static_cast<uint16_t*>(s.data) + offset;
      int64_t i = 0;
#if defined(FASTCLIP_AVX2)
      // 16 values at a time: GCC left the scalar loop compute-bound (one core, ms per 33.6 M
      // values in cache / from memory: scalar 9.5-14 / 8.5-8.9, here 3.9-4.5 / 6.0-6.7, torch's
      // mul_ 12.4-17.6 / 7.7-9.4).  The unpacks put values 0-3 | 8-11 and
      // 4-7 | 12-15 into fp32 lanes, and packus puts them back in order (both work per 128 bits).
      const __m256 vc = _mm256_set1_ps(c);
      const __m256i zero = _mm256_setzero_si256();
      const int64_t vector_end = c == c ? numel / 16 * 16 : 0;  // a NaN coefficient: the scalar loop
      for (; i < vector_end; i += 16) {
        __m256i* at = reinterpret_cast<__m256i*>(x + i);
        const __m256i bits = _mm256_loadu_si256(at);
        const __m256i lo = bf16_times(_mm256_unpacklo_epi16(zero, bits), vc);
        const __m256i hi = bf16_times(_mm256_unpackhi_epi16(zero, bits), vc);
        _mm256_storeu_si256(at, _mm256_packus_epi32(lo, hi));
      }
#endif
      for (; i < numel; ++i) {
        x[i] = float_to_bf16(bf16_to_float(x[i]) * c);
      }
      break;
    }
    default: {  // fp16
      uint16_t* x = static_cast<uint16_t*>(s.data) + offset;
      int64_t i = 0;
#if defined(__F16C__)
      const __m256 vc = _mm256_set1_ps(c);
      for (; i + 8 <= numel; i += 8) {
        __m128i* at = reinterpret_cast<__m128i*>(x + i);
        const __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(at)), vc);
        _mm_storeu_si128(at, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
      }
#endif
      for (; i < numel; ++i) {
        x[i] = c10::Half(half_to_float(x[i]) * c).x;
      }
    }
  }
}

void scale_spans(const std::vector<Span>& spans, int64_t total, double coef) {
  const std::vector<Piece> pieces = cut_into_pieces(spans, total);
  for_each_piece(static_cast<int64_t>(pieces.size()), total, call_kind(true, spans), [&](int64_t i) {
    each_range(pieces[i], spans, [&](const Span& s, int64_t offset, int64_t numel) {
      scale_range(s, offset, numel, coef);
    });
  });
}

enum class Read { kOk, kDecline, kError };

// The spans of a list of tensors.  kError (a Python error set): not a list of tensors.  kDecline:
// some tensor is not a dense CPU span of a dtype this file handles, or there are more than
// ``max_numel`` elements (>= 0).  ``keep`` holds the tensors alive while the GIL is released.
Read read_spans(PyObject* list, int64_t max_numel, std::vector<Span>& spans, std::vector<at::Tensor>& keep,
                int64_t& total) {
  if (!PyList_Check(list)) {
    PyErr_SetString(PyExc_TypeError, "expected a list of tensors");
    return Read::kError;
  }
  const Py_ssize_t n = PyList_GET_SIZE(list);
  spans.reserve(n);
  keep.reserve(n);
  total = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(list, i);
    if (!THPVariable_Check(item)) {
      PyErr_Format(PyExc_TypeError, "item %zd is not a tensor", i);
      return Read::kError;
    }
    const at::Tensor& t = THPVariable_Unpack(item);
    const c10::ScalarType dtype = t.scalar_type();
    const bool floating = dtype == c10::ScalarType::Float || dtype == c10::ScalarType::Double ||
                          dtype == c10::ScalarType::BFloat16 || dtype == c10::ScalarType::Half;
    if (!floating || !t.device().is_cpu() || t.layout() != at::kStrided || !t.has_storage() ||
        !t.is_non_overlapping_and_dense()) {
      return Read::kDecline;
    }
    total += t.numel();
    if (max_numel >= 0 && total > max_numel) {
      return Read::kDecline;
    }
    if (t.numel() == 0) {
      continue;
    }
    keep.push_back(t);
    spans.push_back(Span{t.data_ptr(), t.numel(), dtype});
  }
  return Read::kOk;
}

// (tensors, number[, max_numel]) -> false with a Python error set if malformed
bool parse_args(const char* usage, PyObject* const* args, Py_ssize_t nargs, double& number, int64_t& max_numel) {
  if (nargs != 2 && nargs != 3) {
    PyErr_SetString(PyExc_TypeError, usage);
    return false;
  }
  number = PyFloat_AsDouble(args[1]);
  if (number == -1.0 && PyErr_Occurred()) {
    return false;
  }
  max_numel = nargs == 3 ? PyLong_AsLongLong(args[2]) : -1;
  return !(max_numel == -1 && PyErr_Occurred());
}

}  // namespace

PyObject* fastclip_power_sum(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  double p;
  int64_t max_numel;
  if (!parse_args("power_sum(tensors: list, p: float, max_numel: int = -1)", args, nargs, p, max_numel)) {
    return nullptr;
  }
  if (!(p > 0.0)) {
    PyErr_SetString(PyExc_ValueError, "power_sum: p must be > 0 (inf for the max)");
    return nullptr;
  }
  const Kind kind = std::isinf(p) ? Kind::kMaxAbs : p == 1.0 ? Kind::kAbsSum : p == 2.0 ? Kind::kSquareSum
                                                                                      : Kind::kPowSum;
  std::vector<Span> spans;
  std::vector<at::Tensor> keep;
  int64_t numel = 0;
  double result = 0.0;
  try {
    const Read read = read_spans(args[0], max_numel, spans, keep, numel);
    if (read != Read::kOk) {
      return read == Read::kError ? nullptr : Py_NewRef(Py_None);
    }
    Py_BEGIN_ALLOW_THREADS
    result = reduce_spans(spans, numel, kind, p);
    Py_END_ALLOW_THREADS
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  return PyFloat_FromDouble(result);
}

PyObject* fastclip_scale_(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  double coef;
  int64_t max_numel;
  if (!parse_args("scale_(tensors: list, coef: float, max_numel: int = -1)", args, nargs, coef, max_numel)) {
    return nullptr;
  }
  std::vector<Span> spans;
  std::vector<at::Tensor> keep;
  int64_t numel = 0;
  try {
    const Read read = read_spans(args[0], max_numel, spans, keep, numel);
    if (read != Read::kOk) {
      return read == Read::kError ? nullptr : Py_NewRef(Py_False);
    }
    for (at::Tensor& t : keep) {  // before any write: an inference tensor raises here, as in torch
      t.unsafeGetTensorImpl()->bump_version();
    }
    Py_BEGIN_ALLOW_THREADS
    scale_spans(spans, numel, coef);
    Py_END_ALLOW_THREADS
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_TRUE;
}

PyObject* fastclip_openmp(PyObject* /*self*/, PyObject* const* /*args*/, Py_ssize_t nargs) {
  if (nargs != 0) {
    PyErr_SetString(PyExc_TypeError, "openmp() takes no arguments");
    return nullptr;
  }
#if defined(_OPENMP)
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}
