// Parity harness of the native kernel library (core/kernels/cpu_ops.cc), independent of
// MindSpore: every exported ops.Custom AOT entry point is called, through the same calling
// convention MindSpore uses, on random inputs of the shapes MobileNetV3-Small gives it (small
// batches, odd planes, 1x1 planes, channel and pixel counts that are not multiples of a vector)
// and compared with a plain double-precision reference written here. One line per case; the exit
// status is non-zero when any case mismatches. tests/core/nn/test_kernel_variants.py builds it with the
// kernel source for every ISA variant the host can run (AVX-512, AVX2, baseline x86-64) and for
// aarch64 (NEON) under qemu-user.
//
// Build (the kernel linked in; its flags decide which code path is tested):
//   g++ -march=x86-64-v3 -DMNV3_NO_MULTI_ISA -O3 -fopenmp -std=c++17
//       tests/kernels/parity.cc core/kernels/cpu_ops.cc -o parity -ldl
// or build the harness alone and load a built library with --lib PATH.
//
// Usage: parity [--small] [--rtol X] [--filter SUB[,SUB...]] [--lib PATH] [--inject] [--seed N]
//               [--front-guard] [--list-entries] [--guard-selftest]
//   --small     a smaller set of shapes (still every entry point and every edge shape kind),
//               for emulation
//   --rtol      relative tolerance (default 1e-4): an element passes when
//               |got - ref| <= rtol * (|ref| + mag), mag = the sum of the magnitudes of the
//               terms the reference added up (its rounding scale) or, for element-wise outputs,
//               the output's RMS
//   --inject    self-test: corrupt one element (the last) of every output after the kernel ran,
//               by 100x the tolerance; every case must then FAIL
//   --filter    run only cases whose name contains one of the substrings
//   --front-guard  buffers start at their guard page instead (page-aligned), to catch accesses
//               before the start
//   --guard-selftest  read one float past a buffer (before it, with --front-guard): must crash
// Every buffer handed to a kernel ends at an inaccessible guard page (or, --front-guard, starts
// right after one), so a read or write past the end (or before the start) of an input or output
// crashes into a SIGSEGV handler that names the case.
// Exit status: 0 all passed, 1 a mismatch (or an entry point never called), 2 usage or
// library error, 4 a kernel touched memory outside a buffer.
#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

using Entry = int (*)(int, void **, int *, int64_t **, const char **, void *, void *);

#define KERNEL_ENTRIES(X)                                                                        \
  X(DepthwiseFwd) X(DepthwiseBwdInput) X(DepthwiseBwdWeight) X(DepthwiseFwdBias)                \
  X(DepthwiseFwdBiasRelu) X(DepthwiseFwdBiasHswish) X(BiasAct) X(BiasActRelu) X(BiasActHswish)  \
  X(BiasAddResidual) X(SqueezeExcite) X(Pointwise) X(PointwiseRelu) X(PointwiseHswish)           \
  X(PointwiseResidual) X(PointwiseFwd) X(PointwiseBwdInput) X(PointwiseBwdWeight) X(BnActFwd)   \
  X(BnActFwdRelu) X(BnActFwdHswish) X(BnActBwd) X(BnActBwdRelu) X(BnActBwdHswish) X(MeanHW)      \
  X(MeanHWBwd) X(ScaleChannels) X(ScaleChannelsBwd) X(NormalizeNhwc) X(Linear) X(LinearHswish)

// Weak: the harness also builds without the kernel linked in (then --lib is needed).
#define DECLARE_ENTRY(name) \
  extern "C" int name(int, void **, int *, int64_t **, const char **, void *, void *) __attribute__((weak));
KERNEL_ENTRIES(DECLARE_ENTRY)
#undef DECLARE_ENTRY

namespace {

enum Act { kNone = 0, kRelu = 1, kHswish = 2 };
const char *const kActSuffix[] = {"", "Relu", "Hswish"};

// ---- options and bookkeeping ---------------------------------------------------------------
struct Options {
  bool small = false, inject = false, front_guard = false;
  double rtol = 1e-4;
  uint64_t seed = 12345;
  std::vector<std::string> filters;
  std::string lib;
} opt;

std::map<std::string, Entry> entries;
std::set<std::string> called;
int n_cases = 0, n_failed = 0;
volatile const char *current_case = "(none)";

void on_segv(int sig) {
  const char *a = "\nCRASH  ";
  const char *b = sig == SIGSEGV ? ": SIGSEGV" : ": SIGBUS";
  const char *c =
      " - the kernel read or wrote outside a buffer (past its end, or before its start with --front-guard)\n";
  ssize_t r = write(2, a, strlen(a));
  r = write(2, const_cast<const char *>(current_case), strlen(const_cast<const char *>(current_case)));
  r = write(2, b, strlen(b));
  r = write(2, c, strlen(c));
  (void)r;
  _exit(4);
}

// ---- buffers between guard pages ------------------------------------------------------------
// [guard page][body pages][guard page]; the data ends at the second guard (its start then only
// 4-byte aligned in general) or, with --front-guard, starts right after the first.
class Buf {
 public:
  explicit Buf(size_t bytes) : bytes_(bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t body = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    len_ = body + 2 * page;
    void *m = mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      perror("mmap");
      std::exit(2);
    }
    base_ = static_cast<char *>(m);
    if (mprotect(base_, page, PROT_NONE) != 0 || mprotect(base_ + page + body, page, PROT_NONE) != 0) {
      perror("mprotect");
      std::exit(2);
    }
    data_ = opt.front_guard ? base_ + page : base_ + page + body - bytes;
  }
  Buf(const Buf &) = delete;
  Buf &operator=(const Buf &) = delete;
  Buf(Buf &&o) noexcept : base_(o.base_), data_(o.data_), len_(o.len_), bytes_(o.bytes_) { o.base_ = nullptr; }
  ~Buf() {
    if (base_) munmap(base_, len_);
  }
  void *data() const { return data_; }

 private:
  char *base_ = nullptr, *data_ = nullptr;
  size_t len_ = 0, bytes_ = 0;
};

