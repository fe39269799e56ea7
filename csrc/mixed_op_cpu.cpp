// CPU backend of the fused mixed op: OpenMP over images or (image, channel)
// planes, per-thread scratch planes, no torch headers. The formulas come from
// mixed_op_math.h; this file only owns loop order and memory.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "mixed_op.h"
#include "mixed_op_math.h"

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
#endif

namespace nasdeploy {
namespace {

// Per-channel mean and biased variance of x (N, C, HW) from per-plane double sums,
// reduced in a fixed order so the result does not depend on the thread count.
template <class T>
void channel_stats(const T* x, int N, int C, int HW, T* mean, T* var, int threads) {
  std::vector<double> s1(size_t(N) * C), s2(size_t(N) * C);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int nc = 0; nc < N * C; ++nc) {
    const T* p = x + size_t(nc) * HW;
    double a = 0, b = 0;
    for (int i = 0; i < HW; ++i) {
      a += p[i];
      b += double(p[i]) * p[i];
    }
    s1[nc] = a;
    s2[nc] = b;
  }
  const double M = double(N) * HW;
  for (int c = 0; c < C; ++c) {
    double a = 0, b = 0;
    for (int n = 0; n < N; ++n) {
      a += s1[size_t(n) * C + c];
      b += s2[size_t(n) * C + c];
    }
    const double m = a / M;
    mean[c] = T(m);
    var[c] = T(std::max(b / M - m * m, 0.0));
  }
}

// Reductions with 8 independent partial sums: a plain `acc += a[i] * b[i]` is one
// serial add chain that the compiler may not reorder (no -ffast-math), ~4x slower.
template <class T>
T dot(const T* a, const T* b, int n) {
  T part[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  T acc = T(0);
  for (; i < n; ++i) acc += a[i] * b[i];
  for (int j = 0; j < 8; ++j) acc += part[j];
  return acc;
}

template <class T>
inline void axpy(T a, const T* __restrict x, T* __restrict y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// sum(a) and sum(a * b) (b null: sum(a * a)), returned in double: blocks of 64 summed in T
// with 8 partial sums (vectorizes; T = float error ~1e-7 relative per block), the block sums
// and the tail in double. Converting every element to double instead cost ~4x.
template <class T, bool kSquare>
void sums_blocks(const T* a, const T* b, int n, double* sa, double* sab) {
  double u1 = 0, u2 = 0;
  int i = 0;
  for (; i + 64 <= n; i += 64) {
    T p1[8] = {}, p2[8] = {};
    for (int k = i; k < i + 64; k += 8)
      for (int j = 0; j < 8; ++j) {
        const T u = a[k + j], v = kSquare ? u : b[k + j];
        p1[j] += u;
        p2[j] += u * v;
      }
    T q1 = T(0), q2 = T(0);
    for (int j = 0; j < 8; ++j) q1 += p1[j], q2 += p2[j];
    u1 += double(q1);
    u2 += double(q2);
  }
  for (; i < n; ++i) {
    const double u = a[i], v = kSquare ? u : double(b[i]);
    u1 += u;
    u2 += u * v;
  }
  *sa = u1;
  *sab = u2;
}

template <class T>
void sums_d(const T* a, const T* b, int n, double* sa, double* sab) {
  if (b)
    sums_blocks<T, false>(a, b, n, sa, sab);
  else
    sums_blocks<T, true>(a, nullptr, n, sa, sab);
}

bool has_bn(int code) { return code == kMaxPool || code == kAvgPool || code == kExtBN; }

// A BN'd candidate normalized with this batch's statistics (not with given, running ones).
bool batch_bn(const MixedArgs& a, int p) { return has_bn(a.codes[p]) && !a.fixed[p]; }

// Whether some candidate is this pool (with batch statistics only, if batch_only).
bool wants(const MixedArgs& a, int code, bool batch_only = false) {
  for (int p = 0; p < a.P; ++p)
    if (a.codes[p] == code && !(batch_only && a.fixed[p])) return true;
  return false;
}

// sums = (count, then per candidate sum(y) (C), sum(y^2) (C)): see mixed_op.h.
template <class T>
void batch_moments(const double* sums, int p, int c, int C, T* mean, T* var) {
  const double* s = sums + 1 + size_t(p) * 2 * C;
  nasdeploy::batch_moments(s[c], s[C + c], sums[0], mean, var);
}

// torch's max rule (strictly greater, NaN wins) as one select, so loops vectorize.
template <class T>
inline bool beats(T v, T best) {
  return v > best || v != v;
}

// b ? x : y through the bits, so no compiler turns it back into a branch (argmax loops,
// where a value and its index are selected together).
template <class T>
inline T select_bits(bool b, T x, T y) {
  using U = typename std::conditional<sizeof(T) == 8, std::uint64_t, std::uint32_t>::type;
  U ux, uy;
  std::memcpy(&ux, &x, sizeof(T));
  std::memcpy(&uy, &y, sizeof(T));
  const U m = U(0) - U(b);
  const U r = (ux & m) | (uy & ~m);
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}

inline int select_int(bool b, int x, int y) {
  const int m = -int(b);
  return (x & m) | (y & ~m);
}

// The value of that rule without a branch: both comparisons evaluated (bitwise |), so
// GCC if-converts the select and vectorizes the loop (the short-circuit || was compiled to
// a branch per element, mispredicted on real data: ~4x slower pools).
template <class T>
inline T keep_max(T v, T best) {
  return ((v > best) | (v != v)) ? v : best;
}

// Row pass of the separable 3x3 pools (pad 1, stride s): per row h and output column
// ow, the window's max (with its flat index when arg != null) and sum. Windows are
// scanned left to right, so the first maximum wins, as in max_pool3 (mixed_op_math.h).
template <class T>
void pool_rows(const T* xp, int H, int W, int Wo, int s, T* tmax, int* targ, T* tsum) {
  const int lo = std::min(1, Wo), hi = std::max(lo, std::min(Wo, (W - 2) / s + 1));  // interior: all 3 in range
  for (int h = 0; h < H; ++h) {
    const T* r = xp + size_t(h) * W;
    T* m = tmax + size_t(h) * Wo;
    T* t = tsum + size_t(h) * Wo;
    int* a = targ ? targ + size_t(h) * Wo : nullptr;
    auto edge = [&](int ow) {
      const int w0 = std::max(ow * s - 1, 0), w1 = std::min(ow * s + 2, W);
      T best = r[w0], sum = T(0);
      int arg = w0;
      for (int iw = w0; iw < w1; ++iw) {
        if (iw > w0 && beats(r[iw], best)) best = r[iw], arg = iw;
        sum += r[iw];
      }
      m[ow] = best;
      t[ow] = sum;
      if (a) a[ow] = h * W + arg;
    };
    for (int ow = 0; ow < lo; ++ow) edge(ow);
    if (a) {
      for (int ow = lo; ow < hi; ++ow) {
        const int c = ow * s;
        // Selects, not branches (see keep_max): the argmax of random data mispredicts half the time.
        T best = r[c - 1];
        int arg = c - 1;
        const bool b1 = (r[c] > best) | (r[c] != r[c]);
        best = select_bits(b1, r[c], best);
        arg = select_int(b1, c, arg);
        const bool b2 = (r[c + 1] > best) | (r[c + 1] != r[c + 1]);
        best = select_bits(b2, r[c + 1], best);
        arg = select_int(b2, c + 1, arg);
        m[ow] = best;
        a[ow] = h * W + arg;
      }
    } else if (s == 1) {
      for (int ow = lo; ow < hi; ++ow) {
        const T best = keep_max(r[ow + 1], keep_max(r[ow], r[ow - 1]));
        m[ow] = best;
        t[ow] = r[ow - 1] + r[ow] + r[ow + 1];
      }
    } else {
      for (int ow = lo; ow < hi; ++ow) {
        const int c = ow * s;
        const T best = keep_max(r[c + 1], keep_max(r[c], r[c - 1]));
        m[ow] = best;
        t[ow] = r[c - 1] + r[c] + r[c + 1];
      }
    }
    for (int ow = hi; ow < Wo; ++ow) edge(ow);
  }
}

// The pooled planes of one (n, c) plane into per-thread buffers: the row pass, then
// the same window over rows. Equal to max_pool3/avg_pool3 (sums in another order).
// With marg != null, the flat argmax of every output instead of the avg plane; with
// cnt == null the avg plane holds window sums (not divided).
template <class T>
void pool_planes(const T* xp, int H, int W, int Ho, int Wo, int s, bool want_max, bool want_avg, T* mp, T* ap,
                 T* tmax, T* tsum, const T* cnt, int* targ = nullptr, int* marg = nullptr) {
  pool_rows(xp, H, W, Wo, s, tmax, targ, tsum);
  for (int oh = 0; oh < Ho; ++oh) {
    const int h0 = std::max(oh * s - 1, 0), h1 = std::min(oh * s + 2, H);
    T* mo = mp + size_t(oh) * Wo;
    T* ao = ap + size_t(oh) * Wo;
    if (marg) {
      int* ma = marg + size_t(oh) * Wo;
      std::copy(tmax + size_t(h0) * Wo, tmax + size_t(h0 + 1) * Wo, mo);
      std::copy(targ + size_t(h0) * Wo, targ + size_t(h0 + 1) * Wo, ma);
      for (int h = h0 + 1; h < h1; ++h)
        for (int ow = 0; ow < Wo; ++ow) {
          const T v = tmax[size_t(h) * Wo + ow];
          const bool b = (v > mo[ow]) | (v != v);
          mo[ow] = select_bits(b, v, mo[ow]);
          ma[ow] = select_int(b, targ[size_t(h) * Wo + ow], ma[ow]);
        }
      continue;
    }
    if (want_max) {
      std::copy(tmax + size_t(h0) * Wo, tmax + size_t(h0 + 1) * Wo, mo);
      for (int h = h0 + 1; h < h1; ++h) {
        const T* rm = tmax + size_t(h) * Wo;
        for (int ow = 0; ow < Wo; ++ow) mo[ow] = keep_max(rm[ow], mo[ow]);
      }
    }
    if (want_avg) {
      std::copy(tsum + size_t(h0) * Wo, tsum + size_t(h0 + 1) * Wo, ao);
      for (int h = h0 + 1; h < h1; ++h) {
        const T* rs = tsum + size_t(h) * Wo;
        for (int ow = 0; ow < Wo; ++ow) ao[ow] += rs[ow];
      }
      if (cnt) {  // the window sizes (pool3_count) as a plane: a division that vectorizes
        const T* co = cnt + size_t(oh) * Wo;
        for (int ow = 0; ow < Wo; ++ow) ao[ow] /= co[ow];
      }
    }
  }
}

// The plane of candidate p for plane nc (pools read the per-thread buffers).
template <class T>
const T* branch_plane(const MixedArgs& a, int p, int nc, int HWo, const T* xp, const T* mp, const T* ap) {
  switch (a.codes[p]) {
    case kMaxPool: return mp;
    case kAvgPool: return ap;
    case kIdentity: return xp;
    default: return static_cast<const T*>(a.ext[p]) + size_t(nc) * HWo;
  }
}

// Per-thread scratch planes of the pools, and the window sizes of the avg pool.
template <class T>
struct PoolScratch {
  std::vector<T> mp, ap, tmax, tsum, cnt;
  std::vector<int> targ, marg;
  PoolScratch(int H, int W, int Ho, int Wo, int s)
      : mp(size_t(Ho) * Wo), ap(size_t(Ho) * Wo), tmax(size_t(H) * Wo), tsum(size_t(H) * Wo),
        cnt(size_t(Ho) * Wo), targ(size_t(H) * Wo), marg(size_t(Ho) * Wo) {
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow) cnt[size_t(oh) * Wo + ow] = T(pool3_count(H, W, oh, ow, s));
  }
  void run(const T* xp, int H, int W, int Ho, int Wo, int s, bool want_max, bool want_avg) {
    if (want_max || want_avg)
      pool_planes(xp, H, W, Ho, Wo, s, want_max, want_avg, mp.data(), ap.data(), tmax.data(), tsum.data(),
                  cnt.data());
  }
};

}  // namespace

template <class T>
void mixed_stats(const MixedArgs& a, const T* x, double* sums, std::uintptr_t ctx) {
  const int threads = int(ctx), N = a.N, C = a.C, P = a.P;
  const int Ho = out_size(a.H, 3, a.stride, 1, 1), Wo = out_size(a.W, 3, a.stride, 1, 1), HWo = Ho * Wo;
  const bool want_max = wants(a, kMaxPool, true), want_avg = wants(a, kAvgPool, true);
  bool any = false;
  for (int p = 0; p < P; ++p) any |= batch_bn(a, p);
  std::fill(sums, sums + 1 + size_t(P) * 2 * C, 0.0);
  sums[0] = double(N) * HWo;
  if (!any) return;
  // Per plane sums, reduced per channel in a fixed order (independent of the thread count).
  std::vector<double> s1(size_t(P) * N * C, 0.0), s2(size_t(P) * N * C, 0.0);
#pragma omp parallel num_threads(threads)
  {
    PoolScratch<T> ps(a.H, a.W, Ho, Wo, a.stride);
#pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; ++nc) {
      const T* xp = x + size_t(nc) * a.H * a.W;
      ps.run(xp, a.H, a.W, Ho, Wo, a.stride, want_max, want_avg);
      for (int p = 0; p < P; ++p) {
        if (!batch_bn(a, p)) continue;
        const T* y = branch_plane(a, p, nc, HWo, xp, ps.mp.data(), ps.ap.data());
        sums_d<T>(y, nullptr, HWo, &s1[size_t(p) * N * C + nc], &s2[size_t(p) * N * C + nc]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < C; ++c)
      for (int n = 0; n < N; ++n) {
        sums[1 + (size_t(p) * 2) * C + c] += s1[size_t(p) * N * C + size_t(n) * C + c];
        sums[1 + (size_t(p) * 2 + 1) * C + c] += s2[size_t(p) * N * C + size_t(n) * C + c];
      }
}

template <class T>
void mixed_apply(const MixedArgs& a, const T* x, const T* w, const double* sums, T* mean, T* var, T* out,
                 std::uintptr_t ctx) {
  const int threads = int(ctx), N = a.N, C = a.C, P = a.P;
  const int Ho = out_size(a.H, 3, a.stride, 1, 1), Wo = out_size(a.W, 3, a.stride, 1, 1), HWo = Ho * Wo;
  const bool want_max = wants(a, kMaxPool), want_avg = wants(a, kAvgPool);
  // Per channel: out = shift[c] + sum_p scale[p][c] * y_p, folding w_p and the BN.
  std::vector<T> scale(size_t(P) * C, T(0)), shift(C, T(0));
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < C; ++c) {
      const size_t k = size_t(p) * C + c;
      T sc = w[p];
      if (batch_bn(a, p)) batch_moments(sums, p, c, C, &mean[k], &var[k]);
      if (has_bn(a.codes[p])) {
        sc = w[p] * bn_invstd(var[k], a.eps[p]);
        shift[c] -= sc * mean[k];
      } else {
        mean[k] = var[k] = T(0);
      }
      if (a.codes[p] == kNone) sc = T(0);
      scale[k] = sc;
    }
  // Recompute the pools and write the weighted sum once.
#pragma omp parallel num_threads(threads)
  {
    PoolScratch<T> ps(a.H, a.W, Ho, Wo, a.stride);
#pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; ++nc) {
      const int c = nc % C;
      const T* xp = x + size_t(nc) * a.H * a.W;
      T* op = out + size_t(nc) * HWo;
      ps.run(xp, a.H, a.W, Ho, Wo, a.stride, want_max, want_avg);
      std::fill(op, op + HWo, shift[c]);
      for (int p = 0; p < P; ++p) {
        const T sc = scale[size_t(p) * C + c];
        if (a.codes[p] == kNone) continue;
        const T* src = branch_plane(a, p, nc, HWo, xp, ps.mp.data(), ps.ap.data());
        for (int i = 0; i < HWo; ++i) op[i] += sc * src[i];
      }
    }
  }
}

template <class T>
void mixed_grad_stats(const MixedArgs& a, const T* g, const T* x, const T* mean, const T* var, double* gsums, T* gw,
                      std::uintptr_t ctx) {
  const int threads = int(ctx), N = a.N, C = a.C, P = a.P, H = a.H, W = a.W, s = a.stride;
  const int Ho = out_size(H, 3, s, 1, 1), Wo = out_size(W, 3, s, 1, 1), HWo = Ho * Wo;
  const bool want_max = wants(a, kMaxPool), want_avg = wants(a, kAvgPool);
  // Per plane sum(g) and sum(g * y_p), the pools recomputed instead of stored.
  std::vector<double> sg(size_t(N) * C, 0.0), sgy(size_t(P) * N * C, 0.0);
#pragma omp parallel num_threads(threads)
  {
    PoolScratch<T> ps(H, W, Ho, Wo, s);
#pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; ++nc) {
      const T* xp = x + size_t(nc) * H * W;
      const T* gp = g + size_t(nc) * HWo;
      ps.run(xp, H, W, Ho, Wo, s, want_max, want_avg);
      for (int p = 0; p < P; ++p) {
        if (a.codes[p] == kNone) continue;
        const T* y = branch_plane(a, p, nc, HWo, xp, ps.mp.data(), ps.ap.data());
        sums_d<T>(gp, y, HWo, &sg[nc], &sgy[size_t(p) * N * C + nc]);
      }
    }
  }
  // gsums = (sum(g) per channel, then sum(g * yhat_p) per (p, c)); grad of w_p = sum over c.
  for (int c = 0; c < C; ++c) {
    double u = 0;
    for (int n = 0; n < N; ++n) u += sg[size_t(n) * C + c];
    gsums[c] = u;
  }
  for (int p = 0; p < P; ++p) {
    double total = 0;
    for (int c = 0; c < C; ++c) {
      const size_t k = size_t(p) * C + c;
      double v = 0;
      for (int n = 0; n < N; ++n) v += sgy[size_t(p) * N * C + size_t(n) * C + c];
      const double t = has_bn(a.codes[p]) ? grad_yhat_sum(v, gsums[c], mean[k], var[k], a.eps[p]) : v;
      gsums[C + k] = t;
      total += t;
    }
    gw[p] = a.codes[p] == kNone ? T(0) : T(total);
  }
}

