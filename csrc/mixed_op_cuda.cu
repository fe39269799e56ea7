// CUDA backend of the fused mixed op: the same formulas as the CPU path (from
// mixed_op_math.h), one thread per output element, one block per channel for the
// batch reductions. Gradients w.r.t. inputs are gathers, not scatters, so no
// atomics are needed. Scratch comes from cudaMallocAsync on the caller's stream.
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "mixed_op.h"
#include "mixed_op_math.h"

namespace nasdeploy {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxP = 16;  // candidates per edge (the DARTS space has 8); checked in Python

// Everything a kernel needs about the edge, passed by value (kernel parameters): no device
// copy of the pointer tables, so no host array must outlive an async copy.
struct Dev {
  int N, C, H, W, stride, P, Ho, Wo;
  int codes[kMaxP];
  int fixed[kMaxP];
  double eps[kMaxP];
  const void* ext[kMaxP];
  void* gext[kMaxP];
};

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

Dev make_dev(const MixedArgs& a, void* const* gext = nullptr) {
  if (a.P > kMaxP) throw std::runtime_error("too many candidates for the CUDA mixed op");
  Dev d{};
  d.N = a.N, d.C = a.C, d.H = a.H, d.W = a.W, d.stride = a.stride, d.P = a.P;
  d.Ho = out_size(a.H, 3, a.stride, 1, 1);
  d.Wo = out_size(a.W, 3, a.stride, 1, 1);
  for (int p = 0; p < a.P; ++p) {
    d.codes[p] = a.codes[p];
    d.eps[p] = a.eps[p];
    d.fixed[p] = a.fixed[p];
    d.ext[p] = a.ext[p];
    d.gext[p] = gext ? gext[p] : nullptr;
  }
  return d;
}

__device__ inline bool has_bn(int code) { return code == kMaxPool || code == kAvgPool || code == kExtBN; }
__device__ inline bool batch_bn(const Dev& d, int p) { return has_bn(d.codes[p]) && !d.fixed[p]; }

// Block-wide sum of a double; every thread gets the total.
__device__ double block_sum(double v) {
  __shared__ double buf[kThreads];
  __syncthreads();
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  return buf[0];
}

template <class T>
__device__ T branch_at(const Dev& d, int p, const T* x, int n, int c, int oh, int ow) {
  const T* plane = x + (size_t(n) * d.C + c) * d.H * d.W;
  const size_t o = ((size_t(n) * d.C + c) * d.Ho + oh) * d.Wo + ow;
  int arg;
  switch (d.codes[p]) {
    case kMaxPool: return max_pool3(plane, d.H, d.W, oh, ow, d.stride, &arg);
    case kAvgPool: return avg_pool3(plane, d.H, d.W, oh, ow, d.stride);
    case kIdentity: return plane[oh * d.W + ow];
    case kExt:
    case kExtBN: return static_cast<const T*>(d.ext[p])[o];
    default: return T(0);
  }
}

// One block per (p, c): sum(y_p) and sum(y_p^2) over (N, Ho, Wo) into sums (see mixed_op.h).
template <class T>
__global__ void mixed_stats_kernel(Dev d, const T* x, double* sums) {
  const int p = blockIdx.x / d.C, c = blockIdx.x % d.C, HWo = d.Ho * d.Wo;
  double* s = sums + 1 + size_t(p) * 2 * d.C;
  if (blockIdx.x == 0 && threadIdx.x == 0) sums[0] = double(d.N) * HWo;
  if (!batch_bn(d, p)) {
    if (threadIdx.x == 0) s[c] = s[d.C + c] = 0.0;
    return;
  }
  double u = 0, v = 0;
  for (int j = threadIdx.x; j < d.N * HWo; j += blockDim.x) {
    const double y = branch_at(d, p, x, j / HWo, c, (j % HWo) / d.Wo, j % d.Wo);
    u += y;
    v += y * y;
  }
  u = block_sum(u);
  v = block_sum(v);
  if (threadIdx.x == 0) {
    s[c] = u;
    s[d.C + c] = v;
  }
}

// One thread per (p, c): the BN statistics of every batch-stat candidate from the (reduced) sums.
template <class T>
__global__ void mixed_moments(Dev d, const double* sums, T* mean, T* var) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= d.P * d.C) return;
  const int p = k / d.C, c = k % d.C;
  const double* s = sums + 1 + size_t(p) * 2 * d.C;
  if (batch_bn(d, p))
    batch_moments(s[c], s[d.C + c], sums[0], &mean[k], &var[k]);
  else if (!has_bn(d.codes[p]))
    mean[k] = var[k] = T(0);
}