int64_t numel(const std::vector<int64_t> &s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// A tensor argument: shape, dtype and guarded storage. Outputs start as NaN (an element the
// kernel does not write fails the comparison).
struct T {
  std::vector<int64_t> shape;
  const char *dtype;
  Buf buf;
  T(std::vector<int64_t> s, const char *dt = "float32")
      : shape(std::move(s)), dtype(dt), buf(static_cast<size_t>(numel(shape)) * (std::strcmp(dt, "uint8") ? 4 : 1)) {
    if (std::strcmp(dtype, "uint8") != 0) std::fill_n(f(), size(), std::nanf(""));
  }
  float *f() const { return static_cast<float *>(buf.data()); }
  uint8_t *u8() const { return static_cast<uint8_t *>(buf.data()); }
  int64_t size() const { return numel(shape); }
  float &operator[](int64_t i) const { return f()[i]; }
};

// ---- random inputs -------------------------------------------------------------------------
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * ((next() >> 11) * (1.0 / 9007199254740992.0)); }
  void fill(const T &t, double lo = -1.0, double hi = 1.0) {
    for (int64_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(uniform(lo, hi));
  }
};

// ---- calling an entry point the way MindSpore's AOT custom op does ---------------------------
int invoke(const std::string &name, const std::vector<const T *> &args) {
  auto it = entries.find(name);
  if (it == entries.end() || !it->second) {
    std::printf("FAIL  %s: entry point not found in the kernel library\n", name.c_str());
    return -1;
  }
  called.insert(name);
  std::vector<void *> params;
  std::vector<int> ndims;
  std::vector<std::vector<int64_t>> shape_copies;
  std::vector<int64_t *> shapes;
  std::vector<const char *> dtypes;
  for (const T *a : args) {
    params.push_back(a->buf.data());
    ndims.push_back(static_cast<int>(a->shape.size()));
    shape_copies.push_back(a->shape);
    dtypes.push_back(a->dtype);
  }
  for (auto &s : shape_copies) shapes.push_back(s.data());
  return it->second(static_cast<int>(args.size()), params.data(), ndims.data(), shapes.data(), dtypes.data(),
                    nullptr, nullptr);
}

// ---- comparison ----------------------------------------------------------------------------
// One output against its reference; mag (per element) is the rounding scale of the reference's
// sum, empty for "the output's RMS". exact: bit equality (a kernel that promises it).
struct Check {
  std::string label;
  std::vector<float> out;  // the kernel's output, copied when the case adds the check
  std::vector<double> ref, mag;
  bool exact = false;
};

struct Case {
  std::string name;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  std::vector<Check> checks;
  bool failed = false;
  std::string why;
  void add(std::string label, const T &out, std::vector<double> ref, std::vector<double> mag = {},
           bool exact = false) {
    checks.push_back({std::move(label), std::vector<float>(out.f(), out.f() + out.size()), std::move(ref),
                      std::move(mag), exact});
  }
};

bool selected(const std::string &name) {
  if (opt.filters.empty()) return true;
  for (const auto &f : opt.filters)
    if (name.find(f) != std::string::npos) return true;
  return false;
}

// Runs the kernel call `run` (returns the entry's status) and compares; prints one line.
void run_case(const std::string &name, const std::function<int(Case &)> &run) {
  if (!selected(name)) return;
  ++n_cases;
  Case c;
  c.name = name;
  current_case = c.name.c_str();
  const int rc = run(c);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c.t0).count();
  if (rc != 0) {
    ++n_failed;
    std::printf("FAIL  %-58s entry point returned %d\n", name.c_str(), rc);
    std::fflush(stdout);
    return;
  }
  double worst = 0.0;
  std::string worst_label, detail;
  bool bad = false;
  for (Check &k : c.checks) {
    const int64_t n = static_cast<int64_t>(k.out.size());
    if (static_cast<int64_t>(k.ref.size()) != n) {
      std::printf("FAIL  %s: harness bug, %s has %lld elements, reference %zu\n", name.c_str(), k.label.c_str(),
                  static_cast<long long>(n), k.ref.size());
      bad = true;
      continue;
    }
    double rms = 0.0;
    for (double r : k.ref) rms += r * r;
    rms = n ? std::sqrt(rms / n) : 0.0;
    auto tol_at = [&](int64_t i) {
      if (k.exact) return 0.0;
      return opt.rtol * (std::fabs(k.ref[i]) + (k.mag.empty() ? rms : k.mag[i]));
    };
    if (opt.inject && n > 0) {  // self-test: one element off by 100x its tolerance
      const int64_t i = n - 1;
      k.out[i] = static_cast<float>(k.ref[i] + 100.0 * tol_at(i) + 1e-3 * std::fabs(k.ref[i]) + 1e-6);
    }
    int64_t nbad = 0, first = -1;
    for (int64_t i = 0; i < n; ++i) {
      const double got = k.out[i], err = std::fabs(got - k.ref[i]), tol = tol_at(i);
      const bool ok = std::isfinite(got) &&
                      (k.exact ? got == static_cast<double>(static_cast<float>(k.ref[i])) : err <= tol);
      const double ratio = tol > 0 ? err / tol : (err == 0 ? 0.0 : INFINITY);
      if (!ok) {
        if (first < 0) first = i;
        ++nbad;
      }
      if (!(ratio <= worst)) {
        worst = ratio;
        worst_label = k.label;
      }
    }
    if (nbad) {
      char buf[256];
      std::snprintf(buf, sizeof buf, " %s: %lld of %lld elements off, first [%lld] got %.9g want %.9g (tol %.3g);",
                    k.label.c_str(), static_cast<long long>(nbad), static_cast<long long>(n),
                    static_cast<long long>(first), static_cast<double>(k.out[first]), k.ref[first], tol_at(first));
      detail += buf;
      bad = true;
    }
  }
  if (bad) {
    ++n_failed;
    std::printf("FAIL  %-58s%s\n", name.c_str(), detail.c_str());
  } else {
    std::printf("PASS  %-58s err/tol %.3g (%s)  %.1f ms\n", name.c_str(), worst, worst_label.c_str(), ms);
  }
  std::fflush(stdout);
}

// Reject case: the entry point must return non-zero (and must not touch the guarded buffers).
void reject_case(const std::string &name, const std::function<int()> &run) {
  if (!selected(name)) return;
  ++n_cases;
  current_case = name.c_str();
  const int rc = run();
  if (rc == 0) {
    ++n_failed;
    std::printf("FAIL  %-58s accepted inputs it must reject\n", name.c_str());
  } else {
    std::printf("PASS  %-58s rejected (status %d)\n", name.c_str(), rc);
  }
  std::fflush(stdout);
}