template <class T>
void mixed_grad_apply(const MixedArgs& a, const T* g, const T* x, const T* w, const T* mean, const T* var,
                      const double* gsums, const double* count, T* gx, T* const* gext, std::uintptr_t ctx) {
  const int threads = int(ctx), N = a.N, C = a.C, P = a.P, H = a.H, W = a.W, s = a.stride;
  const int Ho = out_size(H, 3, s, 1, 1), Wo = out_size(W, 3, s, 1, 1), HWo = Ho * Wo;
  const bool want_max = wants(a, kMaxPool), want_avg = wants(a, kAvgPool);
  // Per (p, c): the BN backward's batch terms mean(dy), mean(dy * yhat) (zero with given statistics).
  const double M = *count;
  std::vector<T> mg(size_t(P) * C, T(0)), mgy(size_t(P) * C, T(0)), istd(size_t(P) * C, T(1));
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < C; ++c) {
      const size_t k = size_t(p) * C + c;
      if (!has_bn(a.codes[p])) continue;
      istd[k] = bn_invstd(var[k], a.eps[p]);
      if (a.fixed[p]) continue;
      mg[k] = T(w[p] * (gsums[c] / M));
      mgy[k] = T(w[p] * (gsums[C + k] / M));
    }
  // Each branch's input gradient; pools scatter into their x plane.
