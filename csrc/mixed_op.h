// Entry points of one backend (CPU or CUDA): raw pointers and sizes, no torch.
// `ctx` is the OpenMP thread count on the CPU and the cudaStream_t on CUDA.
// Every tensor is contiguous NCHW; the caller (nasdeploy/ops/mixed_op.py) checks that.
#pragma once

#include <cstdint>

namespace nasdeploy {

struct MixedArgs {
  int N, C, H, W, stride, P;  // x is (N, C, H, W); P candidates
  const int* codes;           // Branch per candidate
  const double* eps;          // BN eps per candidate
  const void* const* ext;     // per candidate: input tensor for kExt/kExtBN, else null
};

struct SepArgs {
  int N, C, H, W, Co, K, stride, pad, dil, prologue;
  double eps;
};

// out = sum_p w_p * branch_p(x); mean/var (P, C): the batch stats of every BN'd branch.
template <class T>
void mixed_forward(const MixedArgs& a, const T* x, const T* w, T* out, T* mean, T* var, std::uintptr_t ctx);

// Gradients w.r.t. x, w and each kExt/kExtBN input (gext[p], null otherwise).
template <class T>
void mixed_backward(const MixedArgs& a, const T* gout, const T* x, const T* w, const T* mean, const T* var, T* gx,
                    T* gw, T* const* gext, std::uintptr_t ctx);

// y = pw(dw(prologue(x))): depthwise KxK then pointwise (Co x C) conv, no bias.
// mean/var (C,): batch stats of x when prologue == kBnRelu, else unused (may be null).
template <class T>
void sep_forward(const SepArgs& a, const T* x, const T* wdw, const T* wpw, T* y, T* mean, T* var,
                 std::uintptr_t ctx);

template <class T>
void sep_backward(const SepArgs& a, const T* gy, const T* x, const T* wdw, const T* wpw, const T* mean,
                  const T* var, T* gx, T* gwdw, T* gwpw, std::uintptr_t ctx);

}  // namespace nasdeploy