// ---- reference helpers (double) -------------------------------------------------------------
double act_d(double v, int act) {
  if (act == kRelu) return v > 0 ? v : 0.0;
  if (act == kHswish) return v * std::min(std::max(v + 3.0, 0.0), 6.0) / 6.0;
  return v;
}
// Derivative (as the kernel's BnActBwd: hswish' = (relu6(u + 3) + u [-3 < u < 3]) / 6).
double act_grad_d(double u, int act) {
  if (act == kRelu) return u > 0 ? 1.0 : 0.0;
  if (act == kHswish) return (std::min(std::max(u + 3.0, 0.0), 6.0) + (u > -3 && u < 3 ? u : 0.0)) / 6.0;
  return 1.0;
}
// Rounding scale after the activation: its slope is at most 1 (relu) or 1.5 + |u|/3 (hswish).
double act_mag(double u, double mag, int act) { return act == kHswish ? mag * (1.5 + std::fabs(u) / 3.0) : mag; }

std::string dims(const std::vector<int64_t> &s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "x" : "") + std::to_string(s[i]);
  return r;
}

// ---- kxk convolutions (depthwise and the grouped/dense stem) -------------------------------
struct Conv {
  int64_t n, c, h, w, co, cpg, k, s;
  int64_t p() const { return (k - 1) / 2; }
  int64_t oh() const { return (h + 2 * p() - k) / s + 1; }
  int64_t ow() const { return (w + 2 * p() - k) / s + 1; }
  int64_t groups() const { return c / cpg; }
  int64_t opg() const { return co / groups(); }
  std::vector<int64_t> xs() const { return {n, c, h, w}; }
  std::vector<int64_t> ws() const { return {co, cpg, k, k}; }
  std::vector<int64_t> ys() const { return {n, co, oh(), ow()}; }
  std::string str() const {
    char b[128];
    std::snprintf(b, sizeof b, "n%lld c%lld->%lld %lldx%lld k%lld s%lld", (long long)n, (long long)c, (long long)co,
                  (long long)h, (long long)w, (long long)k, (long long)s);
    return b;
  }
};

// Visits every (output element, input element, weight element) triple of the convolution.
template <class F>
void conv_taps(const Conv &g, F f) {
  const int64_t OH = g.oh(), OW = g.ow(), opg = g.opg();
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t o = 0; o < g.co; ++o) {
      const int64_t grp = o / opg;
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          const int64_t yi = ((n * g.co + o) * OH + oy) * OW + ox;
          for (int64_t cl = 0; cl < g.cpg; ++cl)
            for (int64_t i = 0; i < g.k; ++i) {
              const int64_t iy = oy * g.s - g.p() + i;
              if (iy < 0 || iy >= g.h) continue;
              for (int64_t j = 0; j < g.k; ++j) {
                const int64_t ix = ox * g.s - g.p() + j;
                if (ix < 0 || ix >= g.w) continue;
                f(yi, ((n * g.c + grp * g.cpg + cl) * g.h + iy) * g.w + ix, ((o * g.cpg + cl) * g.k + i) * g.k + j);
              }
            }
        }
    }
}

void conv_cases(const Conv &g, Rng &rng) {
  const std::string tag = g.str();
  const bool dw = g.cpg == 1 && g.opg() == 1;
  const char *kind = dw ? "" : (g.groups() == 1 ? " dense" : " grouped");
  // forward, with and without bias + activation
  for (int variant = -1; variant < 3; ++variant) {
    const std::string entry = variant < 0 ? "DepthwiseFwd" : std::string("DepthwiseFwdBias") + kActSuffix[variant];
    run_case(entry + " " + tag + kind, [&](Case &c) {
      T x(g.xs()), w(g.ws()), b({g.co}), y(g.ys());
      rng.fill(x);
      rng.fill(w);
      rng.fill(b);
      const int rc = variant < 0 ? invoke(entry, {&x, &w, &y}) : invoke(entry, {&x, &w, &b, &y});
      std::vector<double> ref(y.size(), 0.0), mag(y.size(), 0.0);
      conv_taps(g, [&](int64_t yi, int64_t xi, int64_t wi) {
        const double t = static_cast<double>(x[xi]) * w[wi];
        ref[yi] += t;
        mag[yi] += std::fabs(t);
      });
      if (variant >= 0) {
        const int64_t plane = g.oh() * g.ow();
        for (int64_t i = 0; i < y.size(); ++i) {
          const double bb = b[(i / plane) % g.co], u = ref[i] + bb;
          mag[i] = act_mag(u, mag[i] + std::fabs(bb), variant);
          ref[i] = act_d(u, variant);
        }
      }
      c.add("y", y, std::move(ref), std::move(mag));
      return rc;
    });
  }
  run_case("DepthwiseBwdInput " + tag + kind, [&](Case &c) {
    T dy(g.ys()), w(g.ws()), x(g.xs()), dx(g.xs());
    rng.fill(dy);
    rng.fill(w);
    rng.fill(x);  // shape only
    const int rc = invoke("DepthwiseBwdInput", {&dy, &w, &x, &dx});
    std::vector<double> ref(dx.size(), 0.0), mag(dx.size(), 0.0);
    conv_taps(g, [&](int64_t yi, int64_t xi, int64_t wi) {
      const double t = static_cast<double>(dy[yi]) * w[wi];
      ref[xi] += t;
      mag[xi] += std::fabs(t);
    });
    c.add("dx", dx, std::move(ref), std::move(mag));
    return rc;
  });
  run_case("DepthwiseBwdWeight " + tag + kind, [&](Case &c) {
    T dy(g.ys()), x(g.xs()), w(g.ws()), dw_(g.ws());
    rng.fill(dy);
    rng.fill(x);
    rng.fill(w);  // shape only
    const int rc = invoke("DepthwiseBwdWeight", {&dy, &x, &w, &dw_});
    std::vector<double> ref(dw_.size(), 0.0), mag(dw_.size(), 0.0);
    conv_taps(g, [&](int64_t yi, int64_t xi, int64_t wi) {
      const double t = static_cast<double>(dy[yi]) * x[xi];
      ref[wi] += t;
      mag[wi] += std::fabs(t);
    });
    c.add("dw", dw_, std::move(ref), std::move(mag));
    return rc;
  });
}

// ---- 1x1 convolutions (GEMMs): inference and training entry points ------------------------
struct Pw {
  int64_t n, k, m, h, w;
  int64_t hw() const { return h * w; }
  std::string str() const {
    char b[128];
    std::snprintf(b, sizeof b, "n%lld %lld->%lld %lldx%lld", (long long)n, (long long)k, (long long)m, (long long)h,
                  (long long)w);
    return b;
  }
};