#pragma omp parallel num_threads(threads)
  {
    PoolScratch<T> ps(H, W, Ho, Wo, s);
    std::vector<T> d(HWo), box(HWo), acc3(want_max ? 3 * size_t(H) * W : 0);
#pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; ++nc) {
      const int c = nc % C;
      const T* xp = x + size_t(nc) * H * W;
      const T* gp = g + size_t(nc) * HWo;
      T* gxp = gx + size_t(nc) * H * W;
      std::fill(gxp, gxp + H * W, T(0));
      ps.run(xp, H, W, Ho, Wo, s, want_max, want_avg);
      const T *mp = ps.mp.data(), *ap = ps.ap.data();
      for (int p = 0; p < P; ++p) {
        const int code = a.codes[p];
        const T wp = w[p];
        if (code == kNone) continue;
        if (code == kIdentity) {
          for (int i = 0; i < HWo; ++i) gxp[i] += wp * gp[i];
          continue;
        }
        if (code == kExt) {
          T* ge = gext[p] + size_t(nc) * HWo;
          for (int i = 0; i < HWo; ++i) ge[i] = wp * gp[i];
          continue;
        }
        const size_t k = size_t(p) * C + c;
        const T m = mean[k], is = istd[k], dmg = mg[k], dmgy = mgy[k];
        if (code == kExtBN) {
          const T* y = static_cast<const T*>(a.ext[p]) + size_t(nc) * HWo;
          T* ge = gext[p] + size_t(nc) * HWo;
          for (int i = 0; i < HWo; ++i) ge[i] = bn_backward(wp * gp[i], (y[i] - m) * is, dmg, dmgy, is);
          continue;
        }
        const T* y = code == kMaxPool ? mp : ap;
        for (int i = 0; i < HWo; ++i) d[i] = bn_backward(wp * gp[i], (y[i] - m) * is, dmg, dmgy, is);
        if (code == kMaxPool) {
          // The exact torch argmax of each window, recomputed, then a serial scatter.
          pool_planes<T>(xp, H, W, Ho, Wo, s, true, false, box.data(), nullptr, ps.tmax.data(), ps.tsum.data(),
                         nullptr, ps.targ.data(), ps.marg.data());
          // Neighbouring windows share their maximum, so consecutive += hit one address and
          // wait on each other's store: columns ow = 0, 1, 2 (mod 3), whose windows never
          // overlap within a row, scatter into three planes summed afterwards (~2x faster).
          std::fill(acc3.begin(), acc3.end(), T(0));
          T* b[3] = {acc3.data(), acc3.data() + size_t(H) * W, acc3.data() + 2 * size_t(H) * W};
          for (int oh = 0; oh < Ho; ++oh) {
            const int* mrow = ps.marg.data() + size_t(oh) * Wo;
            const T* drow = d.data() + size_t(oh) * Wo;
            int ow = 0;
            for (; ow + 3 <= Wo; ow += 3) {
              b[0][mrow[ow]] += drow[ow];
              b[1][mrow[ow + 1]] += drow[ow + 1];
              b[2][mrow[ow + 2]] += drow[ow + 2];
            }
            for (; ow < Wo; ++ow) b[ow % 3][mrow[ow]] += drow[ow];
          }
          for (int i = 0; i < H * W; ++i) gxp[i] += b[0][i] + b[1][i] + b[2][i];
        } else if (s == 1) {
          // Stride 1: the transpose of the window sum is the same clipped 3x3 box sum.
          for (int i = 0; i < HWo; ++i) d[i] /= ps.cnt[i];
          pool_planes<T>(d.data(), H, W, Ho, Wo, 1, false, true, nullptr, box.data(), ps.tmax.data(), ps.tsum.data(),
                         nullptr);
          for (int i = 0; i < HWo; ++i) gxp[i] += box[i];
        } else {
          for (int oh = 0; oh < Ho; ++oh)
            for (int ow = 0; ow < Wo; ++ow) {
              const T dd = d[oh * Wo + ow] / ps.cnt[size_t(oh) * Wo + ow];
              const int h0 = oh * s - 1, w0 = ow * s - 1;
              for (int ih = std::max(h0, 0); ih < std::min(h0 + 3, H); ++ih)
                for (int iw = std::max(w0, 0); iw < std::min(w0 + 3, W); ++iw) gxp[ih * W + iw] += dd;
            }
        }
      }
    }
  }
}

