// Grouped 2-D convolution (NCHW, float32, square kernel, padding (k-1)/2, no bias): depthwise
// (groups = channels) and small dense convs such as the 3-channel stem for MindSpore's ops.Custom(func_type="aot") on CPU.
//
// MindSpore 2.10 hands oneDNN plain NCHW tensors on CPU and oneDNN then runs depthwise convs
// on a slow reference-like path (~20x slower than PyTorch). These three kernels (forward,
// input gradient, weight gradient) reduce every tap to one long contiguous loop that the
// compiler vectorises (see Phases), parallel over (image, group) or groups with OpenMP. Stride is inferred from the
// input/output shapes, the kernel size from the weight shape.
//
// Entry points (MindSpore AOT signature):
//   DepthwiseFwd(x[N,C,H,W], w[CO,C/G,K,K]) -> y[N,CO,OH,OW]
//   DepthwiseBwdInput(dy[N,CO,OH,OW], w, x (shape only)) -> dx[N,C,H,W]
//   DepthwiseBwdWeight(dy[N,CO,OH,OW], x[N,C,H,W], w (shape only)) -> dw[CO,C/G,K,K]
// (G = C / w.shape[1]; the stride is inferred from the input and output extents.)
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>

namespace {

struct Geom {
  int64_t n, c, h, w, oh, ow, k, s, p;
  int64_t co, cpg, opg;  // output channels, input channels per group, outputs per group
};

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p) { return (in + 2 * p - k) / s + 1; }

// Stride from input and output extents (unique when the output has >= 2 rows/cols; when it has
// one, any consistent stride gives the same result).
bool infer_geom(const int64_t *in, const int64_t *out, const int64_t *wshape, Geom *g) {
  const int64_t k = wshape[2];
  g->n = in[0]; g->c = in[1]; g->h = in[2]; g->w = in[3];
  g->oh = out[2]; g->ow = out[3]; g->k = k; g->p = (k - 1) / 2;
  g->co = wshape[0]; g->cpg = wshape[1];
  if (wshape[3] != k || g->cpg <= 0 || g->c % g->cpg != 0 || out[1] != g->co) return false;
  const int64_t groups = g->c / g->cpg;
  if (g->co % groups != 0) return false;
  g->opg = g->co / groups;
  for (int64_t s = 1; s <= 8; ++s) {
    if (out_size(g->h, k, s, g->p) == g->oh && out_size(g->w, k, s, g->p) == g->ow) {
      g->s = s;
      return true;
    }
  }
  return false;
}

// Layout trick: the zero-padded input plane (Hp x Wp) is split into S x S stride phases
// P[a][b][r][c] = xpad[S*r + a][S*c + b], each Hq x Wq (Hq = ceil(Hp/S)). Output pixel (oy, ox),
// tap (i, j) reads P[i%S][j%S][oy + i/S][ox + j/S]; with outputs laid out at row stride Wq
// ("extended" rows, the Wq - OW extra columns are scratch), every tap is one contiguous,
// vectorisable loop of L = (OH-1)*Wq + OW elements over the whole plane, whatever the stride.
struct Phases {
  int64_t S, hq, wq, plane, L;
  explicit Phases(const Geom &g) {
    S = g.s;
    hq = (g.h + 2 * g.p + S - 1) / S;
    wq = (g.w + 2 * g.p + S - 1) / S;
    plane = hq * wq;
    L = (g.oh - 1) * wq + g.ow;
  }
  int64_t size() const { return S * S * plane; }
  // Offset of tap (i, j) in the phase buffer.
  int64_t tap(int64_t i, int64_t j) const { return ((i % S) * S + (j % S)) * plane + (i / S) * wq + (j / S); }
};

// x plane (H x W) -> phases (zero padding included).
void to_phases(const float *x, float *ph, const Geom &g, const Phases &q) {
  std::memset(ph, 0, sizeof(float) * q.size());
  const int64_t S = q.S;
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t yp = y + g.p, a = yp % S, r = yp / S;
    const float *xr = x + y * g.w;
    for (int64_t b = 0; b < S; ++b) {
      float *dst = ph + (a * S + b) * q.plane + r * q.wq;
      // columns xp = x + p with xp % S == b  ->  c = xp / S
      int64_t x0 = (b - g.p % S + S) % S;  // first x with (x + p) % S == b
      for (int64_t xx = x0; xx < g.w; xx += S) dst[(xx + g.p) / S] = xr[xx];
    }
  }
}

// phases -> accumulate into a plane (H x W), dropping the padding.
void add_from_phases(const float *ph, float *x, const Geom &g, const Phases &q) {
  const int64_t S = q.S;
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t yp = y + g.p, a = yp % S, r = yp / S;
    float *xr = x + y * g.w;
    for (int64_t b = 0; b < S; ++b) {
      const float *src = ph + (a * S + b) * q.plane + r * q.wq;
      int64_t x0 = (b - g.p % S + S) % S;
      for (int64_t xx = x0; xx < g.w; xx += S) xr[xx] += src[(xx + g.p) / S];
    }
  }
}

inline void axpy(float *__restrict y, const float *__restrict x, float a, int64_t n) {
  for (int64_t t = 0; t < n; ++t) y[t] += a * x[t];
}

inline float dot(const float *__restrict a, const float *__restrict b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < n; ++t) s += a[t] * b[t];
  return s;
}