// ref[n][m][p] = sum_k w[m][k] x[n][k][p] (and its magnitude).
void pw_ref(const Pw &g, const T &x, const T &w, std::vector<double> &ref, std::vector<double> &mag) {
  const int64_t hw = g.hw();
  ref.assign(g.n * g.m * hw, 0.0);
  mag.assign(g.n * g.m * hw, 0.0);
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t m = 0; m < g.m; ++m)
      for (int64_t kk = 0; kk < g.k; ++kk) {
        const double wv = w[m * g.k + kk];
        const float *xr = x.f() + (n * g.k + kk) * hw;
        double *r = ref.data() + (n * g.m + m) * hw, *a = mag.data() + (n * g.m + m) * hw;
        for (int64_t p = 0; p < hw; ++p) {
          const double t = wv * xr[p];
          r[p] += t;
          a[p] += std::fabs(t);
        }
      }
}

void pw_cases(const Pw &g, Rng &rng) {
  const std::string tag = g.str();
  const std::vector<int64_t> xs{g.n, g.k, g.h, g.w}, ws{g.m, g.k, 1, 1}, ys{g.n, g.m, g.h, g.w};
  const int64_t hw = g.hw();
  // inference: act(W x + b), and W x + b + r
  for (int variant = 0; variant < 4; ++variant) {
    const bool residual = variant == 3;
    const int act = residual ? kNone : variant;
    const std::string entry = residual ? "PointwiseResidual" : std::string("Pointwise") + kActSuffix[act];
    run_case(entry + " " + tag, [&](Case &c) {
      T x(xs), w(ws), b({g.m}), r(ys), y(ys);
      rng.fill(x);
      rng.fill(w);
      rng.fill(b);
      rng.fill(r);
      const int rc = residual ? invoke(entry, {&x, &w, &b, &r, &y}) : invoke(entry, {&x, &w, &b, &y});
      std::vector<double> ref, mag;
      pw_ref(g, x, w, ref, mag);
      for (int64_t i = 0; i < y.size(); ++i) {
        const double bb = b[(i / hw) % g.m], u = ref[i] + bb;
        mag[i] = act_mag(u, mag[i] + std::fabs(bb), act) + (residual ? std::fabs(r[i]) : 0.0);
        ref[i] = act_d(u, act) + (residual ? r[i] : 0.0);
      }
      c.add("y", y, std::move(ref), std::move(mag));
      return rc;
    });
  }
  run_case("PointwiseFwd " + tag, [&](Case &c) {
    T x(xs), w(ws), y(ys);
    rng.fill(x);
    rng.fill(w);
    const int rc = invoke("PointwiseFwd", {&x, &w, &y});
    std::vector<double> ref, mag;
    pw_ref(g, x, w, ref, mag);
    c.add("y", y, std::move(ref), std::move(mag));
    return rc;
  });
  run_case("PointwiseBwdInput " + tag, [&](Case &c) {
    T dy(ys), w(ws), x(xs), dx(xs);
    rng.fill(dy);
    rng.fill(w);
    rng.fill(x);  // shape only
    const int rc = invoke("PointwiseBwdInput", {&dy, &w, &x, &dx});
    std::vector<double> ref(dx.size(), 0.0), mag(dx.size(), 0.0);
    for (int64_t n = 0; n < g.n; ++n)
      for (int64_t kk = 0; kk < g.k; ++kk)
        for (int64_t m = 0; m < g.m; ++m) {
          const double wv = w[m * g.k + kk];
          const float *d = dy.f() + (n * g.m + m) * hw;
          for (int64_t p = 0; p < hw; ++p) {
            const double t = wv * d[p];
            ref[(n * g.k + kk) * hw + p] += t;
            mag[(n * g.k + kk) * hw + p] += std::fabs(t);
          }
        }
    c.add("dx", dx, std::move(ref), std::move(mag));
    return rc;
  });
  run_case("PointwiseBwdWeight " + tag, [&](Case &c) {
    T dy(ys), x(xs), w(ws), dw(ws);
    rng.fill(dy);
    rng.fill(x);
    rng.fill(w);  // shape only
    const int rc = invoke("PointwiseBwdWeight", {&dy, &x, &w, &dw});
    std::vector<double> ref(dw.size(), 0.0), mag(dw.size(), 0.0);
    for (int64_t n = 0; n < g.n; ++n)
      for (int64_t m = 0; m < g.m; ++m)
        for (int64_t kk = 0; kk < g.k; ++kk) {
          const float *d = dy.f() + (n * g.m + m) * hw, *xr = x.f() + (n * g.k + kk) * hw;
          double s = 0.0, a = 0.0;
          for (int64_t p = 0; p < hw; ++p) {
            const double t = static_cast<double>(d[p]) * xr[p];
            s += t;
            a += std::fabs(t);
          }
          ref[m * g.k + kk] += s;
          mag[m * g.k + kk] += a;
        }
    c.add("dw", dw, std::move(ref), std::move(mag));
    return rc;
  });
}

// ---- the classifier: Linear{,Hswish}(x[N,K], w[M,K], b[M]) ----------------------------------
void linear_cases(int64_t n, int64_t k, int64_t m, Rng &rng) {
  for (int act : {kNone, kHswish}) {
    const std::string entry = std::string("Linear") + kActSuffix[act];
    char tag[96];
    std::snprintf(tag, sizeof tag, " n%lld %lld->%lld", (long long)n, (long long)k, (long long)m);
    run_case(entry + tag, [&](Case &c) {
      T x({n, k}), w({m, k}), b({m}), y({n, m});
      rng.fill(x);
      rng.fill(w);
      rng.fill(b);
      const int rc = invoke(entry, {&x, &w, &b, &y});
      std::vector<double> ref(n * m), mag(n * m);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t o = 0; o < m; ++o) {
          double s = b[o], a = std::fabs(b[o]);
          for (int64_t j = 0; j < k; ++j) {
            const double t = static_cast<double>(x[i * k + j]) * w[o * k + j];
            s += t;
            a += std::fabs(t);
          }
          ref[i * m + o] = act_d(s, act);
          mag[i * m + o] = act_mag(s, a, act);
        }
      c.add("y", y, std::move(ref), std::move(mag));
      return rc;
    });
  }
}