namespace {

// Fill a zero-padded (Hp, Wp) copy of one plane with prologue(x).
template <class T>
void fill_padded(const T* xp, int H, int W, int pad, int mode, T m, T is, T* pp) {
  const int Wp = W + 2 * pad;
  std::fill(pp, pp + size_t(H + 2 * pad) * Wp, T(0));
  for (int h = 0; h < H; ++h) {
    T* row = pp + size_t(h + pad) * Wp + pad;
    const T* src = xp + size_t(h) * W;
    for (int w = 0; w < W; ++w) row[w] = prologue(src[w], mode, m, is);
  }
}

// Depthwise conv of one padded plane: o[oh, ow] = sum_k w[k] * pp[oh*s + kh*d, ow*s + kw*d].
template <class T>
void dw_plane(const T* pp, int Wp, const T* wk, int K, int s, int d, int Ho, int Wo, T* o) {
  for (int oh = 0; oh < Ho; ++oh) {
    T* orow = o + size_t(oh) * Wo;
    std::fill(orow, orow + Wo, T(0));
    for (int kh = 0; kh < K; ++kh)
      for (int kw = 0; kw < K; ++kw) {
        const T wv = wk[kh * K + kw];
        const T* r = pp + size_t(oh * s + kh * d) * Wp + kw * d;
        if (s == 1)
          for (int ow = 0; ow < Wo; ++ow) orow[ow] += wv * r[ow];
        else
          for (int ow = 0; ow < Wo; ++ow) orow[ow] += wv * r[ow * s];
      }
  }
}

// Backward of dw_plane: scatter into the padded input gradient; the tap gradients
// are summed per column first (tacc, K*K*Wo), a vertical FMA that vectorizes, and
// reduced once per plane into gwk.
template <class T>
void dw_plane_backward(const T* pp, int Wp, const T* wk, int K, int s, int d, int Ho, int Wo, const T* go, T* gpp,
                       T* tacc, double* gwk) {
  std::fill(tacc, tacc + size_t(K) * K * Wo, T(0));
  for (int oh = 0; oh < Ho; ++oh) {
    const T* grow = go + size_t(oh) * Wo;
    for (int kh = 0; kh < K; ++kh)
      for (int kw = 0; kw < K; ++kw) {
        const T wv = wk[kh * K + kw];
        const size_t off = size_t(oh * s + kh * d) * Wp + kw * d;
        const T* __restrict r = pp + off;
        T* __restrict gr = gpp + off;
        T* __restrict ta = tacc + size_t(kh * K + kw) * Wo;
        if (s == 1) {
          for (int ow = 0; ow < Wo; ++ow) {
            gr[ow] += wv * grow[ow];
            ta[ow] += grow[ow] * r[ow];
          }
        } else {
          for (int ow = 0; ow < Wo; ++ow) {
            gr[ow * s] += wv * grow[ow];
            ta[ow] += grow[ow] * r[ow * s];
          }
        }
      }
  }
  for (int k = 0; k < K * K; ++k) {
    double t = 0;
    for (int ow = 0; ow < Wo; ++ow) t += tacc[size_t(k) * Wo + ow];
    gwk[k] += t;
  }
}

}  // namespace