// Channel bookkeeping: output channel o belongs to group o / opg, whose input channels are
// [grp * cpg, (grp + 1) * cpg); weight w[o, cl] pairs o with input channel grp * cpg + cl.
void fwd_all(const float *x, const float *w, float *y, const Geom &g) {
  const Phases q(g);
  const int64_t groups = g.c / g.cpg, tasks = g.n * groups, kk = g.k * g.k;
#pragma omp parallel
  {
    std::vector<float> ph(q.size() * g.cpg), acc(q.L + q.wq);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / groups, grp = t % groups;
      for (int64_t cl = 0; cl < g.cpg; ++cl)
        to_phases(x + (n * g.c + grp * g.cpg + cl) * g.h * g.w, ph.data() + cl * q.size(), g, q);
      for (int64_t ol = 0; ol < g.opg; ++ol) {
        const int64_t o = grp * g.opg + ol;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t cl = 0; cl < g.cpg; ++cl) {
          const float *wk = w + (o * g.cpg + cl) * kk, *pc = ph.data() + cl * q.size();
          for (int64_t i = 0; i < g.k; ++i)
            for (int64_t j = 0; j < g.k; ++j) axpy(acc.data(), pc + q.tap(i, j), wk[i * g.k + j], q.L);
        }
        float *yp = y + (n * g.co + o) * g.oh * g.ow;
        for (int64_t oy = 0; oy < g.oh; ++oy)
          std::memcpy(yp + oy * g.ow, acc.data() + oy * q.wq, sizeof(float) * g.ow);
      }
    }
  }
}

// dy plane (OH x OW) -> extended rows (row stride wq, zero scratch columns).
void to_extended(const float *dy, float *ext, const Geom &g, const Phases &q) {
  std::memset(ext, 0, sizeof(float) * (q.L + q.wq));
  for (int64_t oy = 0; oy < g.oh; ++oy) std::memcpy(ext + oy * q.wq, dy + oy * g.ow, sizeof(float) * g.ow);
}

void bwd_input_all(const float *dy, const float *w, float *dx, const Geom &g) {
  const Phases q(g);
  const int64_t groups = g.c / g.cpg, tasks = g.n * groups, kk = g.k * g.k;
#pragma omp parallel
  {
    std::vector<float> ph(q.size() * g.cpg), ext(q.L + q.wq);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / groups, grp = t % groups;
      std::fill(ph.begin(), ph.end(), 0.f);
      for (int64_t ol = 0; ol < g.opg; ++ol) {
        const int64_t o = grp * g.opg + ol;
        to_extended(dy + (n * g.co + o) * g.oh * g.ow, ext.data(), g, q);
        for (int64_t cl = 0; cl < g.cpg; ++cl) {
          const float *wk = w + (o * g.cpg + cl) * kk;
          float *pc = ph.data() + cl * q.size();
          for (int64_t i = 0; i < g.k; ++i)
            for (int64_t j = 0; j < g.k; ++j) axpy(pc + q.tap(i, j), ext.data(), wk[i * g.k + j], q.L);
        }
      }
      for (int64_t cl = 0; cl < g.cpg; ++cl) {
        float *dxp = dx + (n * g.c + grp * g.cpg + cl) * g.h * g.w;
        std::memset(dxp, 0, sizeof(float) * g.h * g.w);
        add_from_phases(ph.data() + cl * q.size(), dxp, g, q);
      }
    }
  }
}

void bwd_weight_all(const float *dy, const float *x, float *dw, const Geom &g) {
  const Phases q(g);
  const int64_t groups = g.c / g.cpg, kk = g.k * g.k;
#pragma omp parallel
  {
    std::vector<float> ph(q.size() * g.cpg), ext(q.L + q.wq);
    std::vector<double> acc(g.opg * g.cpg * kk);
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < groups; ++grp) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = 0; n < g.n; ++n) {
        for (int64_t cl = 0; cl < g.cpg; ++cl)
          to_phases(x + (n * g.c + grp * g.cpg + cl) * g.h * g.w, ph.data() + cl * q.size(), g, q);
        for (int64_t ol = 0; ol < g.opg; ++ol) {
          to_extended(dy + (n * g.co + grp * g.opg + ol) * g.oh * g.ow, ext.data(), g, q);
          for (int64_t cl = 0; cl < g.cpg; ++cl) {
            const float *pc = ph.data() + cl * q.size();
            double *a = acc.data() + (ol * g.cpg + cl) * kk;
            for (int64_t i = 0; i < g.k; ++i)
              for (int64_t j = 0; j < g.k; ++j) a[i * g.k + j] += dot(ext.data(), pc + q.tap(i, j), q.L);
          }
        }
      }
      for (int64_t ol = 0; ol < g.opg; ++ol)
        for (int64_t cl = 0; cl < g.cpg; ++cl)
          for (int64_t t = 0; t < kk; ++t)
            dw[((grp * g.opg + ol) * g.cpg + cl) * kk + t] = static_cast<float>(acc[(ol * g.cpg + cl) * kk + t]);
    }
  }
}

bool is_f32(const char *dtype) { return std::strcmp(dtype, "float32") == 0; }

}  // namespace

extern "C" {

int DepthwiseFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                 void *stream, void *extra) {
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return 1;
  if (!is_f32(dtypes[0]) || !is_f32(dtypes[1])) return 2;
  Geom g;
  if (!infer_geom(shapes[0], shapes[2], shapes[1], &g)) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  fwd_all(x, w, y, g);
  return 0;
}

int DepthwiseBwdInput(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                      void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[3] != 4) return 1;
  Geom g;
  if (!infer_geom(shapes[3], shapes[0], shapes[1], &g)) return 3;
  const float *dy = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[3]);
  bwd_input_all(dy, w, dx, g);
  return 0;
}

int DepthwiseBwdWeight(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4) return 1;
  Geom g;
  if (!infer_geom(shapes[1], shapes[0], shapes[3], &g)) return 3;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dw = static_cast<float *>(params[3]);
  bwd_weight_all(dy, x, dw, g);
  return 0;
}

}  // extern "C"