// ---- squeeze-excite (inference, one kernel) --------------------------------------------------
void se_case(int64_t n, int64_t c, int64_t sq, int64_t h, int64_t w, Rng &rng) {
  char tag[96];
  std::snprintf(tag, sizeof tag, " n%lld c%lld sq%lld %lldx%lld", (long long)n, (long long)c, (long long)sq,
                (long long)h, (long long)w);
  run_case(std::string("SqueezeExcite") + tag, [&](Case &cs) {
    const int64_t hw = h * w;
    T x({n, c, h, w}), w1({sq, c, 1, 1}), b1({sq}), w2({c, sq, 1, 1}), b2({c}), y({n, c, h, w});
    rng.fill(x);
    rng.fill(w1, -0.5, 0.5);
    rng.fill(b1, -0.5, 0.5);
    rng.fill(w2, -0.5, 0.5);
    rng.fill(b2, -2.0, 2.0);
    const int rc = invoke("SqueezeExcite", {&x, &w1, &b1, &w2, &b2, &y});
    std::vector<double> ref(y.size()), mag(y.size());
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> mean(c), hidden(sq);
      for (int64_t cc = 0; cc < c; ++cc) {
        double s = 0.0;
        for (int64_t p = 0; p < hw; ++p) s += x[(i * c + cc) * hw + p];
        mean[cc] = s / hw;
      }
      for (int64_t j = 0; j < sq; ++j) {
        double s = b1[j];
        for (int64_t cc = 0; cc < c; ++cc) s += w1[j * c + cc] * mean[cc];
        hidden[j] = std::max(s, 0.0);
      }
      for (int64_t cc = 0; cc < c; ++cc) {
        double v = b2[cc];
        for (int64_t j = 0; j < sq; ++j) v += w2[cc * sq + j] * hidden[j];
        const double gate = std::min(std::max(v + 3.0, 0.0), 6.0) / 6.0;
        for (int64_t p = 0; p < hw; ++p) {
          const int64_t e = (i * c + cc) * hw + p;
          ref[e] = x[e] * gate;
          mag[e] = std::fabs(x[e]);  // the gate is in [0, 1]: its rounding scaled by |x|
        }
      }
    }
    cs.add("y", y, std::move(ref), std::move(mag));
    return rc;
  });
}

// ---- element-wise inference ops: BiasAct{,Relu,Hswish}, BiasAddResidual -------------------
void bias_act_cases(const std::vector<int64_t> &s, Rng &rng) {
  const int64_t hw = s[2] * s[3];
  for (int variant = 0; variant < 4; ++variant) {
    const bool residual = variant == 3;
    const int act = residual ? kNone : variant;
    const std::string entry = residual ? "BiasAddResidual" : std::string("BiasAct") + kActSuffix[act];
    run_case(entry + " " + dims(s), [&](Case &c) {
      T x(s), b({s[1]}), r(s), y(s);
      rng.fill(x, -4.0, 4.0);
      rng.fill(b);
      rng.fill(r);
      const int rc = residual ? invoke(entry, {&x, &b, &r, &y}) : invoke(entry, {&x, &b, &y});
      std::vector<double> ref(y.size()), mag(y.size());
      for (int64_t i = 0; i < y.size(); ++i) {
        const double bb = b[(i / hw) % s[1]], u = static_cast<double>(x[i]) + bb;
        ref[i] = act_d(u, act) + (residual ? r[i] : 0.0);
        mag[i] = act_mag(u, std::fabs(x[i]) + std::fabs(bb), act) + (residual ? std::fabs(r[i]) : 0.0);
      }
      c.add("y", y, std::move(ref), std::move(mag));
      return rc;
    });
  }
}

// ---- training BatchNorm (batch statistics) + activation ----------------------------------
struct BnStats {
  std::vector<double> mean, var;
};

BnStats bn_stats(const T &x, int64_t n, int64_t c, int64_t hw) {
  BnStats st{std::vector<double>(c, 0.0), std::vector<double>(c, 0.0)};
  for (int64_t cc = 0; cc < c; ++cc) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < hw; ++p) s += x[(i * c + cc) * hw + p];
    const double m = s / (n * hw);
    double v = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < hw; ++p) {
        const double d = x[(i * c + cc) * hw + p] - m;
        v += d * d;
      }
    st.mean[cc] = m;
    st.var[cc] = v / (n * hw);
  }
  return st;
}

// Random BN inputs whose u = gamma (x - mean) / sqrt(var + eps) + beta keeps clear (by 2e-3) of
// the activation's kinks (relu: 0; hswish' jumps at -3 and 3), where float and double round to
// different sides; x is nudged away from them and the statistics recomputed.
void bn_inputs(const T &x, const T &gamma, const T &beta, double eps, int act, int64_t n, int64_t c, int64_t hw,
               Rng &rng) {
  for (int64_t cc = 0; cc < c; ++cc) {
    const double scale = rng.uniform(0.5, 2.0), offset = rng.uniform(-1.0, 1.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < hw; ++p)
        x[(i * c + cc) * hw + p] = static_cast<float>(offset + scale * rng.uniform(-1, 1));
    gamma[cc] = static_cast<float>(rng.uniform(0.5, 2.5) * (rng.uniform(0, 1) < 0.2 ? -1 : 1));
    beta[cc] = static_cast<float>(rng.uniform(-1.5, 1.5));
  }
  if (act == kNone) return;
  const double margin = 2e-3;
  for (int iter = 0; iter < 20; ++iter) {
    const BnStats st = bn_stats(x, n, c, hw);
    int64_t moved = 0;
    for (int64_t cc = 0; cc < c; ++cc) {
      const double mean = static_cast<float>(st.mean[cc]), var = static_cast<float>(st.var[cc]);
      const double invstd = 1.0 / std::sqrt(var + eps), sc = gamma[cc] * invstd;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t p = 0; p < hw; ++p) {
          float &xv = x[(i * c + cc) * hw + p];
          const double u = (xv - mean) * sc + beta[cc];
          for (double kink : {0.0, -3.0, 3.0}) {
            if (act == kRelu && kink != 0.0) continue;
            if (act == kHswish && kink == 0.0) continue;
            if (std::fabs(u - kink) < margin) {
              const double du = (u >= kink ? 2 : -2) * margin;  // move u by 2 margins away
              xv = static_cast<float>(xv + du / sc);
              ++moved;
            }
          }
        }
    }
    if (!moved) return;
  }
}