template <class T>
void sep_forward(const SepArgs& a, const T* x, const T* wdw, const T* wpw, T* y, T* mean, T* var, std::uintptr_t ctx) {
  const int threads = int(ctx), C = a.C, H = a.H, W = a.W, K = a.K;
  const int Ho = out_size(H, K, a.stride, a.pad, a.dil), Wo = out_size(W, K, a.stride, a.pad, a.dil), HWo = Ho * Wo;
  const int Hp = H + 2 * a.pad, Wp = W + 2 * a.pad;
  std::vector<T> mu(C, T(0)), is(C, T(1));
  if (a.prologue == kBnRelu) {
    channel_stats(x, a.N, C, H * W, mean, var, threads);
    for (int c = 0; c < C; ++c) {
      mu[c] = mean[c];
      is[c] = bn_invstd(var[c], a.eps);
    }
  }
  // One image per iteration: its prologue'd padded planes and depthwise output live
  // in per-thread buffers, so only y is written to memory.
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> pp(size_t(Hp) * Wp), dwo(size_t(C) * HWo);
#pragma omp for schedule(static)
    for (int n = 0; n < a.N; ++n) {
      for (int c = 0; c < C; ++c) {
        fill_padded(x + (size_t(n) * C + c) * H * W, H, W, a.pad, a.prologue, mu[c], is[c], pp.data());
        dw_plane(pp.data(), Wp, wdw + size_t(c) * K * K, K, a.stride, a.dil, Ho, Wo, dwo.data() + size_t(c) * HWo);
      }
      for (int co = 0; co < a.Co; ++co) {
        T* yo = y + (size_t(n) * a.Co + co) * HWo;
        std::fill(yo, yo + HWo, T(0));
        for (int ci = 0; ci < C; ++ci) {
          const T wv = wpw[size_t(co) * C + ci];
          const T* src = dwo.data() + size_t(ci) * HWo;
          for (int i = 0; i < HWo; ++i) yo[i] += wv * src[i];
        }
      }
    }
  }
}

