// Per-element math of the fused DARTS mixed op, shared by the CPU (OpenMP) and
// CUDA paths: the one place where the formulas live. Templated on float/double
// (double for gradcheck). No torch headers.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define ND_HD __host__ __device__
#else
#define ND_HD
#endif

namespace nasdeploy {

// What a candidate of the mixed op is, as far as the kernel is concerned.
enum Branch : int {
  kNone = 0,      // zero: contributes nothing, its weight gets a zero gradient
  kMaxPool = 1,   // max_pool 3x3, pad 1, computed from x, then affine-free batch-stat BN
  kAvgPool = 2,   // avg_pool 3x3, pad 1, count_include_pad=False, then BN
  kIdentity = 3,  // skip_connect at stride 1
  kExtBN = 4,     // a tensor computed outside (conv branch before its last BN); BN done here
  kExt = 5,       // a finished branch output computed outside, summed as is
};

// What is applied to the input of a depthwise-separable block before its conv.
enum Prologue : int {
  kPlain = 0,
  kRelu = 1,    // ReLU(x): shared by every conv candidate, never stored
  kBnRelu = 2,  // ReLU(BN(x)) with batch statistics: the middle of SepConv
};

ND_HD inline int out_size(int in, int k, int stride, int pad, int dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

template <class T>
ND_HD inline T relu(T v) {
  return v > T(0) ? v : T(0);
}

// 1/sqrt(var + eps) in double, as torch's CPU batch norm accumulates in double.
template <class T>
ND_HD inline T bn_invstd(T var, double eps) {
  return T(1.0 / sqrt(double(var) + eps));
}

// The input transform of a separable block; mean/istd only used by kBnRelu.
template <class T>
ND_HD inline T prologue(T v, int mode, T mean, T istd) {
  if (mode == kPlain) return v;
  if (mode == kBnRelu) v = (v - mean) * istd;
  return relu(v);
}

// d prologue / d v, given the upstream gradient g (ReLU passes where its output > 0,
// like torch's threshold_backward). For kBnRelu this is the gradient w.r.t. the BN
// output; bn_backward finishes it once the channel sums are known.
template <class T>
ND_HD inline T prologue_grad(T g, T v, int mode, T mean, T istd) {
  if (mode == kPlain) return g;
  if (mode == kBnRelu) v = (v - mean) * istd;
  return v > T(0) ? g : T(0);
}

// Backward of affine-free training-mode BN, y = (x - mean) * istd:
// dx = istd * (dy - mean(dy) - y * mean(dy * y)), the means over (N, H, W).
template <class T>
ND_HD inline T bn_backward(T dy, T y, T mean_dy, T mean_dy_y, T istd) {
  return istd * (dy - mean_dy - y * mean_dy_y);
}

// Batch mean and biased variance of one channel from sum(y), sum(y^2) and the count
// (the count and sums may cover several processes: SyncBatchNorm).
template <class T>
ND_HD inline void batch_moments(double s1, double s2, double count, T* mean, T* var) {
  const double m = s1 / count, v = s2 / count - m * m;
  *mean = T(m);
  *var = T(v > 0.0 ? v : 0.0);
}

// sum(g * yhat) of a BN'd branch, yhat = (y - mean) * istd, from sum(g * y) and sum(g):
// both the gradient of its weight and (over the batch) the BN backward's mean(dy * yhat).
template <class T>
ND_HD inline double grad_yhat_sum(double sgy, double sg, T mean, T var, double eps) {
  return double(bn_invstd(var, eps)) * (sgy - double(mean) * sg);
}

// 3x3 max pool with padding 1 at (oh, ow); *arg gets the flat input index of the
// first maximum (torch's CPU tie rule: strictly greater, NaN wins).
template <class T>
ND_HD inline T max_pool3(const T* plane, int H, int W, int oh, int ow, int stride, int* arg) {
  const int h0 = oh * stride - 1, w0 = ow * stride - 1;
  T best = T(0);
  int best_i = -1;
  for (int ih = h0 < 0 ? 0 : h0; ih < h0 + 3 && ih < H; ++ih) {
    for (int iw = w0 < 0 ? 0 : w0; iw < w0 + 3 && iw < W; ++iw) {
      const T v = plane[ih * W + iw];
      if (best_i < 0 || v > best || v != v) {
        best = v;
        best_i = ih * W + iw;
      }
    }
  }
  *arg = best_i;
  return best;
}

// Number of in-bounds inputs of the 3x3, pad-1 window at (oh, ow).
ND_HD inline int pool3_count(int H, int W, int oh, int ow, int stride) {
  const int h0 = oh * stride - 1, w0 = ow * stride - 1;
  const int hs = h0 < 0 ? 0 : h0, he = h0 + 3 < H ? h0 + 3 : H;
  const int ws = w0 < 0 ? 0 : w0, we = w0 + 3 < W ? w0 + 3 : W;
  return (he - hs) * (we - ws);
}

// 3x3 average pool, padding 1, count_include_pad=False.
template <class T>
ND_HD inline T avg_pool3(const T* plane, int H, int W, int oh, int ow, int stride) {
  const int h0 = oh * stride - 1, w0 = ow * stride - 1;
  T sum = T(0);
  for (int ih = h0 < 0 ? 0 : h0; ih < h0 + 3 && ih < H; ++ih)
    for (int iw = w0 < 0 ? 0 : w0; iw < w0 + 3 && iw < W; ++iw) sum += plane[ih * W + iw];
  return sum / T(pool3_count(H, W, oh, ow, stride));
}

// One output of a depthwise KxK conv (stride, zero padding, dilation) over a
// prologue-transformed plane; the CPU path runs the same sum over a padded copy.
template <class T>
ND_HD inline T dw_conv_at(const T* plane, const T* w, int H, int W, int K, int stride, int pad, int dil,
                          int oh, int ow, int mode, T mean, T istd) {
  T acc = T(0);
  for (int kh = 0; kh < K; ++kh) {
    const int ih = oh * stride - pad + kh * dil;
    if (ih < 0 || ih >= H) continue;
    for (int kw = 0; kw < K; ++kw) {
      const int iw = ow * stride - pad + kw * dil;
      if (iw < 0 || iw >= W) continue;
      acc += w[kh * K + kw] * prologue(plane[ih * W + iw], mode, mean, istd);
    }
  }
  return acc;
}

}  // namespace nasdeploy