void bn_cases(const std::vector<int64_t> &s, Rng &rng) {
  const int64_t n = s[0], c = s[1], hw = s[2] * s[3], count = n * hw;
  const double eps = 1e-3;  // core.nn.model.BN_EPS
  for (int act : {kNone, kRelu, kHswish}) {
    run_case(std::string("BnActFwd") + kActSuffix[act] + " " + dims(s), [&](Case &cs) {
      T x(s), gamma({c}), beta({c}), e({1}), y(s), mean({c}), var({c});
      bn_inputs(x, gamma, beta, eps, act, n, c, hw, rng);
      e[0] = static_cast<float>(eps);
      const int rc = invoke(std::string("BnActFwd") + kActSuffix[act], {&x, &gamma, &beta, &e, &y, &mean, &var});
      const BnStats st = bn_stats(x, n, c, hw);
      std::vector<double> ry(y.size()), my(y.size()), rm(c), mm(c), rv(c), mv(c);
      for (int64_t cc = 0; cc < c; ++cc) {
        const double invstd = 1.0 / std::sqrt(st.var[cc] + eps), sc = gamma[cc] * invstd;
        double absx = 0.0, sq = 0.0;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t p = 0; p < hw; ++p) {
            const int64_t k = (i * c + cc) * hw + p;
            const double xc = x[k] - st.mean[cc], u = xc * sc + beta[cc];
            ry[k] = act_d(u, act);
            my[k] = act_mag(u, std::fabs(xc * sc) + std::fabs(st.mean[cc] * sc) + std::fabs(beta[cc]), act);
            absx += std::fabs(x[k]);
            sq += static_cast<double>(x[k]) * x[k];
          }
        rm[cc] = st.mean[cc];
        mm[cc] = absx / count;
        rv[cc] = st.var[cc];
        mv[cc] = sq / count;  // var = E[x^2] - mean^2: rounding scale E[x^2]
      }
      cs.add("y", y, std::move(ry), std::move(my));
      cs.add("mean", mean, std::move(rm), std::move(mm));
      cs.add("var", var, std::move(rv), std::move(mv));
      return rc;
    });
    run_case(std::string("BnActBwd") + kActSuffix[act] + " " + dims(s), [&](Case &cs) {
      T dy(s), x(s), gamma({c}), beta({c}), mean({c}), var({c}), e({1}), dx(s), dgamma({c}), dbeta({c});
      bn_inputs(x, gamma, beta, eps, act, n, c, hw, rng);
      rng.fill(dy);
      e[0] = static_cast<float>(eps);
      const BnStats st = bn_stats(x, n, c, hw);
      for (int64_t cc = 0; cc < c; ++cc) {  // the forward's outputs, as the bprop passes them
        mean[cc] = static_cast<float>(st.mean[cc]);
        var[cc] = static_cast<float>(st.var[cc]);
      }
      const int rc = invoke(std::string("BnActBwd") + kActSuffix[act],
                            {&dy, &x, &gamma, &beta, &mean, &var, &e, &dx, &dgamma, &dbeta});
      std::vector<double> rdx(dx.size()), mdx(dx.size()), rg(c), mg(c), rb(c), mb(c);
      for (int64_t cc = 0; cc < c; ++cc) {
        const double invstd = 1.0 / std::sqrt(static_cast<double>(var[cc]) + eps), k1 = gamma[cc] * invstd;
        double sdu = 0.0, sdux = 0.0, adu = 0.0, adux = 0.0;
        std::vector<double> du(n * hw), xc(n * hw);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t p = 0; p < hw; ++p) {
            const int64_t k = (i * c + cc) * hw + p, l = i * hw + p;
            xc[l] = x[k] - static_cast<double>(mean[cc]);
            du[l] = dy[k] * act_grad_d(xc[l] * k1 + beta[cc], act);
            sdu += du[l];
            sdux += du[l] * xc[l];
            adu += std::fabs(du[l]);
            adux += std::fabs(du[l] * xc[l]);
          }
        rb[cc] = sdu;
        mb[cc] = adu;
        rg[cc] = sdux * invstd;
        mg[cc] = adux * invstd;
        const double k2 = -k1 * invstd * invstd * sdux / count, k3 = -k1 * sdu / count;
        // rounding scale of k2 and k3 from their sums' magnitudes, plus the three terms'
        const double m2 = std::fabs(k1) * invstd * invstd * adux / count, m3 = std::fabs(k1) * adu / count;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t p = 0; p < hw; ++p) {
            const int64_t k = (i * c + cc) * hw + p, l = i * hw + p;
            rdx[k] = k1 * du[l] + k2 * xc[l] + k3;
            mdx[k] = std::fabs(k1 * du[l]) + m2 * (std::fabs(xc[l]) + std::fabs(static_cast<double>(mean[cc]))) + m3;
          }
      }
      cs.add("dx", dx, std::move(rdx), std::move(mdx));
      cs.add("dgamma", dgamma, std::move(rg), std::move(mg));
      cs.add("dbeta", dbeta, std::move(rb), std::move(mb));
      return rc;
    });
  }
}

// ---- global pool, squeeze-excite's scale (training) ---------------------------------------
void pool_scale_cases(const std::vector<int64_t> &s, Rng &rng) {
  const int64_t n = s[0], c = s[1], hw = s[2] * s[3];
  run_case("MeanHW " + dims(s), [&](Case &cs) {
    T x(s), y({n, c});
    rng.fill(x);
    const int rc = invoke("MeanHW", {&x, &y});
    std::vector<double> ref(n * c), mag(n * c);
    for (int64_t t = 0; t < n * c; ++t) {
      double a = 0.0, m = 0.0;
      for (int64_t p = 0; p < hw; ++p) a += x[t * hw + p], m += std::fabs(x[t * hw + p]);
      ref[t] = a / hw;
      mag[t] = m / hw;
    }
    cs.add("mean", y, std::move(ref), std::move(mag));
    return rc;
  });
  for (bool four_d : {false, true}) {
    const std::vector<int64_t> ps = four_d ? std::vector<int64_t>{n, c, 1, 1} : std::vector<int64_t>{n, c};
    const std::string stag = " " + dims(s) + " s" + dims(ps);
    run_case("MeanHWBwd" + stag, [&](Case &cs) {
      T dm(ps), x(s), dx(s);
      rng.fill(dm);
      rng.fill(x);  // shape only
      const int rc = invoke("MeanHWBwd", {&dm, &x, &dx});
      std::vector<double> ref(dx.size());
      for (int64_t i = 0; i < dx.size(); ++i) ref[i] = static_cast<double>(dm[i / hw]) / hw;
      cs.add("dx", dx, std::move(ref));
      return rc;
    });
    run_case("ScaleChannels" + stag, [&](Case &cs) {
      T x(s), sc(ps), y(s);
      rng.fill(x);
      rng.fill(sc, 0.0, 1.0);
      const int rc = invoke("ScaleChannels", {&x, &sc, &y});
      std::vector<double> ref(y.size());
      for (int64_t i = 0; i < y.size(); ++i) ref[i] = static_cast<double>(x[i]) * sc[i / hw];
      cs.add("y", y, std::move(ref));
      return rc;
    });
    run_case("ScaleChannelsBwd" + stag, [&](Case &cs) {
      T dy(s), x(s), sc(ps), dx(s), ds(ps);
      rng.fill(dy);
      rng.fill(x);
      rng.fill(sc, 0.0, 1.0);
      const int rc = invoke("ScaleChannelsBwd", {&dy, &x, &sc, &dx, &ds});
      std::vector<double> rdx(dx.size()), rds(n * c, 0.0), mds(n * c, 0.0);
      for (int64_t i = 0; i < dx.size(); ++i) {
        rdx[i] = static_cast<double>(dy[i]) * sc[i / hw];
        const double t = static_cast<double>(dy[i]) * x[i];
        rds[i / hw] += t;
        mds[i / hw] += std::fabs(t);
      }
      cs.add("dx", dx, std::move(rdx));
      cs.add("ds", ds, std::move(rds), std::move(mds));
      return rc;
    });
  }
}