template <class T>
void sep_backward(const SepArgs& a, const T* gy, const T* x, const T* wdw, const T* wpw, const T* mean, const T* var,
                  T* gx, T* gwdw, T* gwpw, std::uintptr_t ctx) {
  const int threads = int(ctx), N = a.N, C = a.C, H = a.H, W = a.W, K = a.K, Co = a.Co, pad = a.pad;
  const int Ho = out_size(H, K, a.stride, pad, a.dil), Wo = out_size(W, K, a.stride, pad, a.dil), HWo = Ho * Wo;
  const int Hp = H + 2 * pad, Wp = W + 2 * pad;
  std::vector<T> mu(C, T(0)), is(C, T(1));
  if (a.prologue == kBnRelu)
    for (int c = 0; c < C; ++c) {
      mu[c] = mean[c];
      is[c] = bn_invstd(var[c], a.eps);
    }
#ifdef _OPENMP
  const int slots = std::max(threads, 1);
#else
  const int slots = 1;
#endif
  // Weight gradients: one double accumulator per thread, summed in thread order.
  const size_t ndw = size_t(C) * K * K, npw = size_t(Co) * C;
  std::vector<double> acc(size_t(slots) * (ndw + npw), 0.0);
  std::vector<double> sz(size_t(N) * C, 0.0), szx(size_t(N) * C, 0.0);  // kBnRelu channel sums
#pragma omp parallel num_threads(threads)
  {
    double* gdw_t = acc.data() + size_t(omp_get_thread_num()) * (ndw + npw);
    double* gpw_t = gdw_t + ndw;
    const size_t plane = size_t(Hp) * Wp;
    std::vector<T> pp(C * plane), gpp(plane), dwo(size_t(C) * HWo), gdwo(size_t(C) * HWo), tacc(size_t(K) * K * Wo);
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      const T* gyn = gy + size_t(n) * Co * HWo;
      // Recompute the depthwise output of this image (cheaper than storing it).
      for (int c = 0; c < C; ++c) {
        fill_padded(x + (size_t(n) * C + c) * H * W, H, W, pad, a.prologue, mu[c], is[c], pp.data() + c * plane);
        dw_plane(pp.data() + c * plane, Wp, wdw + size_t(c) * K * K, K, a.stride, a.dil, Ho, Wo,
                 dwo.data() + size_t(c) * HWo);
      }
      // Pointwise backward: gwpw += gy dwo^T, gdwo = wpw^T gy.
      std::fill(gdwo.begin(), gdwo.end(), T(0));
      for (int co = 0; co < Co; ++co) {
        const T* gr = gyn + size_t(co) * HWo;
        for (int ci = 0; ci < C; ++ci) {
          const T* d = dwo.data() + size_t(ci) * HWo;
          T* gd = gdwo.data() + size_t(ci) * HWo;
          const T wv = wpw[size_t(co) * C + ci];
          axpy(wv, gr, gd, HWo);
          gpw_t[size_t(co) * C + ci] += dot(gr, d, HWo);
        }
      }
      // Depthwise backward, then the prologue's backward into gx.
      for (int c = 0; c < C; ++c) {
        const T* xp = x + (size_t(n) * C + c) * H * W;
        std::fill(gpp.begin(), gpp.end(), T(0));
        dw_plane_backward(pp.data() + c * plane, Wp, wdw + size_t(c) * K * K, K, a.stride, a.dil, Ho, Wo,
                          gdwo.data() + size_t(c) * HWo, gpp.data(), tacc.data(), gdw_t + size_t(c) * K * K);
        T* gxp = gx + (size_t(n) * C + c) * H * W;
        double u = 0, v = 0;
        for (int h = 0; h < H; ++h)
          for (int w = 0; w < W; ++w) {
            const T gz = prologue_grad(gpp[size_t(h + pad) * Wp + w + pad], xp[h * W + w], a.prologue, mu[c], is[c]);
            gxp[h * W + w] = gz;
            if (a.prologue == kBnRelu) {
              u += gz;
              v += double(gz) * ((xp[h * W + w] - mu[c]) * is[c]);
            }
          }
        sz[size_t(n) * C + c] = u;
        szx[size_t(n) * C + c] = v;
      }
    }
  }
  for (size_t j = 0; j < ndw + npw; ++j) {
    double t = 0;
    for (int s = 0; s < slots; ++s) t += acc[size_t(s) * (ndw + npw) + j];
    if (j < ndw)
      gwdw[j] = T(t);
    else
      gwpw[j - ndw] = T(t);
  }
  if (a.prologue != kBnRelu) return;
  // BN backward needs the channel means of the gradient, known only now.
  const double M = double(N) * H * W;
  std::vector<T> mz(C), mzx(C);
  for (int c = 0; c < C; ++c) {
    double u = 0, v = 0;
    for (int n = 0; n < N; ++n) {
      u += sz[size_t(n) * C + c];
      v += szx[size_t(n) * C + c];
    }
    mz[c] = T(u / M);
    mzx[c] = T(v / M);
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int nc = 0; nc < N * C; ++nc) {
    const int c = nc % C;
    const T* xp = x + size_t(nc) * H * W;
    T* gxp = gx + size_t(nc) * H * W;
    for (int i = 0; i < H * W; ++i) gxp[i] = bn_backward(gxp[i], (xp[i] - mu[c]) * is[c], mz[c], mzx[c], is[c]);
  }
}