template <class T>
__global__ void mixed_out(Dev d, const T* x, const T* w, const T* mean, const T* var, T* out) {
  const size_t total = size_t(d.N) * d.C * d.Ho * d.Wo;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int ow = i % d.Wo, oh = (i / d.Wo) % d.Ho, c = (i / (size_t(d.Wo) * d.Ho)) % d.C;
    const int n = i / (size_t(d.Wo) * d.Ho * d.C);
    T acc = T(0);
    for (int p = 0; p < d.P; ++p) {
      if (d.codes[p] == kNone) continue;
      const T y = branch_at(d, p, x, n, c, oh, ow);
      if (has_bn(d.codes[p])) {
        const int k = p * d.C + c;
        acc += w[p] * (y - mean[k]) * bn_invstd(var[k], d.eps[p]);
      } else {
        acc += w[p] * y;
      }
    }
    out[i] = acc;
  }
}

// Per channel: sum(g) and sum(g * y_p) over (N, Ho, Wo); y_p recomputed.
template <class T>
__global__ void mixed_grad_sums(Dev d, const T* g, const T* x, double* sg, double* sgy) {
  const int c = blockIdx.x, HWo = d.Ho * d.Wo;
  double u = 0, v[kMaxP];
  for (int p = 0; p < d.P; ++p) v[p] = 0;
  for (int j = threadIdx.x; j < d.N * HWo; j += blockDim.x) {
    const int n = j / HWo, oh = (j % HWo) / d.Wo, ow = j % d.Wo;
    const double gv = g[((size_t(n) * d.C + c) * d.Ho + oh) * d.Wo + ow];
    u += gv;
    for (int p = 0; p < d.P; ++p)
      if (d.codes[p] != kNone) v[p] += gv * double(branch_at(d, p, x, n, c, oh, ow));
  }
  u = block_sum(u);
  if (threadIdx.x == 0) sg[c] = u;
  for (int p = 0; p < d.P; ++p) {
    const double t = block_sum(v[p]);
    if (threadIdx.x == 0) sgy[p * d.C + c] = t;
  }
}

// One block per candidate, its threads over the channels: sum(g * yhat_p) per (p, c) in place of
// sum(g * y_p), and the weight's gradient (their sum over c) by a block reduction.
template <class T>
__global__ void mixed_grad_w(Dev d, const T* mean, const T* var, const double* sg, double* sgy, T* gw) {
  const int p = blockIdx.x;
  double total = 0;
  for (int c = threadIdx.x; c < d.C; c += blockDim.x) {
    const int k = p * d.C + c;
    double t = sgy[k];
    if (has_bn(d.codes[p])) t = grad_yhat_sum(t, sg[c], mean[k], var[k], d.eps[p]);
    sgy[k] = t;
    total += t;
  }
  total = block_sum(total);
  if (threadIdx.x == 0) gw[p] = d.codes[p] == kNone ? T(0) : T(total);
}

// The BN backward of candidate p at one element; the batch terms are zero for given statistics.
template <class T>
__device__ T bn_grad_at(const Dev& d, int p, int c, T gv, T y, const T* w, const T* mean, const T* var,
                        const double* gsums, double M) {
  const int k = p * d.C + c;
  const T is = bn_invstd(var[k], d.eps[p]);
  const T mg = d.fixed[p] ? T(0) : T(w[p] * (gsums[c] / M));
  const T mgy = d.fixed[p] ? T(0) : T(w[p] * (gsums[d.C + k] / M));
  return bn_backward(w[p] * gv, (y - mean[k]) * is, mg, mgy, is);
}