// ---- the training batch's normalisation (bit-identical to (float(x) - mean) / std) ----------
void normalize_case(int64_t n, int64_t h, int64_t w, int64_t c, Rng &rng) {
  run_case("NormalizeNhwc " + dims({n, h, w, c}), [&](Case &cs) {
    T x({n, h, w, c}, "uint8"), mean({c}), sd({c}), y({n, c, h, w});
    for (int64_t i = 0; i < x.size(); ++i) x.u8()[i] = static_cast<uint8_t>(rng.next() & 255);
    for (int64_t cc = 0; cc < c; ++cc) {
      mean[cc] = static_cast<float>(rng.uniform(80, 160));
      sd[cc] = static_cast<float>(rng.uniform(40, 80));
    }
    const int rc = invoke("NormalizeNhwc", {&x, &mean, &sd, &y});
    std::vector<double> ref(y.size());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t cc = 0; cc < c; ++cc)
        for (int64_t r = 0; r < h; ++r)
          for (int64_t col = 0; col < w; ++col) {
            volatile float d = static_cast<float>(x.u8()[((i * h + r) * w + col) * c + cc]) - mean[cc];
            volatile float q = d / sd[cc];
            ref[((i * c + cc) * h + r) * w + col] = q;
          }
    cs.add("y", y, std::move(ref), {}, /*exact=*/true);
    return rc;
  });
}

// ---- invalid inputs the entry points must refuse -----------------------------------------
void reject_cases() {
  reject_case("reject DepthwiseFwd float16 input", [] {
    T x({1, 4, 5, 5}), w({4, 1, 3, 3}), y({1, 4, 5, 5});
    x.dtype = "float16";
    return invoke("DepthwiseFwd", {&x, &w, &y});
  });
  reject_case("reject DepthwiseFwd output extent of no stride", [] {
    T x({1, 4, 9, 9}), w({4, 1, 3, 3}), y({1, 4, 4, 4});  // 9 -> 9 (s1), 5 (s2), 3 (s3)
    return invoke("DepthwiseFwd", {&x, &w, &y});
  });
  reject_case("reject PointwiseFwd weight of other K", [] {
    T x({1, 8, 3, 3}), w({4, 7, 1, 1}), y({1, 4, 3, 3});
    return invoke("PointwiseFwd", {&x, &w, &y});
  });
  reject_case("reject NormalizeNhwc float32 image", [] {
    T x({1, 2, 2, 3}), m({3}), s({3}), y({1, 3, 2, 2});
    return invoke("NormalizeNhwc", {&x, &m, &s, &y});
  });
}

// ---- the cases -------------------------------------------------------------------------------
// MobileNetV3-Small (core/nn/model.py SMALL_BLOCKS) at a small batch: stem 3->16 3x3 s2; depthwise
// 3x3 (16, 72, 88 channels) and 5x5 (96, 240, 120, 144, 288, 576) at stride 1 and 2; 1x1 convs
// 16<->72/88, 24<->96, 40<->240/120, 48<->144/288, 96<->576; SE squeezes 8..144; classifier
// 576->1024 (hard-swish) -> 1000. Planes are smaller than at 224 px (the kernels' paths depend
// on the plane's size modulo the vectors, not on its size), plus odd planes, 1x1 and 2x2 planes,
// non-square planes and channel counts that are not multiples of 8 or 16. `big`: full run only.
void all_cases() {
  Rng rng(opt.seed);
  struct DwCfg { int64_t n, c, h, w, k, s; bool big; };
  const DwCfg dws[] = {
      {2, 16, 16, 16, 3, 2, false},  {2, 72, 15, 15, 3, 2, true},  {2, 88, 7, 7, 3, 1, true},
      {2, 96, 14, 14, 5, 2, true},   {2, 240, 7, 7, 5, 1, true},   {1, 120, 7, 7, 5, 1, false},
      {2, 144, 4, 4, 5, 1, true},    {2, 288, 7, 7, 5, 2, true},   {2, 576, 2, 2, 5, 1, true},
      {2, 576, 1, 1, 5, 1, true},    {3, 20, 13, 13, 3, 1, false}, {1, 13, 1, 1, 3, 2, false},
      {2, 37, 9, 9, 5, 2, false},    {2, 24, 2, 2, 3, 2, false},   {1, 11, 33, 33, 3, 1, true},
      {2, 18, 10, 7, 5, 1, false},   {1, 9, 11, 6, 3, 2, false},   {2, 17, 3, 3, 5, 1, false},
  };
  for (const DwCfg &d : dws)
    if (!d.big || !opt.small) conv_cases(Conv{d.n, d.c, d.h, d.w, d.c, 1, d.k, d.s}, rng);
  // the stem (dense 3 -> 16, 3x3, stride 2) and one grouped conv (4 groups of 2 -> 3)
  struct StemCfg { int64_t n, h, w; bool big; };
  const StemCfg stems[] = {{2, 32, 32, true}, {1, 31, 31, false}, {3, 17, 17, false}, {2, 1, 1, false},
                           {1, 2, 2, false},  {2, 9, 12, false}};
  for (const StemCfg &s : stems)
    if (!s.big || !opt.small) conv_cases(Conv{s.n, 3, s.h, s.w, 16, 3, 3, 2}, rng);
  conv_cases(Conv{2, 8, 11, 11, 12, 2, 3, 1}, rng);

  struct PwCfg { int64_t n, k, m, h, w; bool big; };
  const PwCfg pws[] = {
      {2, 16, 72, 16, 16, true},  {2, 72, 24, 15, 15, true}, {2, 24, 88, 7, 7, false}, {3, 88, 24, 7, 7, true},
      {2, 40, 240, 5, 5, true},   {2, 240, 40, 3, 3, true},  {2, 48, 144, 17, 17, true}, {4, 144, 48, 1, 1, false},
      {3, 288, 96, 2, 2, true},   {2, 96, 576, 7, 7, true},  {8, 576, 96, 1, 1, true},  {1, 3, 5, 13, 13, false},
      {1, 13, 21, 23, 23, false}, {9, 16, 8, 1, 1, false},   {2, 37, 19, 9, 9, false},  {1, 20, 9, 17, 16, false},
  };
  for (const PwCfg &p : pws)
    if (!p.big || !opt.small) pw_cases(Pw{p.n, p.k, p.m, p.h, p.w}, rng);

  if (!opt.small) {
    linear_cases(3, 576, 1024, rng);
    linear_cases(2, 1024, 1000, rng);
    linear_cases(17, 40, 37, rng);
  }
  linear_cases(1, 576, 64, rng);
  linear_cases(5, 13, 11, rng);

  se_case(2, 16, 8, 7, 7, rng);
  se_case(1, 20, 6, 3, 3, rng);
  se_case(3, 120, 32, 2, 2, rng);
  if (!opt.small) {
    se_case(2, 96, 24, 5, 5, rng);
    se_case(2, 576, 144, 1, 1, rng);
    se_case(1, 240, 64, 13, 13, rng);
  }

  std::vector<std::vector<int64_t>> ew = {{2, 16, 15, 15}, {3, 20, 7, 7}, {2, 37, 1, 1}, {1, 13, 13, 11}};
  if (!opt.small) ew.push_back({2, 576, 3, 3});
  for (const auto &s : ew) bias_act_cases(s, rng);

  std::vector<std::vector<int64_t>> bns = {{2, 16, 16, 16}, {3, 20, 7, 7}, {4, 37, 2, 2}, {2, 13, 1, 1},
                                           {1, 5, 33, 33}};  // 33x33: past the 1024-pixel partial sums
  if (!opt.small) {
    bns.push_back({2, 96, 5, 5});
    bns.push_back({2, 24, 15, 15});
    bns.push_back({2, 576, 1, 1});
  }
  for (const auto &s : bns) bn_cases(s, rng);

  std::vector<std::vector<int64_t>> pools = {{2, 16, 15, 15}, {3, 20, 7, 7}, {2, 37, 1, 1}, {1, 5, 33, 33}};
  if (!opt.small) pools.push_back({2, 576, 2, 2});
  for (const auto &s : pools) pool_scale_cases(s, rng);

  normalize_case(2, 32, 32, 3, rng);
  normalize_case(1, 17, 13, 3, rng);
  normalize_case(3, 1, 1, 3, rng);
  normalize_case(1, 5, 7, 4, rng);

  reject_cases();
}