namespace {

// Taps of one output row against one input row, channels innermost: acc[c] += g[ow, c] * x[iw(ow), c]
// over the ow whose input column is inside the image. Blocks of 8 channels keep their sums in
// registers across the row (the channel count is a runtime value, the block size is not).
template <class T>
void dw_row_taps(const T* __restrict grow, const T* __restrict xrow, int C, int W, int Wo, int s, int off,
                 T* __restrict acc) {
  // iw = ow * s + off must lie in [0, W): ow in [lo, hi)
  const int lo = off >= 0 ? 0 : (-off + s - 1) / s;
  const int hi = std::min(Wo, W - 1 - off < 0 ? 0 : (W - 1 - off) / s + 1);
  if (lo >= hi) return;
  int c0 = 0;
  for (; c0 + 8 <= C; c0 += 8) {
    T r[8];
    for (int c = 0; c < 8; ++c) r[c] = acc[c0 + c];
    for (int ow = lo; ow < hi; ++ow) {
      const T* gp = grow + size_t(ow) * C + c0;
      const T* xp = xrow + (size_t(ow) * s + off) * C + c0;
      for (int c = 0; c < 8; ++c) r[c] += gp[c] * xp[c];
    }
    for (int c = 0; c < 8; ++c) acc[c0 + c] = r[c];
  }
  for (int ow = lo; ow < hi; ++ow) {
    const T* gp = grow + size_t(ow) * C;
    const T* xp = xrow + (size_t(ow) * s + off) * C;
    for (int c = c0; c < C; ++c) acc[c] += gp[c] * xp[c];
  }
}

}  // namespace