template <class T>
__global__ void mixed_grad_ext(Dev d, const T* g, const T* w, const T* mean, const T* var, const double* gsums,
                               const double* count) {
  const size_t total = size_t(d.N) * d.C * d.Ho * d.Wo;
  const double M = *count;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int c = (i / (size_t(d.Wo) * d.Ho)) % d.C;
    for (int p = 0; p < d.P; ++p) {
      T* ge = static_cast<T*>(d.gext[p]);
      if (d.codes[p] == kExt) ge[i] = w[p] * g[i];
      if (d.codes[p] == kExtBN)
        ge[i] = bn_grad_at(d, p, c, g[i], static_cast<const T*>(d.ext[p])[i], w, mean, var, gsums, M);
    }
  }
}

// Gradient w.r.t. x gathered from every output window that covers the input.
template <class T>
__global__ void mixed_grad_x(Dev d, const T* g, const T* x, const T* w, const T* mean, const T* var,
                             const double* gsums, const double* count, T* gx) {
  const size_t total = size_t(d.N) * d.C * d.H * d.W;
  const int s = d.stride;
  const double M = *count;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int iw = i % d.W, ih = (i / d.W) % d.H, c = (i / (size_t(d.W) * d.H)) % d.C;
    const int n = i / (size_t(d.W) * d.H * d.C);
    const T* gp = g + (size_t(n) * d.C + c) * d.Ho * d.Wo;
    const T* plane = x + (size_t(n) * d.C + c) * d.H * d.W;
    T acc = T(0);
    for (int p = 0; p < d.P; ++p) {
      const int code = d.codes[p];
      if (code == kIdentity) acc += w[p] * gp[ih * d.Wo + iw];
      if (code != kMaxPool && code != kAvgPool) continue;
      for (int oh = max(0, (ih - 1) / s - 1); oh <= min(d.Ho - 1, (ih + 1) / s); ++oh) {
        if (ih < oh * s - 1 || ih > oh * s + 1) continue;
        for (int ow = max(0, (iw - 1) / s - 1); ow <= min(d.Wo - 1, (iw + 1) / s); ++ow) {
          if (iw < ow * s - 1 || iw > ow * s + 1) continue;
          int arg = -1;
          const T y = code == kMaxPool ? max_pool3(plane, d.H, d.W, oh, ow, s, &arg)
                                       : avg_pool3(plane, d.H, d.W, oh, ow, s);
          if (code == kMaxPool && arg != ih * d.W + iw) continue;
          T dy = bn_grad_at(d, p, c, gp[oh * d.Wo + ow], y, w, mean, var, gsums, M);
          if (code == kAvgPool) dy /= T(pool3_count(d.H, d.W, oh, ow, s));
          acc += dy;
        }
      }
    }
    gx[i] = acc;
  }
}

int grid_for(size_t total) {
  const size_t b = (total + kThreads - 1) / kThreads;
  return int(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

// ---- separable block: y = pw(dw(prologue(x))) -------------------------------

template <class T>
__global__ void channel_stats(const T* x, int N, int C, int HW, T* mean, T* var) {
  const int c = blockIdx.x;
  double u = 0, v = 0;
  for (int j = threadIdx.x; j < N * HW; j += blockDim.x) {
    const double t = x[(size_t(j / HW) * C + c) * HW + j % HW];
    u += t;
    v += t * t;
  }
  u = block_sum(u);
  v = block_sum(v);
  if (threadIdx.x == 0) {
    const double M = double(N) * HW, m = u / M;
    mean[c] = T(m);
    var[c] = T(fmax(v / M - m * m, 0.0));
  }
}

struct SepDev {
  SepArgs a;
  int Ho, Wo;
};

template <class T>
__device__ void prologue_params(const SepDev& s, const T* mean, const T* var, int c, T* m, T* is) {
  *m = T(0);
  *is = T(1);
  if (s.a.prologue == kBnRelu) {
    *m = mean[c];
    *is = bn_invstd(var[c], s.a.eps);
  }
}

template <class T>
__global__ void sep_dw(SepDev s, const T* x, const T* wdw, const T* mean, const T* var, T* dwo) {
  const SepArgs& a = s.a;
  const size_t total = size_t(a.N) * a.C * s.Ho * s.Wo;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int ow = i % s.Wo, oh = (i / s.Wo) % s.Ho, nc = i / (size_t(s.Wo) * s.Ho), c = nc % a.C;
    T m, is;
    prologue_params(s, mean, var, c, &m, &is);
    dwo[i] = dw_conv_at(x + size_t(nc) * a.H * a.W, wdw + size_t(c) * a.K * a.K, a.H, a.W, a.K, a.stride, a.pad,
                        a.dil, oh, ow, a.prologue, m, is);
  }
}

template <class T>
__global__ void sep_pw(SepDev s, const T* dwo, const T* wpw, T* y) {
  const SepArgs& a = s.a;
  const int HWo = s.Ho * s.Wo;
  const size_t total = size_t(a.N) * a.Co * HWo;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int j = i % HWo, co = (i / HWo) % a.Co, n = i / (size_t(HWo) * a.Co);
    T acc = T(0);
    for (int ci = 0; ci < a.C; ++ci) acc += wpw[co * a.C + ci] * dwo[(size_t(n) * a.C + ci) * HWo + j];
    y[i] = acc;
  }
}