const char *isa_name() {
#if defined(__AVX512F__)
  return "x86-64 AVX-512 (__AVX512F__)";
#elif defined(__AVX2__)
  return "x86-64 AVX2 (__AVX2__)";
#elif defined(__AVX__)
  return "x86-64 AVX (__AVX__)";
#elif defined(__x86_64__)
  return "x86-64 baseline (SSE2)";
#elif defined(__aarch64__) && defined(__ARM_NEON)
  return "aarch64 NEON (__aarch64__, __ARM_NEON)";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "other";
#endif
}

int usage() {
  std::fprintf(stderr,
               "usage: parity [--small] [--rtol X] [--filter SUB[,SUB...]] [--lib PATH] [--inject] [--seed N] "
               "[--front-guard] [--list-entries] [--guard-selftest]\n");
  return 2;
}

}  // namespace

int main(int argc, char **argv) {
  bool list = false, guard_selftest = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) std::exit(usage());
      return argv[++i];
    };
    if (a == "--small") opt.small = true;
    else if (a == "--inject") opt.inject = true;
    else if (a == "--front-guard") opt.front_guard = true;
    else if (a == "--guard-selftest") guard_selftest = true;
    else if (a == "--rtol") opt.rtol = std::atof(value().c_str());
    else if (a == "--seed") opt.seed = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--lib") opt.lib = value();
    else if (a == "--list-entries") list = true;
    else if (a == "--filter") {
      const std::string f = value();
      size_t start = 0;
      while (start <= f.size()) {
        const size_t end = std::min(f.find(',', start), f.size());
        if (end > start) opt.filters.push_back(f.substr(start, end - start));
        start = end + 1;
      }
    } else {
      return usage();
    }
  }
#define REGISTER_ENTRY(name) entries[#name] = name;
  KERNEL_ENTRIES(REGISTER_ENTRY)
#undef REGISTER_ENTRY
  if (list) {
    for (const auto &e : entries) std::printf("%s\n", e.first.c_str());
    return 0;
  }
  if (!opt.lib.empty()) {
    void *h = dlopen(opt.lib.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      std::fprintf(stderr, "parity: cannot load %s: %s\n", opt.lib.c_str(), dlerror());
      return 2;
    }
    for (auto &e : entries) e.second = reinterpret_cast<Entry>(dlsym(h, e.first.c_str()));
  }
  struct sigaction sa {};
  sa.sa_handler = on_segv;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);

  if (opt.lib.empty() && std::none_of(entries.begin(), entries.end(), [](const auto &e) { return e.second; })) {
    std::fprintf(stderr, "parity: no kernel linked in: link core/kernels/cpu_ops.cc or pass --lib PATH\n");
    return 2;
  }
  if (opt.lib.empty())
    std::printf("parity: kernels linked in, compiled for %s", isa_name());
  else
    std::printf("parity: kernels from %s (harness compiled for %s)", opt.lib.c_str(), isa_name());
  std::printf(", rtol %g%s%s%s\n", opt.rtol, opt.small ? ", small shapes" : "",
              opt.front_guard ? ", guard pages before the buffers" : "",
              opt.inject ? ", INJECTING one wrong element per output (self-test)" : "");
  std::fflush(stdout);
  if (guard_selftest) {  // the guard pages work: this read must land in on_segv (exit 4)
    current_case = "guard self-test";
    T t({3});
    volatile float v = opt.front_guard ? t.f()[-1] : t.f()[3];
    std::printf("guard self-test: read %g outside the buffer without a fault\n", static_cast<double>(v));
    return 1;
  }
  const auto t0 = std::chrono::steady_clock::now();
  all_cases();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int uncovered = 0;
  if (opt.filters.empty()) {
    for (const auto &e : entries)
      if (!called.count(e.first)) {
        std::printf("FAIL  entry point %s: no case called it\n", e.first.c_str());
        ++uncovered;
      }
  }
  std::printf("parity: %d cases, %d entry points called, %.2f s: %d passed, %d failed\n", n_cases,
              static_cast<int>(called.size()), secs, n_cases - n_failed, n_failed + uncovered);
  return (n_failed + uncovered) ? 1 : 0;
}
