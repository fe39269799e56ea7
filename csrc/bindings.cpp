// pybind11 bindings: data pointers (as integers) and sizes in, the GIL released
// while the kernel runs. Torch-free; shapes, dtypes, devices and contiguity are
// checked in nasdeploy/ops/mixed_op.py before any pointer gets here. Compiled once
// for the CPU module (_mixedop) and once with -DNASDEPLOY_CUDA for _mixedop_cuda.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
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
  std::vector<int> codes;
  std::vector<double> eps;
  std::vector<const void*> ext;
};

Mixed make_mixed(const std::vector<int>& shape, int stride, const std::vector<int>& codes,
                 const std::vector<double>& eps, const std::vector<Ptr>& ext) {
  Mixed m{{}, codes, eps, {}};
  for (Ptr p : ext) m.ext.push_back(reinterpret_cast<const void*>(p));
  m.args = MixedArgs{shape.at(0), shape.at(1), shape.at(2), shape.at(3), stride, int(codes.size()),
                     m.codes.data(), m.eps.data(), m.ext.data()};
  return m;
}

void mixed_forward(Ptr x, const std::vector<int>& shape, int stride, const std::vector<int>& codes,
                   const std::vector<double>& eps, const std::vector<Ptr>& ext, Ptr w, Ptr out, Ptr mean, Ptr var,
                   bool dbl, Ptr ctx) {
  const Mixed m = make_mixed(shape, stride, codes, eps, ext);
  if (dbl)
    nasdeploy::mixed_forward<double>(m.args, cp<double>(x), cp<double>(w), mp<double>(out), mp<double>(mean),
                                     mp<double>(var), ctx);
  else
    nasdeploy::mixed_forward<float>(m.args, cp<float>(x), cp<float>(w), mp<float>(out), mp<float>(mean),
                                    mp<float>(var), ctx);
}

void mixed_backward(Ptr gout, Ptr x, const std::vector<int>& shape, int stride, const std::vector<int>& codes,
                    const std::vector<double>& eps, const std::vector<Ptr>& ext, Ptr w, Ptr mean, Ptr var, Ptr gx,
                    Ptr gw, const std::vector<Ptr>& gext, bool dbl, Ptr ctx) {
  const Mixed m = make_mixed(shape, stride, codes, eps, ext);
  if (dbl) {
    std::vector<double*> ge;
    for (Ptr p : gext) ge.push_back(mp<double>(p));
    nasdeploy::mixed_backward<double>(m.args, cp<double>(gout), cp<double>(x), cp<double>(w), cp<double>(mean),
                                      cp<double>(var), mp<double>(gx), mp<double>(gw), ge.data(), ctx);
  } else {
    std::vector<float*> ge;
    for (Ptr p : gext) ge.push_back(mp<float>(p));
    nasdeploy::mixed_backward<float>(m.args, cp<float>(gout), cp<float>(x), cp<float>(w), cp<float>(mean),
                                     cp<float>(var), mp<float>(gx), mp<float>(gw), ge.data(), ctx);
  }
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
  m.def("mixed_forward", &mixed_forward, nogil);
  m.def("mixed_backward", &mixed_backward, nogil);
  m.def("sep_forward", &sep_forward, nogil);
  m.def("sep_backward", &sep_backward, nogil);
}