template <class T>
__global__ void sep_grad_wpw(SepDev s, const T* gy, const T* dwo, T* gwpw) {
  const SepArgs& a = s.a;
  const int co = blockIdx.x / a.C, ci = blockIdx.x % a.C, HWo = s.Ho * s.Wo;
  double acc = 0;
  for (int j = threadIdx.x; j < a.N * HWo; j += blockDim.x) {
    const int n = j / HWo, k = j % HWo;
    acc += double(gy[(size_t(n) * a.Co + co) * HWo + k]) * dwo[(size_t(n) * a.C + ci) * HWo + k];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) gwpw[blockIdx.x] = T(acc);
}

template <class T>
__global__ void sep_grad_dwo(SepDev s, const T* gy, const T* wpw, T* gdwo) {
  const SepArgs& a = s.a;
  const int HWo = s.Ho * s.Wo;
  const size_t total = size_t(a.N) * a.C * HWo;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int j = i % HWo, ci = (i / HWo) % a.C, n = i / (size_t(HWo) * a.C);
    T acc = T(0);
    for (int co = 0; co < a.Co; ++co) acc += wpw[co * a.C + ci] * gy[(size_t(n) * a.Co + co) * HWo + j];
    gdwo[i] = acc;
  }
}

template <class T>
__global__ void sep_grad_wdw(SepDev s, const T* x, const T* gdwo, const T* mean, const T* var, T* gwdw) {
  const SepArgs& a = s.a;
  const int KK = a.K * a.K, c = blockIdx.x / KK, tap = blockIdx.x % KK, kh = tap / a.K, kw = tap % a.K;
  const int HWo = s.Ho * s.Wo;
  T m, is;
  prologue_params(s, mean, var, c, &m, &is);
  double acc = 0;
  for (int j = threadIdx.x; j < a.N * HWo; j += blockDim.x) {
    const int n = j / HWo, oh = (j % HWo) / s.Wo, ow = j % s.Wo;
    const int ih = oh * a.stride - a.pad + kh * a.dil, iw = ow * a.stride - a.pad + kw * a.dil;
    if (ih < 0 || ih >= a.H || iw < 0 || iw >= a.W) continue;
    const T v = prologue(x[((size_t(n) * a.C + c) * a.H + ih) * a.W + iw], a.prologue, m, is);
    acc += double(gdwo[(size_t(n) * a.C + c) * HWo + j % HWo]) * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) gwdw[blockIdx.x] = T(acc);
}

