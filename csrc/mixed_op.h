// Entry points of one backend (CPU or CUDA): raw pointers and sizes, no torch.
// `ctx` is the OpenMP thread count on the CPU and the cudaStream_t on CUDA.
// Every tensor is contiguous NCHW; the caller (nasdeploy/ops/mixed_op.py) checks that.
// Buffers of type double (sums, count) live where the tensors live (host or device).
#pragma once

#include <cstdint>

namespace nasdeploy {

struct MixedArgs {
  int N, C, H, W, stride, P;  // x is (N, C, H, W); P candidates
  const int* codes;           // Branch per candidate
  const int* fixed;           // per candidate: 1 = its BN uses the given mean/var (eval mode), 0 = batch stats
  const double* eps;          // BN eps per candidate
  const void* const* ext;     // per candidate: input tensor for kExt/kExtBN, else null
};

// A depthwise KxK conv on channels-last (NHWC) tensors: x (N, H, W, C), its output (N, Ho, Wo, C).
struct DwArgs {
  int N, C, H, W, Ho, Wo, K, stride, pad, dil;
};

struct SepArgs {
  int N, C, H, W, Co, K, stride, pad, dil, prologue;
  double eps;
};

// The forward is two passes so that the statistics can be all-reduced in between (SyncBatchNorm):
// sums (1 + 2 P C) = (count = N * Ho * Wo, then per candidate sum(y_p) (C), sum(y_p^2) (C)),
// zero for candidates without a batch-statistics BN.
template <class T>
void mixed_stats(const MixedArgs& a, const T* x, double* sums, std::uintptr_t ctx);

// out = sum_p w_p * BN_p(branch_p(x)); mean/var (P, C): written from sums for batch-stat BNs,
// read (the given statistics) where fixed[p], zero where no BN.
template <class T>
void mixed_apply(const MixedArgs& a, const T* x, const T* w, const double* sums, T* mean, T* var, T* out,
                 std::uintptr_t ctx);

// Backward, pass 1: gsums (C + P C) = (sum(g) per channel, sum(g * yhat_p) per (p, c)) over this
// process's batch, and gw = the weights' gradient (local by definition).
template <class T>
void mixed_grad_stats(const MixedArgs& a, const T* g, const T* x, const T* mean, const T* var, double* gsums, T* gw,
                      std::uintptr_t ctx);

// Backward, pass 2: gradients w.r.t. x and each kExt/kExtBN input (gext[p], null otherwise), from
// gsums and *count of the whole (possibly all-reduced) batch.
template <class T>
void mixed_grad_apply(const MixedArgs& a, const T* g, const T* x, const T* w, const T* mean, const T* var,
                      const double* gsums, const double* count, T* gx, T* const* gext, std::uintptr_t ctx);

// y = pw(dw(prologue(x))): depthwise KxK then pointwise (Co x C) conv, no bias.
// mean/var (C,): batch stats of x when prologue == kBnRelu, else unused (may be null).
template <class T>
void sep_forward(const SepArgs& a, const T* x, const T* wdw, const T* wpw, T* y, T* mean, T* var,
                 std::uintptr_t ctx);

template <class T>
void sep_backward(const SepArgs& a, const T* gy, const T* x, const T* wdw, const T* wpw, const T* mean,
                  const T* var, T* gx, T* gwdw, T* gwpw, std::uintptr_t ctx);

// CPU backend only. gw (C, K, K) = d loss / d weight of the depthwise conv, from x and the output
// gradient g, both NHWC: gw[c, kh, kw] = sum over (n, oh, ow) of g[n, oh, ow, c] * x[n, ih, iw, c]
// with ih = oh*stride - pad + kh*dil (likewise iw), out-of-range taps being zero padding.
// oneDNN's own depthwise backward-weights is many times slower for 5x5 and dilated kernels (docs/kernel.md).
template <class T>
void dw_grad_weight(const DwArgs& a, const T* x, const T* g, T* gw, std::uintptr_t ctx);

// The explicit instantiations each backend file ends with (inside namespace nasdeploy).
#define ND_INSTANTIATE(T)                                                                                         \
  template void mixed_stats<T>(const MixedArgs&, const T*, double*, std::uintptr_t);                            \
  template void mixed_apply<T>(const MixedArgs&, const T*, const T*, const double*, T*, T*, T*, std::uintptr_t); \
  template void mixed_grad_stats<T>(const MixedArgs&, const T*, const T*, const T*, const T*, double*, T*,      \
                                    std::uintptr_t);                                                            \
  template void mixed_grad_apply<T>(const MixedArgs&, const T*, const T*, const T*, const T*, const T*,         \
                                    const double*, const double*, T*, T* const*, std::uintptr_t);               \
  template void sep_forward<T>(const SepArgs&, const T*, const T*, const T*, T*, T*, T*, std::uintptr_t);       \
  template void sep_backward<T>(const SepArgs&, const T*, const T*, const T*, const T*, const T*, const T*, T*, \
                                T*, T*, std::uintptr_t);

}  // namespace nasdeploy
