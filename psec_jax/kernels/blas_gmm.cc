// Grouped matmuls on CPU as XLA FFI handlers: one CBLAS sgemm per (group, column tile).
// Built and loaded by psec_jax/kernels/blas_gmm.py, linked against MKL's sequential layer. Rows are
// grouped in order; group g holds rows [sum(sizes[:g]), sum(sizes[:g+1])) clipped to m.
//
//   PsecBlasGmm:  out [m, n] = rows of group g x rhs[g]    rhs [G, k, n], or [G, n, k] transposed
//                 (transpose_rhs); rows past the groups are zero.
//   PsecBlasTgmm: out [G, k, n] = lhs_g^T [k, rows] x rhs_g [rows, n]  lhs [m, k], rhs [m, n];
//                 empty groups are zero.
//
// The tiles run on XLA's intra-op thread pool with one sequential sgemm each: the calling thread
// works too and takes tiles from a shared counter, so a pool thread that is busy elsewhere (or
// starts late) only means fewer hands, never a wait on it, and no OpenMP runtime spins beside
// XLA's threads. On 2 cores this matched MKL's own OpenMP threading (GNU or Intel layer, one
// sgemm per group) at 670-row groups and beat it at 40-170 rows, except [170, 2816] x [2816, 1024]
// (ldb = 1024), where sequential MKL reaches ~110 GFLOP/s a core against ~145 threaded.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
// tiles per worker to aim for: more balance the load between threads, fewer keep each sgemm large
constexpr int64_t kTilesPerWorker = 2;
constexpr int64_t kMinTileCols = 64;

struct Sgemm {  // one cblas_sgemm call, row-major
  int trans_a, trans_b, m, n, k;
  const float* a;
  int lda;
  const float* b;
  int ldb;
  float* c;
  int ldc;
};

struct Work {
  std::vector<Sgemm> calls;
  std::atomic<size_t> next{0}, done{0};
};

void RunTiles(Work& work) {
  for (size_t i; (i = work.next.fetch_add(1)) < work.calls.size();) {
    const Sgemm& s = work.calls[i];
    cblas_sgemm(kRowMajor, s.trans_a, s.trans_b, s.m, s.n, s.k, 1.0f, s.a, s.lda, s.b, s.ldb, 0.0f, s.c, s.ldc);
    work.done.fetch_add(1);
    work.done.notify_all();
  }
}

void Run(ffi::ThreadPool& pool, std::shared_ptr<Work> work) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->calls.size()) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { RunTiles(*work); });
  RunTiles(*work);
  // every tile has been taken; wait for those still running on other threads
  for (size_t d; (d = work->done.load()) < work->calls.size();) work->done.wait(d);
}

// Group g's first row and row count, clipped to m.
std::vector<std::pair<int64_t, int64_t>> Groups(ffi::Buffer<ffi::S32>& sizes, int64_t m) {
  std::vector<std::pair<int64_t, int64_t>> groups;
  int64_t start = 0;
  for (int64_t g = 0; g < sizes.element_count(); ++g) {
    const int64_t rows = std::clamp<int64_t>(sizes.typed_data()[g], 0, m - start);
    groups.emplace_back(start, rows);
    start += rows;
  }
  return groups;
}

// Column tiles [col0, col0 + width) of an n-wide output for a group of `rows` rows out of `total`.
template <typename F>
void ForEachTile(int64_t rows, int64_t total, int64_t n, int64_t workers, F add) {
  int64_t pieces = 1;
  if (workers > 1) {
    const int64_t by_share = (rows * kTilesPerWorker * workers + total - 1) / total;
    pieces = std::max<int64_t>(1, std::min(by_share, n / kMinTileCols));
  }
  const int64_t width = ((n + pieces - 1) / pieces + 15) / 16 * 16;  // whole 64-byte lines
  for (int64_t col0 = 0; col0 < n; col0 += width) add(col0, std::min(width, n - col0));
}

ffi::Error Gmm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> lhs, ffi::Buffer<ffi::F32> rhs,
               ffi::Buffer<ffi::S32> sizes, ffi::ResultBuffer<ffi::F32> out, bool transpose_rhs) {
  const int64_t m = lhs.dimensions()[0], k = lhs.dimensions()[1];
  const int64_t n = out->dimensions()[1];
  auto work = std::make_shared<Work>();
  int64_t total = 0;
  const auto groups = Groups(sizes, m);
  for (const auto& [start, rows] : groups) total += rows;
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto [start, rows] = groups[g];
    if (rows == 0) continue;
    const float* w = rhs.typed_data() + g * k * n;
    ForEachTile(rows, total, n, workers, [&](int64_t col0, int64_t cols) {
      work->calls.push_back({kNoTrans, transpose_rhs ? kTrans : kNoTrans, int(rows), int(cols), int(k),
                             lhs.typed_data() + start * k, int(k), w + (transpose_rhs ? col0 * k : col0),
                             int(transpose_rhs ? k : n), out->typed_data() + start * n + col0, int(n)});
    });
  }
  if (m > total && n > 0) std::memset(out->typed_data() + total * n, 0, (m - total) * n * sizeof(float));
  Run(pool, std::move(work));
  return ffi::Error::Success();
}

ffi::Error Tgmm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> lhs, ffi::Buffer<ffi::F32> rhs,
                ffi::Buffer<ffi::S32> sizes, ffi::ResultBuffer<ffi::F32> out) {
  const int64_t m = lhs.dimensions()[0], k = lhs.dimensions()[1], n = rhs.dimensions()[1];
  auto work = std::make_shared<Work>();
  int64_t total = 0;
  const auto groups = Groups(sizes, m);
  for (const auto& [start, rows] : groups) total += rows;
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto [start, rows] = groups[g];
    float* c = out->typed_data() + g * k * n;
    if (rows == 0) {
      if (k * n > 0) std::memset(c, 0, k * n * sizeof(float));
      continue;
    }
    ForEachTile(rows, total, n, workers, [&](int64_t col0, int64_t cols) {
      work->calls.push_back({kTrans, kNoTrans, int(k), int(cols), int(rows), lhs.typed_data() + start * k, int(k),
                             rhs.typed_data() + start * n + col0, int(n), c + col0, int(n)});
    });
  }
  Run(pool, std::move(work));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PsecBlasGmm, Gmm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_rhs"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PsecBlasTgmm, Tgmm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