// Gradient w.r.t. the prologue's output, gathered over the taps, then through the
// ReLU; for kBnRelu the result is the gradient w.r.t. the BN output (finished below).
template <class T>
__global__ void sep_grad_x(SepDev s, const T* x, const T* wdw, const T* gdwo, const T* mean, const T* var, T* gx) {
  const SepArgs& a = s.a;
  const size_t total = size_t(a.N) * a.C * a.H * a.W;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int iw = i % a.W, ih = (i / a.W) % a.H, nc = i / (size_t(a.W) * a.H), c = nc % a.C;
    T acc = T(0);
    for (int kh = 0; kh < a.K; ++kh) {
      const int th = ih + a.pad - kh * a.dil;
      if (th < 0 || th % a.stride) continue;
      const int oh = th / a.stride;
      if (oh >= s.Ho) continue;
      for (int kw = 0; kw < a.K; ++kw) {
        const int tw = iw + a.pad - kw * a.dil;
        if (tw < 0 || tw % a.stride) continue;
        const int ow = tw / a.stride;
        if (ow >= s.Wo) continue;
        acc += wdw[(size_t(c) * a.K + kh) * a.K + kw] * gdwo[(size_t(nc) * s.Ho + oh) * s.Wo + ow];
      }
    }
    T m, is;
    prologue_params(s, mean, var, c, &m, &is);
    gx[i] = prologue_grad(acc, x[i], a.prologue, m, is);
  }
}

template <class T>
__global__ void bn_grad_sums(const T* gz, const T* x, const T* mean, const T* var, double eps, int N, int C, int HW,
                             double* sums) {
  const int c = blockIdx.x;
  const T m = mean[c], is = bn_invstd(var[c], eps);
  double u = 0, v = 0;
  for (int j = threadIdx.x; j < N * HW; j += blockDim.x) {
    const size_t i = (size_t(j / HW) * C + c) * HW + j % HW;
    u += gz[i];
    v += double(gz[i]) * ((x[i] - m) * is);
  }
  u = block_sum(u);
  v = block_sum(v);
  if (threadIdx.x == 0) {
    sums[c] = u / (double(N) * HW);
    sums[C + c] = v / (double(N) * HW);
  }
}

template <class T>
__global__ void bn_grad_finish(const T* x, const T* mean, const T* var, double eps, const double* sums, int N, int C,
                               int HW, T* gx) {
  const size_t total = size_t(N) * C * HW;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int c = (i / HW) % C;
    const T is = bn_invstd(var[c], eps);
    gx[i] = bn_backward(gx[i], (x[i] - mean[c]) * is, T(sums[c]), T(sums[C + c]), is);
  }
}

template <class P>
P* scratch(size_t n, cudaStream_t st) {
  void* p = nullptr;
  check(cudaMallocAsync(&p, n * sizeof(P) + 1, st), "cudaMallocAsync");
  return static_cast<P*>(p);
}

}  // namespace

// Every entry point only enqueues kernels on the caller's stream: no synchronization, no
// host-to-device copies (the edge's tables travel as kernel parameters).
template <class T>
void mixed_stats(const MixedArgs& a, const T* x, double* sums, std::uintptr_t ctx) {
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(ctx);
  const Dev d = make_dev(a);
  mixed_stats_kernel<T><<<a.P * a.C, kThreads, 0, st>>>(d, x, sums);
  check(cudaGetLastError(), "mixed_stats");
}

template <class T>
void mixed_apply(const MixedArgs& a, const T* x, const T* w, const double* sums, T* mean, T* var, T* out,
                 std::uintptr_t ctx) {
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(ctx);
  const Dev d = make_dev(a);
  mixed_moments<T><<<(a.P * a.C + kThreads - 1) / kThreads, kThreads, 0, st>>>(d, sums, mean, var);
  mixed_out<T><<<grid_for(size_t(a.N) * a.C * d.Ho * d.Wo), kThreads, 0, st>>>(d, x, w, mean, var, out);
  check(cudaGetLastError(), "mixed_apply");
}

template <class T>
void mixed_grad_stats(const MixedArgs& a, const T* g, const T* x, const T* mean, const T* var, double* gsums, T* gw,
                      std::uintptr_t ctx) {
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(ctx);
  const Dev d = make_dev(a);
  mixed_grad_sums<T><<<a.C, kThreads, 0, st>>>(d, g, x, gsums, gsums + a.C);
  mixed_grad_w<T><<<a.P, kThreads, 0, st>>>(d, mean, var, gsums, gsums + a.C, gw);
  check(cudaGetLastError(), "mixed_grad_stats");
}

