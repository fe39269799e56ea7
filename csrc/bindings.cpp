// pybind11 bindings: data pointers (as integers) and sizes in, the GIL released
// while the kernel runs. Torch-free; shapes, dtypes, devices and contiguity are
// checked in nasdeploy/ops/mixed_op.py before any pointer gets here. Compiled once
// for the CPU module (_mixedop) and once with -DNASDEPLOY_CUDA for _mixedop_cuda.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "mixed_op.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;
using nasdeploy::MixedArgs;
using nasdeploy::SepArgs;
using Ptr = std::uintptr_t;

namespace {

template <class T>
const T* cp(Ptr p) {
  return reinterpret_cast<const T*>(p);
}
template <class T>
T* mp(Ptr p) {
  return reinterpret_cast<T*>(p);
}

struct Mixed {
  MixedArgs args;
  std::vector<int> codes, fixed;
  std::vector<double> eps;
  std::vector<const void*> ext;
};

Mixed make_mixed(const std::vector<int>& shape, int stride, const std::vector<int>& codes,
                 const std::vector<int>& fixed, const std::vector<double>& eps, const std::vector<Ptr>& ext) {
  Mixed m{{}, codes, fixed, eps, {}};
  for (Ptr p : ext) m.ext.push_back(reinterpret_cast<const void*>(p));
  m.args = MixedArgs{shape.at(0), shape.at(1), shape.at(2), shape.at(3), stride, int(codes.size()),
                     m.codes.data(), m.fixed.data(), m.eps.data(), m.ext.data()};
  return m;
}

// The candidates of one edge: (N, C, H, W), stride, and per candidate code, fixed flag, eps, branch pointer.
using Edge = std::tuple<std::vector<int>, int, std::vector<int>, std::vector<int>, std::vector<double>,
                        std::vector<Ptr>>;

Mixed make_mixed(const Edge& e) {
  return make_mixed(std::get<0>(e), std::get<1>(e), std::get<2>(e), std::get<3>(e), std::get<4>(e), std::get<5>(e));
}

void mixed_stats(const Edge& e, Ptr x, Ptr sums, bool dbl, Ptr ctx) {
  const Mixed m = make_mixed(e);
  if (dbl)
    nasdeploy::mixed_stats<double>(m.args, cp<double>(x), mp<double>(sums), ctx);
  else
    nasdeploy::mixed_stats<float>(m.args, cp<float>(x), mp<double>(sums), ctx);
}

void mixed_apply(const Edge& e, Ptr x, Ptr w, Ptr sums, Ptr mean, Ptr var, Ptr out, bool dbl, Ptr ctx) {
  const Mixed m = make_mixed(e);
  if (dbl)
    nasdeploy::mixed_apply<double>(m.args, cp<double>(x), cp<double>(w), cp<double>(sums), mp<double>(mean),
                                   mp<double>(var), mp<double>(out), ctx);
  else
    nasdeploy::mixed_apply<float>(m.args, cp<float>(x), cp<float>(w), cp<double>(sums), mp<float>(mean),
                                  mp<float>(var), mp<float>(out), ctx);
}

void mixed_grad_stats(const Edge& e, Ptr g, Ptr x, Ptr mean, Ptr var, Ptr gsums, Ptr gw, bool dbl, Ptr ctx) {
  const Mixed m = make_mixed(e);
  if (dbl)
    nasdeploy::mixed_grad_stats<double>(m.args, cp<double>(g), cp<double>(x), cp<double>(mean), cp<double>(var),
                                        mp<double>(gsums), mp<double>(gw), ctx);
  else
    nasdeploy::mixed_grad_stats<float>(m.args, cp<float>(g), cp<float>(x), cp<float>(mean), cp<float>(var),
                                       mp<double>(gsums), mp<float>(gw), ctx);
}

template <class T>
void grad_apply(const Mixed& m, Ptr g, Ptr x, Ptr w, Ptr mean, Ptr var, Ptr gsums, Ptr count, Ptr gx,
                const std::vector<Ptr>& gext, Ptr ctx) {
  std::vector<T*> ge;
  for (Ptr p : gext) ge.push_back(mp<T>(p));
  nasdeploy::mixed_grad_apply<T>(m.args, cp<T>(g), cp<T>(x), cp<T>(w), cp<T>(mean), cp<T>(var), cp<double>(gsums),
                                 cp<double>(count), mp<T>(gx), ge.data(), ctx);
}

void mixed_grad_apply(const Edge& e, Ptr g, Ptr x, Ptr w, Ptr mean, Ptr var, Ptr gsums, Ptr count, Ptr gx,
                      const std::vector<Ptr>& gext, bool dbl, Ptr ctx) {
  const Mixed m = make_mixed(e);
  if (dbl)
    grad_apply<double>(m, g, x, w, mean, var, gsums, count, gx, gext, ctx);
  else
    grad_apply<float>(m, g, x, w, mean, var, gsums, count, gx, gext, ctx);
}

SepArgs make_sep(const std::vector<int>& s, int prologue, double eps) {
  // s = (N, C, H, W, Co, K, stride, pad, dil)
  return SepArgs{s.at(0), s.at(1), s.at(2), s.at(3), s.at(4), s.at(5), s.at(6), s.at(7), s.at(8), prologue, eps};
}

void sep_forward(Ptr x, Ptr wdw, Ptr wpw, const std::vector<int>& sizes, int prologue, double eps, Ptr y, Ptr mean,
                 Ptr var, bool dbl, Ptr ctx) {
  const SepArgs a = make_sep(sizes, prologue, eps);
  if (dbl)
    nasdeploy::sep_forward<double>(a, cp<double>(x), cp<double>(wdw), cp<double>(wpw), mp<double>(y),
                                   mp<double>(mean), mp<double>(var), ctx);
  else
    nasdeploy::sep_forward<float>(a, cp<float>(x), cp<float>(wdw), cp<float>(wpw), mp<float>(y), mp<float>(mean),
                                  mp<float>(var), ctx);
}

void sep_backward(Ptr gy, Ptr x, Ptr wdw, Ptr wpw, const std::vector<int>& sizes, int prologue, double eps, Ptr mean,
                  Ptr var, Ptr gx, Ptr gwdw, Ptr gwpw, bool dbl, Ptr ctx) {
  const SepArgs a = make_sep(sizes, prologue, eps);
  if (dbl)
    nasdeploy::sep_backward<double>(a, cp<double>(gy), cp<double>(x), cp<double>(wdw), cp<double>(wpw),
                                    cp<double>(mean), cp<double>(var), mp<double>(gx), mp<double>(gwdw),
                                    mp<double>(gwpw), ctx);
  else
    nasdeploy::sep_backward<float>(a, cp<float>(gy), cp<float>(x), cp<float>(wdw), cp<float>(wpw), cp<float>(mean),
                                   cp<float>(var), mp<float>(gx), mp<float>(gwdw), mp<float>(gwpw), ctx);
}

#ifndef NASDEPLOY_CUDA
// sizes = (N, C, H, W, Ho, Wo, K, stride, pad, dil); x and g channels-last (CPU backend only)
void dw_grad_weight(Ptr x, Ptr g, const std::vector<int>& s, Ptr gw, bool dbl, Ptr ctx) {
  const nasdeploy::DwArgs a{s.at(0), s.at(1), s.at(2), s.at(3), s.at(4), s.at(5), s.at(6), s.at(7), s.at(8), s.at(9)};
  if (dbl)
    nasdeploy::dw_grad_weight<double>(a, cp<double>(x), cp<double>(g), mp<double>(gw), ctx);
  else
    nasdeploy::dw_grad_weight<float>(a, cp<float>(x), cp<float>(g), mp<float>(gw), ctx);
}
#endif

}  // namespace

#ifdef NASDEPLOY_CUDA
PYBIND11_MODULE(_mixedop_cuda, m) {
  m.attr("backend") = "cuda";
  m.attr("openmp") = false;
#else
PYBIND11_MODULE(_mixedop, m) {
  m.attr("backend") = "cpu";
#ifdef _OPENMP
  m.attr("openmp") = true;
  m.def("max_threads", [] { return omp_get_max_threads(); });
#else
  m.attr("openmp") = false;
  m.def("max_threads", [] { return 1; });
#endif
#endif
  m.doc() = "Fused DARTS mixed-op kernels (pointers and sizes in; see nasdeploy/ops/mixed_op.py).";
  py::call_guard<py::gil_scoped_release> nogil;
  m.def("mixed_stats", &mixed_stats, nogil);
  m.def("mixed_apply", &mixed_apply, nogil);
  m.def("mixed_grad_stats", &mixed_grad_stats, nogil);
  m.def("mixed_grad_apply", &mixed_grad_apply, nogil);
  m.def("sep_forward", &sep_forward, nogil);
  m.def("sep_backward", &sep_backward, nogil);
#ifndef NASDEPLOY_CUDA
  m.def("dw_grad_weight", &dw_grad_weight, nogil);
#endif
}