template <class T>
void dw_grad_weight(const DwArgs& a, const T* x, const T* g, T* gw, std::uintptr_t ctx) {
  const int threads = int(ctx), C = a.C, K = a.K, KK = a.K * a.K;
#ifdef _OPENMP
  const int slots = std::max(threads, 1);
#else
  const int slots = 1;
#endif
  // Sums in T within one image, in double across images (one accumulator per thread, added in thread order).
  std::vector<double> acc(size_t(slots) * KK * C, 0.0);
#pragma omp parallel num_threads(threads)
  {
    double* mine = acc.data() + size_t(omp_get_thread_num()) * KK * C;
    std::vector<T> img(size_t(KK) * C);
#pragma omp for schedule(static)
    for (int n = 0; n < a.N; ++n) {
      std::fill(img.begin(), img.end(), T(0));
      for (int oh = 0; oh < a.Ho; ++oh) {
        const T* grow = g + (size_t(n) * a.Ho + oh) * a.Wo * C;
        for (int kh = 0; kh < K; ++kh) {
          const int ih = oh * a.stride - a.pad + kh * a.dil;
          if (ih < 0 || ih >= a.H) continue;
          const T* xrow = x + (size_t(n) * a.H + ih) * a.W * C;
          for (int kw = 0; kw < K; ++kw)
            dw_row_taps(grow, xrow, C, a.W, a.Wo, a.stride, kw * a.dil - a.pad, img.data() + size_t(kh * K + kw) * C);
        }
      }
      for (size_t j = 0; j < img.size(); ++j) mine[j] += img[j];
    }
  }
  for (int c = 0; c < C; ++c)
    for (int k = 0; k < KK; ++k) {
      double t = 0;
      for (int s = 0; s < slots; ++s) t += acc[(size_t(s) * KK + k) * C + c];
      gw[size_t(c) * KK + k] = T(t);
    }
}

template void dw_grad_weight<float>(const DwArgs&, const float*, const float*, float*, std::uintptr_t);
template void dw_grad_weight<double>(const DwArgs&, const double*, const double*, double*, std::uintptr_t);

ND_INSTANTIATE(float)
ND_INSTANTIATE(double)

}  // namespace nasdeploy