template <class T>
void mixed_grad_apply(const MixedArgs& a, const T* g, const T* x, const T* w, const T* mean, const T* var,
                      const double* gsums, const double* count, T* gx, T* const* gext, std::uintptr_t ctx) {
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(ctx);
  const Dev d = make_dev(a, reinterpret_cast<void* const*>(gext));
  mixed_grad_ext<T><<<grid_for(size_t(a.N) * a.C * d.Ho * d.Wo), kThreads, 0, st>>>(d, g, w, mean, var, gsums, count);
  mixed_grad_x<T><<<grid_for(size_t(a.N) * a.C * a.H * a.W), kThreads, 0, st>>>(d, g, x, w, mean, var, gsums, count,
                                                                                gx);
  check(cudaGetLastError(), "mixed_grad_apply");
}

template <class T>
void sep_forward(const SepArgs& a, const T* x, const T* wdw, const T* wpw, T* y, T* mean, T* var, std::uintptr_t ctx) {
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(ctx);
  const SepDev s{a, out_size(a.H, a.K, a.stride, a.pad, a.dil), out_size(a.W, a.K, a.stride, a.pad, a.dil)};
  if (a.prologue == kBnRelu) channel_stats<T><<<a.C, kThreads, 0, st>>>(x, a.N, a.C, a.H * a.W, mean, var);
  const size_t n_dw = size_t(a.N) * a.C * s.Ho * s.Wo;
  T* dwo = scratch<T>(n_dw, st);
  sep_dw<T><<<grid_for(n_dw), kThreads, 0, st>>>(s, x, wdw, mean, var, dwo);
  sep_pw<T><<<grid_for(size_t(a.N) * a.Co * s.Ho * s.Wo), kThreads, 0, st>>>(s, dwo, wpw, y);
  check(cudaGetLastError(), "sep_forward");
  check(cudaFreeAsync(dwo, st), "cudaFreeAsync");
}

template <class T>
void sep_backward(const SepArgs& a, const T* gy, const T* x, const T* wdw, const T* wpw, const T* mean, const T* var,
                  T* gx, T* gwdw, T* gwpw, std::uintptr_t ctx) {
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(ctx);
  const SepDev s{a, out_size(a.H, a.K, a.stride, a.pad, a.dil), out_size(a.W, a.K, a.stride, a.pad, a.dil)};
  const size_t n_dw = size_t(a.N) * a.C * s.Ho * s.Wo;
  T* dwo = scratch<T>(2 * n_dw, st);
  T* gdwo = dwo + n_dw;
  sep_dw<T><<<grid_for(n_dw), kThreads, 0, st>>>(s, x, wdw, mean, var, dwo);  // recomputed, not stored
  sep_grad_wpw<T><<<a.Co * a.C, kThreads, 0, st>>>(s, gy, dwo, gwpw);
  sep_grad_dwo<T><<<grid_for(n_dw), kThreads, 0, st>>>(s, gy, wpw, gdwo);
  sep_grad_wdw<T><<<a.C * a.K * a.K, kThreads, 0, st>>>(s, x, gdwo, mean, var, gwdw);
  const size_t n_x = size_t(a.N) * a.C * a.H * a.W;
  sep_grad_x<T><<<grid_for(n_x), kThreads, 0, st>>>(s, x, wdw, gdwo, mean, var, gx);
  if (a.prologue == kBnRelu) {
    double* sums = scratch<double>(2 * size_t(a.C), st);
    bn_grad_sums<T><<<a.C, kThreads, 0, st>>>(gx, x, mean, var, a.eps, a.N, a.C, a.H * a.W, sums);
    bn_grad_finish<T><<<grid_for(n_x), kThreads, 0, st>>>(x, mean, var, a.eps, sums, a.N, a.C, a.H * a.W, gx);
    check(cudaFreeAsync(sums, st), "cudaFreeAsync");
  }
  check(cudaGetLastError(), "sep_backward");
  check(cudaFreeAsync(dwo, st), "cudaFreeAsync");
}

ND_INSTANTIATE(float)
ND_INSTANTIATE(double)

}  // namespace nasdeploy
