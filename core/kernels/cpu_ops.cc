// Convolutions for MindSpore's ops.Custom(func_type="aot") on CPU (NCHW, float32, square
// kernel, padding (k-1)/2, no bias): depthwise convs (groups = channels) and small dense or
// grouped convs such as the 3-channel stem, plus the fused inference ops of core/nn/fuse.py.
//
// MindSpore 2.10 hands oneDNN plain NCHW tensors on CPU and oneDNN then runs depthwise convs
// on a slow reference-like path (~20x slower than PyTorch). Here the forward of every kxk conv
// runs over stride phases vectorised along the pixels (see to_phases), the depthwise backward
// channel-blocked (VL channels per vector, see pack_input) and the grouped backward through
// stride phases (see Phases); all parallel with OpenMP. Stride is inferred from the
// input/output shapes, the kernel size from the weight.
//
// Training entry points (MindSpore AOT signature):
//   DepthwiseFwd(x[N,C,H,W], w[CO,C/G,K,K]) -> y[N,CO,OH,OW]
//   DepthwiseBwdInput(dy[N,CO,OH,OW], w, x (shape only)) -> dx[N,C,H,W]
//   DepthwiseBwdWeight(dy[N,CO,OH,OW], x[N,C,H,W], w (shape only)) -> dw[CO,C/G,K,K]
// (G = C / w.shape[1]; the stride is inferred from the input and output extents.)
// 1x1 convs in training (GEMMs, see "1x1 convolutions in training"):
//   PointwiseFwd(x, w[M,K,1,1]) -> y;  PointwiseBwdInput(dy, w, x) -> dx;
//   PointwiseBwdWeight(dy, x, w) -> dw
// BN + activation, squeeze-excite's scale and the global pool in training: BnAct*, ScaleChannels*,
// MeanHW / MeanHWBwd, and the input batch's NormalizeNhwc (see their entry points).
// Inference entry points (BN folded, activation fused; 1x1 convs and the classifier as GEMMs):
// see the end of the file.
#include <cstdint>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <vector>

#include <omp.h>


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

// Grouped input gradient (the stem's, when MindSpore asks for it). Layout trick: the zero-padded
// input plane (Hp x Wp) is split into S x S stride phases
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

// Channel bookkeeping of the grouped paths: output channel o belongs to group o / opg, whose
// input channels are [grp * cpg, (grp + 1) * cpg); weight w[o, cl] pairs o with input channel
// grp * cpg + cl.

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

// ---- Depthwise backward (one input and one output channel per group) --------------------
// MobileNetV3's late stages have 7x7 (224 px) or 2x2 (64 px) planes, where per-plane set-up
// dominates a plane-at-a-time loop. The depthwise gradients therefore run channel-blocked: VL
// channels are interleaved into a zero-padded [Hp][Wp][VL] buffer, so every tap of every output
// pixel is one VL-wide multiply-add whatever the plane size. The pack/unpack transposes are
// O(plane) against O(k*k*plane) arithmetic.
constexpr int64_t VL = 8;
// VL floats as one value (GCC/Clang vector extension: one ymm register with AVX2, two xmm or
// NEON registers otherwise); `vload`/`vstore` accept any float alignment.
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vf_unaligned __attribute__((vector_size(VL * sizeof(float)), aligned(4)));
#pragma GCC diagnostic ignored "-Wpsabi"  // internal helpers, always inlined: no ABI to keep
#define ALWAYS_INLINE inline __attribute__((always_inline))
ALWAYS_INLINE vf vload(const float *p) { return *reinterpret_cast<const vf_unaligned *>(p); }
ALWAYS_INLINE void vstore(float *p, vf v) { *reinterpret_cast<vf_unaligned *>(p) = v; }

// Extents of a zero-padded input plane.
struct Padded {
  int64_t hp, wp;
  explicit Padded(const Geom &g) : hp(g.h + 2 * g.p), wp(g.w + 2 * g.p) {}
  int64_t plane() const { return hp * wp; }
};

// Deterministic sums over threads: each thread of a parallel region accumulates `per_thread`
// doubles of its own; `total` adds them in thread order, so for a given thread count the
// result does not depend on scheduling.
struct ThreadSums {
  std::vector<double> data;
  int threads = 1;
  int64_t per_thread;
  explicit ThreadSums(int64_t n) : per_thread(n) {}
  void start() {  // in the parallel region, before `mine`
#pragma omp single
    {
      threads = omp_get_num_threads();
      data.assign(static_cast<size_t>(threads) * per_thread, 0.0);
    }
  }
  double *mine() { return data.data() + omp_get_thread_num() * per_thread; }
  double total(int64_t i) const {
    double sum = 0.0;
    for (int th = 0; th < threads; ++th) sum += data[th * per_thread + i];
    return sum;
  }
};

inline int64_t lanes(const Geom &g, int64_t c0) { return std::min<int64_t>(VL, g.c - c0); }

// Input planes c0..c0+VL of image n -> padded interleaved buffer [Hp][Wp][VL] (missing lanes
// are zero).
void pack_input(const float *x, float *buf, const Geom &g, const Padded &b, int64_t n, int64_t c0) {
  std::memset(buf, 0, sizeof(float) * b.plane() * VL);
  const int64_t nl = lanes(g, c0);
  for (int64_t cc = 0; cc < nl; ++cc) {
    const float *plane = x + (n * g.c + c0 + cc) * g.h * g.w;
    for (int64_t y = 0; y < g.h; ++y) {
      float *row = buf + ((y + g.p) * b.wp + g.p) * VL + cc;
      const float *src = plane + y * g.w;
      for (int64_t xx = 0; xx < g.w; ++xx) row[xx * VL] = src[xx];
    }
  }
}

// Output-shaped planes (OH x OW) c0..c0+VL of image n -> [OH][OW][VL].
void pack_output(const float *dy, float *buf, const Geom &g, int64_t n, int64_t c0) {
  const int64_t nl = lanes(g, c0), hw = g.oh * g.ow;
  if (nl < VL) std::memset(buf, 0, sizeof(float) * hw * VL);
  for (int64_t cc = 0; cc < nl; ++cc) {
    const float *plane = dy + (n * g.c + c0 + cc) * hw;
    for (int64_t t = 0; t < hw; ++t) buf[t * VL + cc] = plane[t];
  }
}

// Weights of channels c0..c0+VL -> [k*k][VL].
void pack_weight(const float *w, float *wb, const Geom &g, int64_t c0) {
  const int64_t kk = g.k * g.k, nl = lanes(g, c0);
  std::fill(wb, wb + kk * VL, 0.f);
  for (int64_t cc = 0; cc < nl; ++cc)
    for (int64_t t = 0; t < kk; ++t) wb[t * VL + cc] = w[(c0 + cc) * kk + t];
}

enum Act { kNone = 0, kRelu = 1, kHswish = 2 };

// dx: scatter every output gradient through the taps into the padded block, then drop the padding.
void dw_bwd_input_block(const float *dyb, const float *wb, float *buf, const Geom &g, const Padded &b) {
  const int64_t k = g.k, s = g.s;
  std::memset(buf, 0, sizeof(float) * b.plane() * VL);
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      const vf d = vload(dyb + (oy * g.ow + ox) * VL);
      for (int64_t i = 0; i < k; ++i) {
        float *dst = buf + ((oy * s + i) * b.wp + ox * s) * VL;
        const float *wr = wb + i * k * VL;
        for (int64_t j = 0; j < k; ++j) vstore(dst + j * VL, vload(dst + j * VL) + vload(wr + j * VL) * d);
      }
    }
  }
}

void unpack_input(const float *buf, float *dx, const Geom &g, const Padded &b, int64_t n, int64_t c0) {
  const int64_t nl = lanes(g, c0);
  for (int64_t cc = 0; cc < nl; ++cc) {
    float *plane = dx + (n * g.c + c0 + cc) * g.h * g.w;
    for (int64_t y = 0; y < g.h; ++y) {
      const float *row = buf + ((y + g.p) * b.wp + g.p) * VL + cc;
      float *dst = plane + y * g.w;
      for (int64_t xx = 0; xx < g.w; ++xx) dst[xx] = row[xx * VL];
    }
  }
}

void dw_bwd_input_all(const float *dy, const float *w, float *dx, const Geom &g) {
  const Padded b(g);
  const int64_t blocks = (g.c + VL - 1) / VL, tasks = g.n * blocks;
#pragma omp parallel
  {
    std::vector<float> buf(b.plane() * VL), dyb(g.oh * g.ow * VL), wb(g.k * g.k * VL);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * VL;
      pack_output(dy, dyb.data(), g, n, c0);
      pack_weight(w, wb.data(), g, c0);
      dw_bwd_input_block(dyb.data(), wb.data(), buf.data(), g, b);
      unpack_input(buf.data(), dx, g, b, n, c0);
    }
  }
}

// dw for one (image, block): per output row in float (<= OW terms), then into double `acc`
// ([k*k][VL]), which keeps the sum over the batch and the plane as accurate as the reference.
void dw_bwd_weight_block(const float *dyb, const float *buf, double *acc, float *row, const Geom &g,
                         const Padded &b) {
  const int64_t k = g.k, s = g.s, kk = k * k;
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    std::fill(row, row + kk * VL, 0.f);
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      const vf d = vload(dyb + (oy * g.ow + ox) * VL);
      for (int64_t i = 0; i < k; ++i) {
        const float *src = buf + ((oy * s + i) * b.wp + ox * s) * VL;
        float *r = row + i * k * VL;
        for (int64_t j = 0; j < k; ++j) vstore(r + j * VL, vload(r + j * VL) + d * vload(src + j * VL));
      }
    }
    for (int64_t t = 0; t < kk * VL; ++t) acc[t] += row[t];
  }
}

// Parallel over (image, block) with one double accumulator per thread and block, summed in
// thread order afterwards: deterministic for a given thread count.
void dw_bwd_weight_all(const float *dy, const float *x, float *dw, const Geom &g) {
  const Padded b(g);
  const int64_t blocks = (g.c + VL - 1) / VL, tasks = g.n * blocks, kk = g.k * g.k;
  ThreadSums sums(blocks * kk * VL);
#pragma omp parallel
  {
    sums.start();
    double *mine = sums.mine();
    std::vector<float> buf(b.plane() * VL), dyb(g.oh * g.ow * VL), row(kk * VL);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / blocks, blk = t % blocks;
      pack_input(x, buf.data(), g, b, n, blk * VL);
      pack_output(dy, dyb.data(), g, n, blk * VL);
      dw_bwd_weight_block(dyb.data(), buf.data(), mine + blk * kk * VL, row.data(), g, b);
    }
  }
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * VL, nl = lanes(g, c0);
    for (int64_t cc = 0; cc < nl; ++cc)
      for (int64_t t = 0; t < kk; ++t)
        dw[(c0 + cc) * kk + t] = static_cast<float>(sums.total((blk * kk + t) * VL + cc));
  }
}

bool is_depthwise(const Geom &g) { return g.cpg == 1 && g.opg == 1; }

// ---- Grouped path with several channels per group (the 3-channel stem) ------------------
// Direct convolution vectorised over VL output channels of a group: each tap is a scalar
// input value times a VL-wide weight row. Inputs are first copied into zero-padded planes of
// every image (parallel), then output rows are computed in parallel over
// (image, group, output block, row), so a single image still uses every thread.
// Every input plane of every image, zero-padded, into `pad` (a work-shared loop: call it inside a
// parallel region).
void pad_planes(const float *x, float *pad, const Geom &g, const Padded &pd) {
#pragma omp for schedule(static)
  for (int64_t t = 0; t < g.n * g.c; ++t) {
    float *dst = pad + t * pd.plane();
    std::memset(dst, 0, sizeof(float) * pd.plane());
    for (int64_t yy = 0; yy < g.h; ++yy)
      std::memcpy(dst + (yy + g.p) * pd.wp + g.p, x + (t * g.h + yy) * g.w, sizeof(float) * g.w);
  }
}

// Output channels per block: two vectors, so the 16 outputs of the stem are one pass over its input.
constexpr int64_t OB = 2 * VL;

// Weight gradient of the grouped path, vectorised over OB output channels like the forward:
// for each tap, one pass along an output row with the two accumulators in registers.
void grp_bwd_weight_row(const float *pad, const float *dyrow, double *acc, const Geom &g,
                        const Padded &pd, int64_t oy) {
  const int64_t k = g.k, s = g.s;
  for (int64_t cl = 0; cl < g.cpg; ++cl)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const float *src = pad + cl * pd.plane() + (oy * s + i) * pd.wp + j;
        vf a0 = {0.f}, a1 = {0.f};
        for (int64_t ox = 0; ox < g.ow; ++ox) {
          const float v = src[ox * s];
          a0 += vload(dyrow + ox * OB) * v;
          a1 += vload(dyrow + ox * OB + VL) * v;
        }
        double *d = acc + ((cl * k + i) * k + j) * OB;
        for (int64_t cc = 0; cc < VL; ++cc) {
          d[cc] += a0[cc];
          d[VL + cc] += a1[cc];
        }
      }
}

// Parallel over (image, group, output block) with one double accumulator per thread, summed
// in thread order afterwards: deterministic for a given thread count.
void grp_bwd_weight_all(const float *dy, const float *x, float *dw, const Geom &g) {
  const Padded pd(g);
  const int64_t groups = g.c / g.cpg, kk = g.k * g.k, oblocks = (g.opg + OB - 1) / OB;
  const int64_t blocks = groups * oblocks, tasks = g.n * blocks, per_block = g.cpg * kk * OB;
  std::vector<float> pad(g.n * g.c * pd.plane());
  ThreadSums sums(blocks * per_block);
#pragma omp parallel
  {
    sums.start();
    pad_planes(x, pad.data(), g, pd);
    double *mine = sums.mine();
    std::vector<float> dyrow(g.ow * OB);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / blocks, blk = t % blocks, grp = blk / oblocks, ob = blk % oblocks;
      const int64_t o0 = grp * g.opg + ob * OB, nl = std::min<int64_t>(OB, g.opg - ob * OB);
      const float *padn = pad.data() + (n * g.c + grp * g.cpg) * pd.plane();
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        std::fill(dyrow.begin(), dyrow.end(), 0.f);
        for (int64_t cc = 0; cc < nl; ++cc) {
          const float *src = dy + ((n * g.co + o0 + cc) * g.oh + oy) * g.ow;
          for (int64_t ox = 0; ox < g.ow; ++ox) dyrow[ox * OB + cc] = src[ox];
        }
        grp_bwd_weight_row(padn, dyrow.data(), mine + blk * per_block, g, pd, oy);
      }
    }
  }
  for (int64_t o = 0; o < g.co; ++o) {
    const int64_t grp = o / g.opg, ol = o % g.opg, blk = grp * oblocks + ol / OB, cc = ol % OB;
    for (int64_t cl = 0; cl < g.cpg; ++cl)
      for (int64_t t = 0; t < kk; ++t)
        dw[(o * g.cpg + cl) * kk + t] =
            static_cast<float>(sums.total(blk * per_block + (cl * kk + t) * OB + cc));
  }
}

// ---- Inference-only element-wise ops (BN folded into the conv; see core/nn/fuse.py) ----------
// y = act(x + b[c]) [+ r], one pass over an NCHW tensor, parallel over planes.
void bias_act_plane(const float *x, float b, const float *r, int act, float *y, int64_t hw) {
  if (act == kRelu) {
    for (int64_t t = 0; t < hw; ++t) y[t] = std::max(x[t] + b, 0.f);
  } else if (act == kHswish) {
    for (int64_t t = 0; t < hw; ++t) {
      const float v = x[t] + b;
      y[t] = v * std::min(std::max(v + 3.f, 0.f), 6.f) * (1.f / 6.f);
    }
  } else if (r) {
    for (int64_t t = 0; t < hw; ++t) y[t] = x[t] + b + r[t];
  } else {
    for (int64_t t = 0; t < hw; ++t) y[t] = x[t] + b;
  }
}

void bias_act_all(const float *x, const float *b, const float *r, int act, float *y, int64_t n,
                  int64_t c, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n * c; ++t)
    bias_act_plane(x + t * hw, b[t % c], r ? r + t * hw : nullptr, act, y + t * hw, hw);
}

float plane_sum(const float *x, int64_t hw) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < hw; ++t) s += x[t];
  return s;
}

void scale_plane(const float *x, float a, float *y, int64_t hw) {
  for (int64_t t = 0; t < hw; ++t) y[t] = x[t] * a;
}

// Squeeze-excitation as torchvision computes it: per image, channel means -> fc1 (S x C) + b1
// -> ReLU -> fc2 (C x S) + b2 -> hard-sigmoid -> scale every plane.
void squeeze_excite_all(const float *x, const float *w1, const float *b1, const float *w2,
                        const float *b2, float *y, int64_t n, int64_t c, int64_t sq, int64_t hw) {
  std::vector<float> gate(n * c);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n * c; ++t) gate[t] = plane_sum(x + t * hw, hw) / static_cast<float>(hw);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      std::vector<float> hidden(sq);
      const float *m = gate.data() + i * c;
      for (int64_t j = 0; j < sq; ++j) hidden[j] = std::max(b1[j] + dot(w1 + j * c, m, c), 0.f);
      std::vector<float> out(c);
      for (int64_t o = 0; o < c; ++o) {
        const float v = b2[o] + dot(w2 + o * sq, hidden.data(), sq);
        out[o] = std::min(std::max(v + 3.f, 0.f), 6.f) / 6.f;
      }
      std::copy(out.begin(), out.end(), gate.begin() + i * c);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n * c; ++t) scale_plane(x + t * hw, gate[t], y + t * hw, hw);
  }
}

bool is_f32(const char *dtype) { return std::strcmp(dtype, "float32") == 0; }

bool all_f32(int n, const char **dtypes) {
  for (int i = 0; i < n; ++i)
    if (!is_f32(dtypes[i])) return false;
  return true;
}

// Two 4-D shapes are equal.
bool same_shape4(const int64_t *a, const int64_t *b) {
  for (int d = 0; d < 4; ++d)
    if (a[d] != b[d]) return false;
  return true;
}

// ---- 1x1 convolutions and the classifier as GEMMs (inference; see core/nn/fuse.py) ----------
// MindSpore hands oneDNN plain NCHW tensors and oneDNN's 1x1 path for them (jit_uni_ncsp with
// a matmul per image) runs 3-5x slower than onnxruntime's. Per image a 1x1 conv is
// Y[M][HW] = W[M][K] X[K][HW]: tiles of PW_MR output channels x two vectors of pixels accumulate in
// registers over all K (weights packed [M/PW_MR][K][PW_MR], broadcast one scalar at a time),
// then bias, activation and the residual are applied as the tile is stored.
// Output channels per GEMM tile: a tile keeps PW_MR x 2 vectors of accumulators in registers.
// AVX2's 16 ymm registers hold 6 x 2 and the broadcast (8 x 2 spilled four accumulators to the
// stack); AVX-512 and NEON have 32 registers.
#if defined(__AVX__) && !defined(__AVX512F__)
constexpr int64_t PW_MR = 6;
#else
constexpr int64_t PW_MR = 8;
#endif
// Floats per vector of the GEMM and the plane loops: the target's own register width (one zmm,
// ymm, xmm or NEON register). A wider generic vector than the target has is lowered piecewise,
// and GCC scalarises its comparisons and selects (the activations): the AVX2 build of a
// 16-float version ran the network 20x slower than the AVX-512 one. build.sh compiles one
// library per ISA, so each gets its width.
#if defined(__AVX512F__)
constexpr int64_t PW_NV = 16;
#elif defined(__AVX__)
constexpr int64_t PW_NV = 8;
#else
constexpr int64_t PW_NV = 4;
#endif
typedef float vw __attribute__((vector_size(PW_NV * sizeof(float))));
typedef float vw_unaligned __attribute__((vector_size(PW_NV * sizeof(float)), aligned(4)));
ALWAYS_INLINE vw wload(const float *p) { return *reinterpret_cast<const vw_unaligned *>(p); }
ALWAYS_INLINE void wstore(float *p, vw v) { *reinterpret_cast<vw_unaligned *>(p) = v; }

ALWAYS_INLINE vw activate_v(vw v, int act) {
  const vw zero = {0.f}, three = zero + 3.f, six = zero + 6.f;
  if (act == kRelu) return v > zero ? v : zero;
  if (act == kHswish) {
    vw t = v + three;
    t = t > zero ? t : zero;
    t = t < six ? t : six;
    return v * t * (1.f / 6.f);
  }
  return v;
}

// Weights [M][K] -> panels [ceil(M/PW_MR)][K][PW_MR], rows beyond M zero (a work-shared loop).
// `trans`: w is stored [K][M] (the transposed weight of the input gradient, W^T of a [K][M] W).
void pack_pw_weight(const float *w, float *wp, int64_t m, int64_t k, bool trans) {
  const int64_t blocks = (m + PW_MR - 1) / PW_MR;
#pragma omp for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    float *dst = wp + blk * k * PW_MR;
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t i = 0; i < PW_MR; ++i) {
        const int64_t row = blk * PW_MR + i;
        dst[kk * PW_MR + i] = row < m ? w[trans ? kk * m + row : row * k + kk] : 0.f;
      }
  }
}

// What one tile's epilogue needs: y[row][p] = act(acc + b[row]) (+ r[row][p]), rows of ldy.
struct PwOut {
  const float *b, *r;
  float *y;
  int64_t ldy, m;
  int act;
};

// The GEMM micro-kernel both tiles share: acc[PW_MR][NVEC vectors] = sum over `steps` of the
// panel's PW_MR coefficients (panel + step * PW_MR) times row `step` of b (b + step * ldb).
template <int NVEC>
ALWAYS_INLINE void panel_times_rows(const float *panel, const float *b, int64_t ldb, int64_t steps,
                                    vw (&acc)[PW_MR][NVEC]) {
  for (int i = 0; i < PW_MR; ++i)
    for (int v = 0; v < NVEC; ++v) acc[i][v] = vw{0.f};
  for (int64_t s = 0; s < steps; ++s) {
    vw bv[NVEC];
    for (int v = 0; v < NVEC; ++v) bv[v] = wload(b + s * ldb + v * PW_NV);
    const float *a = panel + s * PW_MR;
    for (int i = 0; i < PW_MR; ++i)
      for (int v = 0; v < NVEC; ++v) acc[i][v] += a[i] * bv[v];
  }
}

template <int NVEC>
ALWAYS_INLINE void pw_tile(const float *wp, const float *x, int64_t ldx, int64_t k, const PwOut &o,
                           int64_t m0, int64_t p0, int64_t ncols) {
  vw acc[PW_MR][NVEC];
  panel_times_rows<NVEC>(wp, x, ldx, k, acc);
  const int64_t rows = std::min<int64_t>(PW_MR, o.m - m0);
  for (int64_t i = 0; i < rows; ++i) {
    const float bias = o.b ? o.b[m0 + i] : 0.f;
    float *dst = o.y + (m0 + i) * o.ldy + p0;
    const float *res = o.r ? o.r + (m0 + i) * o.ldy + p0 : nullptr;
    for (int v = 0; v < NVEC; ++v) {
      vw val = activate_v(acc[i][v] + bias, o.act);
      if (ncols >= (v + 1) * PW_NV) {
        if (res) val += wload(res + v * PW_NV);
        wstore(dst + v * PW_NV, val);
      } else {
        for (int64_t c = v * PW_NV; c < ncols; ++c) dst[c] = val[c - v * PW_NV] + (res ? res[c] : 0.f);
      }
    }
  }
}

// Output-channel blocks [blk0, blk1) of one image: X[K][HW] (row stride HW) -> Y.
void pw_image(const float *wp, const float *x, int64_t k, int64_t hw, const PwOut &o, int64_t blk0,
              int64_t blk1, float *tail) {
  int64_t p0 = 0;
  for (; p0 + 2 * PW_NV <= hw; p0 += 2 * PW_NV)
    for (int64_t blk = blk0; blk < blk1; ++blk)
      pw_tile<2>(wp + blk * k * PW_MR, x + p0, hw, k, o, blk * PW_MR, p0, 2 * PW_NV);
  if (p0 + PW_NV <= hw) {
    for (int64_t blk = blk0; blk < blk1; ++blk)
      pw_tile<1>(wp + blk * k * PW_MR, x + p0, hw, k, o, blk * PW_MR, p0, PW_NV);
    p0 += PW_NV;
  }
  if (p0 < hw) {  // the last < PW_NV pixels, through a zero-padded copy
    const int64_t nc = hw - p0;
    for (int64_t kk = 0; kk < k; ++kk) {
      std::memcpy(tail + kk * PW_NV, x + kk * hw + p0, sizeof(float) * nc);
      std::fill(tail + kk * PW_NV + nc, tail + (kk + 1) * PW_NV, 0.f);
    }
    for (int64_t blk = blk0; blk < blk1; ++blk)
      pw_tile<1>(wp + blk * k * PW_MR, tail, PW_NV, k, o, blk * PW_MR, p0, nc);
  }
}

// Images x channel chunks, so a single image (the classifier) still uses every thread.
// `trans_w`: w is [K][M] (see pack_pw_weight).
void pw_images(const float *w, const float *x, const float *b, const float *r, int act, float *y,
               int64_t n, int64_t m, int64_t k, int64_t hw, bool trans_w = false) {
  const int64_t blocks = (m + PW_MR - 1) / PW_MR;
  const int64_t chunk = n >= 8 ? blocks : std::max<int64_t>(1, blocks / 8);
  const int64_t chunks = (blocks + chunk - 1) / chunk, tasks = n * chunks;
  std::vector<float> wp(blocks * k * PW_MR);
#pragma omp parallel
  {
    pack_pw_weight(w, wp.data(), m, k, trans_w);
    std::vector<float> tail(k * PW_NV);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t img = t / chunks, c0 = (t % chunks) * chunk;
      const PwOut o{b, r ? r + img * m * hw : nullptr, y + img * m * hw, hw, m, act};
      pw_image(wp.data(), x + img * k * hw, k, hw, o, c0, std::min(blocks, c0 + chunk), tail.data());
    }
  }
}

// Global average pool: [N][C][HW] -> [N][C].
void mean_hw_all(const float *x, float *y, int64_t nc, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nc; ++t) y[t] = plane_sum(x + t * hw, hw) / static_cast<float>(hw);
}

// ---- Squeeze-excite and the global average pool in training (core/nn/cpu_ops.py) ---------
// MindSpore's CPU ReduceMean, its gradient (Tile + RealDiv) and the broadcast Mul's gradient
// (Mul + ReduceSum) cost about a quarter of a 224 px train step. One plane per iteration: every
// sum runs in one thread, so the results do not depend on the thread count.

// Gradient of the pool: dx = dm / HW on every pixel of the plane (as Tile + RealDiv).
void mean_hw_bwd_all(const float *dm, float *dx, int64_t nc, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nc; ++t) std::fill_n(dx + t * hw, hw, dm[t] / static_cast<float>(hw));
}

// y = x * s, one scale per plane (SE's gate).
void scale_channels_all(const float *x, const float *s, float *y, int64_t nc, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nc; ++t) scale_plane(x + t * hw, s[t], y + t * hw, hw);
}

float plane_dot(const float *a, const float *b, int64_t hw) { return dot(a, b, hw); }

// Gradients of y = x * s: dx = dy * s, ds = sum over the plane of dy * x.
void scale_channels_bwd_all(const float *dy, const float *x, const float *s, float *dx, float *ds,
                            int64_t nc, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nc; ++t) {
    ds[t] = plane_dot(dy + t * hw, x + t * hw, hw);
    scale_plane(dy + t * hw, s[t], dx + t * hw, hw);
  }
}

// ---- The training batch's normalisation (core/nn/cpu_ops.py FastNormalizeImage) ----------
// uint8 NHWC -> float32 NCHW, (x - mean) / std: the ops MindSpore runs for it (Transpose, Cast,
// Sub, RealDiv) in one pass, bit-identical (no contraction: a subtraction then a division).
void normalize_nhwc_all(const uint8_t *x, const float *mean, const float *std_, float *y, int64_t n,
                        int64_t h, int64_t w, int64_t c) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n * h; ++r) {
    const int64_t i = r / h, row = r % h;
    const uint8_t *src = x + r * w * c;
    for (int64_t cc = 0; cc < c; ++cc) {
      float *dst = y + ((i * c + cc) * h + row) * w;
      const float m = mean[cc], s = std_[cc];
      for (int64_t col = 0; col < w; ++col) dst[col] = (static_cast<float>(src[col * c + cc]) - m) / s;
    }
  }
}

// Dense layer y[N][M] = act(x[N][K] W[M][K]^T + b): the GEMM on x transposed ([K][N], one
// "image" of N pixels), then transposed back.
void linear_all(const float *x, const float *w, const float *b, int act, float *y, int64_t n, int64_t m,
                int64_t k) {
  std::vector<float> xt(k * n), yt(m * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) xt[j * n + i] = x[i * k + j];
  pw_images(w, xt.data(), b, nullptr, act, yt.data(), 1, m, k, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) y[i * m + j] = yt[j * n + i];
}

// ---- 1x1 convolutions in training (core/nn/cpu_ops.py FastPointwise2d) -------------------
// Per image, forward Y = W X and input gradient dX = W^T dY are the GEMM above (pw_images; the
// weight packed transposed for dX). The weight gradient dW[M][K] = sum_n dY[n] X[n]^T reduces
// over images and pixels: per block of PW_PB pixels, dY's rows are packed into panels
// [M/PW_MR][pixels][PW_MR] and X's block transposed to [pixels][K'] (K' = K rounded up to a
// vector), then tiles of PW_MR x two vectors accumulate in float registers over the block's pixels and
// are added into one double accumulator per thread (ThreadSums: deterministic for a given
// thread count, and as accurate as the reference over N * H * W terms).
constexpr int64_t PW_PB = 256;  // pixels per block of the weight gradient

// Columns [p0, p0 + np) of rows [0, m) of a [m][ld] matrix -> panels [ceil(m/PW_MR)][np][PW_MR].
void pack_row_panels(const float *a, int64_t ld, int64_t m, int64_t p0, int64_t np, float *dst) {
  const int64_t blocks = (m + PW_MR - 1) / PW_MR;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    float *d = dst + blk * np * PW_MR;
    for (int64_t i = 0; i < PW_MR; ++i) {
      const int64_t row = blk * PW_MR + i;
      if (row < m) {
        const float *src = a + row * ld + p0;
        for (int64_t p = 0; p < np; ++p) d[p * PW_MR + i] = src[p];
      } else {
        for (int64_t p = 0; p < np; ++p) d[p * PW_MR + i] = 0.f;
      }
    }
  }
}

// Columns [p0, p0 + np) of a [k][ld] matrix, transposed -> [np][ldt] (columns >= k untouched).
void transpose_block(const float *x, int64_t ld, int64_t k, int64_t p0, int64_t np, float *dst, int64_t ldt) {
  for (int64_t kk = 0; kk < k; ++kk) {
    const float *src = x + kk * ld + p0;
    for (int64_t p = 0; p < np; ++p) dst[p * ldt + kk] = src[p];
  }
}

// c[PW_MR][NVEC * PW_NV] (row stride ldc, double) += A-panel[np][PW_MR]^T B[np][NVEC * PW_NV].
template <int NVEC>
ALWAYS_INLINE void wgrad_tile(const float *ap, const float *b, int64_t ldb, int64_t np, double *c, int64_t ldc) {
  vw acc[PW_MR][NVEC];
  panel_times_rows<NVEC>(ap, b, ldb, np, acc);
  for (int i = 0; i < PW_MR; ++i)
    for (int v = 0; v < NVEC; ++v) {
      double *d = c + i * ldc + v * PW_NV;
      for (int l = 0; l < PW_NV; ++l) d[l] += acc[i][v][l];
    }
}

// One pixel block: every output-channel panel against every column tile of the transposed X.
void wgrad_block(const float *ap, const float *bt, int64_t ldt, int64_t np, int64_t mblocks, double *c) {
  for (int64_t blk = 0; blk < mblocks; ++blk) {
    const float *a = ap + blk * np * PW_MR;
    double *cr = c + blk * PW_MR * ldt;
    int64_t col = 0;
    for (; col + 2 * PW_NV <= ldt; col += 2 * PW_NV) wgrad_tile<2>(a, bt + col, ldt, np, cr + col, ldt);
    if (col < ldt) wgrad_tile<1>(a, bt + col, ldt, np, cr + col, ldt);
  }
}

// dw[M][K] = sum over images of dy[n] ([M][HW]) x[n]^T ([HW][K]); tasks are (image, pixel block).
void pw_wgrad_all(const float *dy, const float *x, float *dw, int64_t n, int64_t m, int64_t k, int64_t hw) {
  const int64_t mblocks = (m + PW_MR - 1) / PW_MR, ldt = (k + PW_NV - 1) / PW_NV * PW_NV;
  const int64_t pb = std::min(hw, PW_PB), pblocks = (hw + pb - 1) / pb, tasks = n * pblocks;
  ThreadSums sums(mblocks * PW_MR * ldt);
#pragma omp parallel
  {
    sums.start();
    double *mine = sums.mine();
    std::vector<float> ap(mblocks * PW_MR * pb), bt(pb * ldt, 0.f);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t img = t / pblocks, p0 = (t % pblocks) * pb, np = std::min(pb, hw - p0);
      pack_row_panels(dy + img * m * hw, hw, m, p0, np, ap.data());
      transpose_block(x + img * k * hw, hw, k, p0, np, bt.data(), ldt);
      wgrad_block(ap.data(), bt.data(), ldt, np, mblocks, mine);
    }
  }
  for (int64_t o = 0; o < m; ++o)
    for (int64_t c = 0; c < k; ++c) dw[o * k + c] = static_cast<float>(sums.total(o * ldt + c));
}

// ---- BatchNorm with batch statistics + activation, in training (core/nn/cpu_ops.py) --------
// MindSpore runs a training conv unit's BatchNorm and its activation as separate passes over the
// activations (hard-swish alone: add, relu6, mul, div) and as many again for the gradients.
// Here the forward is one pass for the statistics and one for y = act((x - mean) * scale + beta)
// (scale = gamma / sqrt(var + eps)); the backward one pass for the two sums (the activation's
// derivative recomputed from x) and one for dx. Sums over (N, H, W) in double.
ALWAYS_INLINE vw act_grad_v(vw u, vw d, int act) {
  const vw zero = {0.f};
  if (act == kRelu) return u > zero ? d : zero;
  if (act == kHswish) {  // d/du u * relu6(u + 3) / 6 = (relu6(u + 3) + u [-3 < u < 3]) / 6
    vw t = u + 3.f;
    t = t > zero ? t : zero;
    t = t < zero + 6.f ? t : zero + 6.f;
    const vw inner = (u > zero - 3.f) & (u < zero + 3.f) ? u : zero;
    return d * (t + inner) * (1.f / 6.f);
  }
  return d;
}

// Sum and sum of squares of one plane, in double.
void plane_moments(const float *x, int64_t hw, double *s1, double *s2) {
  double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t t = 0; t < hw; ++t) {
    const double v = x[t];
    a += v;
    b += v * v;
  }
  *s1 += a;
  *s2 += b;
}

// Plane loops run a vector at a time; the last n < PW_NV elements through zero-padded vectors.
ALWAYS_INLINE vw load_n(const float *p, int64_t n) {
  if (n == PW_NV) return wload(p);
  vw v = {0.f};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}

ALWAYS_INLINE void store_n(float *p, vw v, int64_t n) {
  if (n == PW_NV) {
    wstore(p, v);
    return;
  }
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}

// y = act((x - mean) * scale + beta) over one plane.
void bn_act_plane(const float *x, float mean, float scale, float beta, int act, float *y, int64_t hw) {
  for (int64_t t = 0; t < hw; t += PW_NV) {
    const int64_t n = std::min<int64_t>(PW_NV, hw - t);
    store_n(y + t, activate_v((load_n(x + t, n) - mean) * scale + beta, act), n);
  }
}

// Per-channel statistics of a BN unit: scale = gamma * invstd, and for the backward the sums.
struct BnChannel {
  float mean, invstd, scale, beta;
};

BnChannel bn_channel(double mean, double var, double eps, float gamma, float beta) {
  const double invstd = 1.0 / std::sqrt(var + eps);
  return {static_cast<float>(mean), static_cast<float>(invstd), static_cast<float>(gamma * invstd), beta};
}

void bn_act_fwd_all(const float *x, const float *gamma, const float *beta, double eps, int act, float *y,
                    float *mean, float *var, int64_t n, int64_t c, int64_t hw) {
  std::vector<BnChannel> ch(c);
  const double count = static_cast<double>(n * hw);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t cc = 0; cc < c; ++cc) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t i = 0; i < n; ++i) plane_moments(x + (i * c + cc) * hw, hw, &s1, &s2);
      const double m = s1 / count, v = std::max(0.0, s2 / count - m * m);
      mean[cc] = static_cast<float>(m);
      var[cc] = static_cast<float>(v);
      ch[cc] = bn_channel(m, v, eps, gamma[cc], beta[cc]);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n * c; ++t) {
      const BnChannel &b = ch[t % c];
      bn_act_plane(x + t * hw, b.mean, b.scale, b.beta, act, y + t * hw, hw);
    }
  }
}

// Backward sums of one plane: du = dy * act'(u), u = (x - mean) * scale + beta;
// sdu += du, sdux += du * (x - mean).
void bn_act_bwd_sums(const float *dy, const float *x, const BnChannel &b, int act, int64_t hw, double *sdu,
                     double *sdux) {
  vw a1 = {0.f}, a2 = {0.f};
  double d1 = 0.0, d2 = 0.0;
  for (int64_t t = 0; t < hw; t += PW_NV) {
    const int64_t n = std::min<int64_t>(PW_NV, hw - t);
    const vw xc = load_n(x + t, n) - b.mean;
    const vw du = act_grad_v(xc * b.scale + b.beta, load_n(dy + t, n), act);
    a1 += du;  // padded lanes: dy is zero there
    a2 += du * xc;
    if ((t + PW_NV) % 1024 == 0) {  // float partials of <= 1024 pixels, summed in double
      for (int l = 0; l < PW_NV; ++l) d1 += a1[l], d2 += a2[l];
      a1 = vw{0.f};
      a2 = vw{0.f};
    }
  }
  for (int l = 0; l < PW_NV; ++l) d1 += a1[l], d2 += a2[l];
  *sdu += d1;
  *sdux += d2;
}

// dx = k1 * du + k2 * (x - mean) + k3 over one plane.
void bn_act_bwd_plane(const float *dy, const float *x, const BnChannel &b, int act, float k1, float k2, float k3,
                      float *dx, int64_t hw) {
  for (int64_t t = 0; t < hw; t += PW_NV) {
    const int64_t n = std::min<int64_t>(PW_NV, hw - t);
    const vw xc = load_n(x + t, n) - b.mean;
    const vw du = act_grad_v(xc * b.scale + b.beta, load_n(dy + t, n), act);
    store_n(dx + t, k1 * du + k2 * xc + k3, n);
  }
}

void bn_act_bwd_all(const float *dy, const float *x, const float *gamma, const float *beta, const float *mean,
                    const float *var, double eps, int act, float *dx, float *dgamma, float *dbeta, int64_t n,
                    int64_t c, int64_t hw) {
  std::vector<BnChannel> ch(c);
  std::vector<float> k(3 * c);
  const double count = static_cast<double>(n * hw);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t cc = 0; cc < c; ++cc) {
      const BnChannel b = ch[cc] = bn_channel(mean[cc], var[cc], eps, gamma[cc], beta[cc]);
      double sdu = 0.0, sdux = 0.0;
      for (int64_t i = 0; i < n; ++i) bn_act_bwd_sums(dy + (i * c + cc) * hw, x + (i * c + cc) * hw, b, act, hw, &sdu, &sdux);
      const double invstd = 1.0 / std::sqrt(static_cast<double>(var[cc]) + eps);
      const double k1 = gamma[cc] * invstd;
      dbeta[cc] = static_cast<float>(sdu);
      dgamma[cc] = static_cast<float>(sdux * invstd);
      k[3 * cc] = static_cast<float>(k1);
      k[3 * cc + 1] = static_cast<float>(-k1 * invstd * invstd * sdux / count);
      k[3 * cc + 2] = static_cast<float>(-k1 * sdu / count);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n * c; ++t) {
      const int64_t cc = t % c;
      bn_act_bwd_plane(dy + t * hw, x + t * hw, ch[cc], act, k[3 * cc], k[3 * cc + 1], k[3 * cc + 2], dx + t * hw, hw);
    }
  }
}

// ---- Forward convolutions over stride phases, vectorised along the pixels ---------------
// Each input plane is zero-padded and split into its S x S stride phases (Phases); an output
// pixel's tap (i, j) is then at the same offset from the pixel's "extended" index
// e = oy * wq + ox in every tap's phase, so each tap of a run of consecutive outputs is one
// contiguous vector load (no transposes, no gathers), whatever the stride and plane size.
// Outputs are computed at extended indices (wq - OW scratch columns per row) and copied out
// row by row. Accumulation order (bias, then the taps in (channel, row, column) order) is the
// same as a direct loop's.
constexpr int64_t PH_SLACK = 4 * PW_NV;  // zeros after the phases: vector loads past the end

// dst[i] = src[i * S] for i < count; stride 2 (the stride-2 convs) deinterleaves whole vectors.
void strided_copy(const float *src, float *dst, int64_t count, int64_t S) {
  int64_t i = 0;
  if (S == 2) {
    typedef int vi __attribute__((vector_size(PW_NV * sizeof(int))));
#if defined(__AVX512F__)
    const vi even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
#elif defined(__AVX__)
    const vi even = {0, 2, 4, 6, 8, 10, 12, 14};
#else
    const vi even = {0, 2, 4, 6};
#endif
    // reads src[2i, 2i + 2 PW_NV): within the 2 count - 1 elements the row has past src
    for (; 2 * i + 2 * PW_NV <= 2 * count - 1; i += PW_NV)
      wstore(dst + i, __builtin_shuffle(wload(src + 2 * i), wload(src + 2 * i + PW_NV), even));
  }
  for (; i < count; ++i) dst[i] = src[i * S];
}

// One plane (H x W) -> its zero-padded stride phases, q.size() + PH_SLACK floats.
void to_phases(const float *plane, float *ph, const Geom &g, const Phases &q) {
  std::memset(ph, 0, sizeof(float) * (q.size() + PH_SLACK));
  const int64_t S = q.S;
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t yp = y + g.p, a = yp % S, r = yp / S;
    const float *src = plane + y * g.w;
    if (S == 1) {
      std::memcpy(ph + r * q.wq + g.p, src, sizeof(float) * g.w);
      continue;
    }
    for (int64_t b = 0; b < S; ++b) {  // columns x with (x + p) % S == b
      const int64_t x0 = (b - g.p % S + S) % S;
      float *dst = ph + (a * S + b) * q.plane + r * q.wq + (x0 + g.p) / S;
      strided_copy(src + x0, dst, (g.w - x0 + S - 1) / S, S);
    }
  }
}

// Extended outputs [e0, e1) -> output rows (dropping the scratch columns).
void from_extended(const float *ext, float *y, const Geom &g, const Phases &q, int64_t oy0, int64_t oy1) {
  for (int64_t oy = oy0; oy < oy1; ++oy)
    std::memcpy(y + oy * g.ow, ext + (oy - oy0) * q.wq, sizeof(float) * g.ow);
}

// Depthwise: one channel's plane, four vectors of outputs per pass over the taps (the last
// <= 2 vectors one at a time, so 7x7 planes compute 80 extended outputs, not 128).
void dw_plane(const float *ph, const float *wk, const int64_t *taps, float bias, int act, float *ext,
              const Geom &g, const Phases &q) {
  const int64_t kk = g.k * g.k;
  const vw b = vw{0.f} + bias;
  int64_t e = 0;
  for (; e + 2 * PW_NV < q.L; e += 4 * PW_NV) {
    vw a0 = b, a1 = b, a2 = b, a3 = b;
    for (int64_t t = 0; t < kk; ++t) {
      const float *src = ph + taps[t] + e;
      const float wv = wk[t];
      a0 += wv * wload(src);
      a1 += wv * wload(src + PW_NV);
      a2 += wv * wload(src + 2 * PW_NV);
      a3 += wv * wload(src + 3 * PW_NV);
    }
    wstore(ext + e, activate_v(a0, act));
    wstore(ext + e + PW_NV, activate_v(a1, act));
    wstore(ext + e + 2 * PW_NV, activate_v(a2, act));
    wstore(ext + e + 3 * PW_NV, activate_v(a3, act));
  }
  for (; e < q.L; e += PW_NV) {  // the last few vectors one at a time (small planes)
    vw a0 = b;
    for (int64_t t = 0; t < kk; ++t) a0 += wk[t] * wload(ph + taps[t] + e);
    wstore(ext + e, activate_v(a0, act));
  }
}

void dw_fwd_all(const float *x, const float *w, const float *bias, int act, float *y, const Geom &g) {
  const Phases q(g);
  const int64_t kk = g.k * g.k, ext_len = (q.L + 4 * PW_NV - 1) / (4 * PW_NV) * (4 * PW_NV);
  std::vector<int64_t> taps(kk);  // offset of each tap in the phases
  for (int64_t i = 0; i < g.k; ++i)
    for (int64_t j = 0; j < g.k; ++j) taps[i * g.k + j] = q.tap(i, j);
#pragma omp parallel
  {
    std::vector<float> ph(q.size() + PH_SLACK + ext_len), ext(ext_len);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < g.n * g.c; ++t) {
      const int64_t c = t % g.c;
      to_phases(x + t * g.h * g.w, ph.data(), g, q);
      dw_plane(ph.data(), w + c * kk, taps.data(), bias ? bias[c] : 0.f, act, ext.data(), g, q);
      from_extended(ext.data(), y + t * g.oh * g.ow, g, q, 0, g.oh);
    }
  }
}

// Grouped / dense (the stem): OB output channels of a group at once, one vector of extended
// outputs per pass over the group's input channels and taps; tasks of GRP_ROWS output rows.
constexpr int64_t GRP_ROWS = 4;  // output rows per task

void grp_rows(const float *ph, int64_t phstride, const float *wb, const float *bv, int act, float *ext,
              int64_t ldext, int64_t e0, int64_t e1, const Geom &g, const Phases &q) {
  const int64_t k = g.k;
  for (int64_t e = e0; e < e1; e += PW_NV) {
    vw acc[OB];
    for (int64_t o = 0; o < OB; ++o) acc[o] = vw{0.f} + bv[o];
    for (int64_t cl = 0; cl < g.cpg; ++cl)
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const vw xv = wload(ph + cl * phstride + q.tap(i, j) + e);
          const float *wr = wb + ((cl * k + i) * k + j) * OB;
          for (int64_t o = 0; o < OB; ++o) acc[o] += wr[o] * xv;
        }
    for (int64_t o = 0; o < OB; ++o) wstore(ext + o * ldext + (e - e0), activate_v(acc[o], act));
  }
}

void grp_fwd_all(const float *x, const float *w, const float *bias, int act, float *y, const Geom &g) {
  const Phases q(g);
  const int64_t groups = g.c / g.cpg, kk = g.k * g.k, oblocks = (g.opg + OB - 1) / OB;
  const int64_t phstride = q.size() + PH_SLACK, ldext = (GRP_ROWS * q.wq + PW_NV - 1) / PW_NV * PW_NV;
  std::vector<float> ph(g.n * g.c * phstride);
  // Weights [group][oblock][cpg][k*k][OB] and biases [group][oblock][OB], zero beyond opg.
  std::vector<float> wb(groups * oblocks * g.cpg * kk * OB, 0.f), bv(groups * oblocks * OB, 0.f);
  for (int64_t o = 0; o < g.co; ++o) {
    const int64_t grp = o / g.opg, ol = o % g.opg, blk = grp * oblocks + ol / OB, cc = ol % OB;
    for (int64_t cl = 0; cl < g.cpg; ++cl)
      for (int64_t t = 0; t < kk; ++t) wb[((blk * g.cpg + cl) * kk + t) * OB + cc] = w[(o * g.cpg + cl) * kk + t];
    if (bias) bv[blk * OB + cc] = bias[o];
  }
  const int64_t row_blocks = (g.oh + GRP_ROWS - 1) / GRP_ROWS, tasks = g.n * groups * oblocks * row_blocks;
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < g.n * g.c; ++t) to_phases(x + t * g.h * g.w, ph.data() + t * phstride, g, q);
    std::vector<float> ext(OB * ldext);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t rb = t % row_blocks, blk_all = t / row_blocks, n = blk_all / (groups * oblocks);
      const int64_t blk = blk_all % (groups * oblocks), grp = blk / oblocks, ob = blk % oblocks;
      const int64_t o0 = grp * g.opg + ob * OB, nl = std::min<int64_t>(OB, g.opg - ob * OB);
      const int64_t oy0 = rb * GRP_ROWS, oy1 = std::min(g.oh, oy0 + GRP_ROWS);
      const int64_t e0 = oy0 * q.wq, e1 = std::min(q.L, oy1 * q.wq);
      grp_rows(ph.data() + (n * g.c + grp * g.cpg) * phstride, phstride, wb.data() + blk * g.cpg * kk * OB,
               bv.data() + blk * OB, act, ext.data(), ldext, e0, e1, g, q);
      for (int64_t cc = 0; cc < nl; ++cc)
        from_extended(ext.data() + cc * ldext, y + (n * g.co + o0 + cc) * g.oh * g.ow, g, q, oy0, oy1);
    }
  }
}

// Forward of either layout (bias and activation optional: b may be null, act kNone).
void conv_fwd_all(const float *x, const float *w, const float *b, int act, float *y, const Geom &g) {
  if (is_depthwise(g)) dw_fwd_all(x, w, b, act, y, g);
  else grp_fwd_all(x, w, b, act, y, g);
}

}  // namespace

// What an entry point returns to MindSpore; anything but kOk fails the op with that code.
enum Status : int {
  kOk = 0,
  kBadArity = 1,  // wrong number of inputs and outputs, or of dimensions
  kBadDtype = 2,  // an input that is not float32 (uint8 where said)
  kBadShape = 3,  // shapes that do not fit together
};

extern "C" {

// Exported AOT entry points that only bind arguments of a shared implementation:
// AOT_ENTRY(Name, impl, args...) is int Name(<AOT signature>) { return impl(<first five>, args...); }
// and AOT_ACT_ENTRIES defines Name, Name##Relu and Name##Hswish with kNone, kRelu and kHswish
// as the first bound argument.
#define AOT_ENTRY(Name, impl, ...)                                                     \
  int Name(int np, void **p, int *nd, int64_t **sh, const char **dt, void *, void *) { \
    return impl(np, p, nd, sh, dt, __VA_ARGS__);                                       \
  }
#define AOT_ACT_ENTRIES(Name, impl, ...)               \
  AOT_ENTRY(Name, impl, kNone, ##__VA_ARGS__)          \
  AOT_ENTRY(Name##Relu, impl, kRelu, ##__VA_ARGS__)    \
  AOT_ENTRY(Name##Hswish, impl, kHswish, ##__VA_ARGS__)

int DepthwiseFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                 void *stream, void *extra) {
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return kBadArity;
  if (!all_f32(2, dtypes)) return kBadDtype;
  Geom g;
  if (!infer_geom(shapes[0], shapes[2], shapes[1], &g)) return kBadShape;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  conv_fwd_all(x, w, nullptr, kNone, static_cast<float *>(params[2]), g);
  return kOk;
}

int DepthwiseBwdInput(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                      void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[3] != 4) return kBadArity;
  if (!all_f32(2, dtypes)) return kBadDtype;
  Geom g;
  if (!infer_geom(shapes[3], shapes[0], shapes[1], &g)) return kBadShape;
  const float *dy = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[3]);
  if (is_depthwise(g)) dw_bwd_input_all(dy, w, dx, g);
  else bwd_input_all(dy, w, dx, g);
  return kOk;
}

int DepthwiseBwdWeight(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4) return kBadArity;
  if (!all_f32(2, dtypes)) return kBadDtype;
  Geom g;
  if (!infer_geom(shapes[1], shapes[0], shapes[3], &g)) return kBadShape;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dw = static_cast<float *>(params[3]);
  if (is_depthwise(g)) dw_bwd_weight_all(dy, x, dw, g);
  else grp_bwd_weight_all(dy, x, dw, g);
  return kOk;
}

// Inference entry points (core/nn/fuse.py): conv with the BN folded into (w, b), then activation.
//   DepthwiseFwdBias{,Relu,Hswish}(x, w, b[CO]) -> y
//   BiasAct{,Relu,Hswish}(x[N,C,H,W], b[C]) -> y;  BiasAddResidual(x, b, r) -> x + b + r
//   SqueezeExcite(x, w1[S,C,1,1], b1[S], w2[C,S,1,1], b2[C]) -> y
static int conv_bias_act(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         int act) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 1 || ndims[3] != 4) return kBadArity;
  if (!all_f32(3, dtypes)) return kBadDtype;
  Geom g;
  if (!infer_geom(shapes[0], shapes[3], shapes[1], &g) || shapes[2][0] != g.co) return kBadShape;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  conv_fwd_all(x, w, b, act, static_cast<float *>(params[3]), g);
  return kOk;
}

AOT_ACT_ENTRIES(DepthwiseFwdBias, conv_bias_act)

static int bias_act(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                    int act, bool residual) {
  const int nin = residual ? 3 : 2;
  if (nparam != nin + 1 || ndims[0] != 4 || ndims[1] != 1 || ndims[nin] != 4) return kBadArity;
  if (!all_f32(2, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[0];
  if (shapes[1][0] != sx[1]) return kBadShape;
  if (residual) {
    if (ndims[2] != 4 || !is_f32(dtypes[2])) return kBadArity;
    if (!same_shape4(shapes[2], sx)) return kBadShape;
  }
  bias_act_all(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               residual ? static_cast<const float *>(params[2]) : nullptr, act,
               static_cast<float *>(params[nin]), sx[0], sx[1], sx[2] * sx[3]);
  return kOk;
}

AOT_ACT_ENTRIES(BiasAct, bias_act, false)
AOT_ENTRY(BiasAddResidual, bias_act, kNone, true)

int SqueezeExcite(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                  void *stream, void *extra) {
  if (nparam != 6 || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4 || ndims[5] != 4) return kBadArity;
  if (!all_f32(5, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[0], c = sx[1], sq = shapes[1][0];
  if (shapes[1][1] != c || shapes[2][0] != sq || shapes[3][0] != c || shapes[3][1] != sq ||
      shapes[4][0] != c)
    return kBadShape;
  squeeze_excite_all(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                     static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                     static_cast<const float *>(params[4]), static_cast<float *>(params[5]), sx[0], c,
                     sq, sx[2] * sx[3]);
  return kOk;
}

// Inference GEMM entry points (core/nn/fuse.py):
//   Pointwise{,Relu,Hswish}(x[N,K,H,W], w[M,K,1,1], b[M]) -> act(conv1x1(x, w) + b)
//   PointwiseResidual(x, w, b, r[N,M,H,W]) -> conv1x1(x, w) + b + r
//   MeanHW(x[N,C,H,W]) -> [N,C];  Linear{,Hswish}(x[N,K], w[M,K], b[M]) -> act(x w^T + b)
static int pointwise(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, int act,
                     bool residual) {
  const int nin = residual ? 4 : 3;
  if (nparam != nin + 1 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 1 || ndims[nin] != 4) return kBadArity;
  if (!all_f32(nin, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[0], *sw = shapes[1], m = sw[0], hw = sx[2] * sx[3];
  if (sw[1] != sx[1] || sw[2] != 1 || sw[3] != 1 || shapes[2][0] != m) return kBadShape;
  if (residual) {
    if (ndims[3] != 4 || shapes[3][0] != sx[0] || shapes[3][1] != m || shapes[3][2] * shapes[3][3] != hw)
      return kBadShape;
  }
  pw_images(static_cast<const float *>(params[1]), static_cast<const float *>(params[0]),
            static_cast<const float *>(params[2]), residual ? static_cast<const float *>(params[3]) : nullptr,
            act, static_cast<float *>(params[nin]), sx[0], m, sx[1], hw);
  return kOk;
}

AOT_ACT_ENTRIES(Pointwise, pointwise, false)
AOT_ENTRY(PointwiseResidual, pointwise, kNone, true)

// Training entry points of 1x1 convs (stride 1, one group, no bias; core/nn/cpu_ops.py):
//   PointwiseFwd(x[N,K,H,W], w[M,K,1,1]) -> y[N,M,H,W]
//   PointwiseBwdInput(dy[N,M,H,W], w, x (shape only)) -> dx[N,K,H,W]
//   PointwiseBwdWeight(dy[N,M,H,W], x[N,K,H,W], w (shape only)) -> dw[M,K,1,1]
// pw_shapes checks that x [N,K,H,W], w [M,K,1,1] and y [N,M,H,W] agree.
static bool pw_shapes(const int64_t *sx, const int64_t *sw, const int64_t *sy) {
  return sw[1] == sx[1] && sw[2] == 1 && sw[3] == 1 && sy[0] == sx[0] && sy[1] == sw[0] &&
         sy[2] == sx[2] && sy[3] == sx[3];
}

int PointwiseFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return kBadArity;
  if (!all_f32(2, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[0], *sw = shapes[1];
  if (!pw_shapes(sx, sw, shapes[2])) return kBadShape;
  pw_images(static_cast<const float *>(params[1]), static_cast<const float *>(params[0]), nullptr, nullptr,
            kNone, static_cast<float *>(params[2]), sx[0], sw[0], sx[1], sx[2] * sx[3]);
  return kOk;
}

int PointwiseBwdInput(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                      void *) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 4) return kBadArity;
  if (!all_f32(2, dtypes)) return kBadDtype;
  const int64_t *sdy = shapes[0], *sw = shapes[1], *sx = shapes[3];
  if (!pw_shapes(sx, sw, sdy)) return kBadShape;
  // dx[n] = W^T dy[n]: the forward GEMM with M and K swapped and W read transposed
  pw_images(static_cast<const float *>(params[1]), static_cast<const float *>(params[0]), nullptr, nullptr,
            kNone, static_cast<float *>(params[3]), sx[0], sx[1], sw[0], sx[2] * sx[3], true);
  return kOk;
}

int PointwiseBwdWeight(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                       void *) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 4) return kBadArity;
  if (!all_f32(2, dtypes)) return kBadDtype;
  const int64_t *sdy = shapes[0], *sx = shapes[1], *sw = shapes[3];
  if (!pw_shapes(sx, sw, sdy)) return kBadShape;
  pw_wgrad_all(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               static_cast<float *>(params[3]), sx[0], sw[0], sx[1], sx[2] * sx[3]);
  return kOk;
}

// Training BatchNorm (batch statistics) + activation (core/nn/cpu_ops.py ConvBNAct):
//   BnActFwd{,Relu,Hswish}(x[N,C,H,W], gamma[C], beta[C], eps[1]) -> y, mean[C], var[C] (biased)
//   BnActBwd{,Relu,Hswish}(dy, x, gamma, beta, mean, var, eps[1]) -> dx, dgamma[C], dbeta[C]
static bool bn_inputs_ok(int nin, int *ndims, int64_t **shapes, const char **dtypes) {
  if (ndims[0] != 4) return false;
  for (int i = 0; i < nin; ++i) {
    if (!is_f32(dtypes[i])) return false;
    if (ndims[i] == 1 && shapes[i][0] != shapes[0][1] && shapes[i][0] != 1) return false;
  }
  return true;
}

static int bn_act_fwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, int act) {
  if (nparam != 7 || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 1 || ndims[4] != 4) return kBadArity;
  if (!bn_inputs_ok(4, ndims, shapes, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[0];
  auto f = [&](int i) { return static_cast<float *>(params[i]); };
  bn_act_fwd_all(f(0), f(1), f(2), *f(3), act, f(4), f(5), f(6), sx[0], sx[1], sx[2] * sx[3]);
  return kOk;
}

static int bn_act_bwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, int act) {
  if (nparam != 10 || ndims[1] != 4 || ndims[7] != 4) return kBadArity;
  if (!bn_inputs_ok(7, ndims, shapes, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[1];
  if (!same_shape4(shapes[0], sx)) return kBadShape;
  auto f = [&](int i) { return static_cast<float *>(params[i]); };
  bn_act_bwd_all(f(0), f(1), f(2), f(3), f(4), f(5), *f(6), act, f(7), f(8), f(9), sx[0], sx[1], sx[2] * sx[3]);
  return kOk;
}

AOT_ACT_ENTRIES(BnActFwd, bn_act_fwd)
AOT_ACT_ENTRIES(BnActBwd, bn_act_bwd)

int MeanHW(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 2 || ndims[0] != 4 || ndims[1] != 2) return kBadArity;
  if (!is_f32(dtypes[0])) return kBadDtype;
  const int64_t *sx = shapes[0];
  mean_hw_all(static_cast<const float *>(params[0]), static_cast<float *>(params[1]), sx[0] * sx[1],
              sx[2] * sx[3]);
  return kOk;
}

// Squeeze-excite and the global average pool in training (core/nn/cpu_ops.py GlobalAvgPool,
// ScaleChannels); s, dm and ds hold one value per plane, as [N,C] or [N,C,1,1]:
//   MeanHWBwd(dm, x[N,C,H,W] (shape only)) -> dx;  ScaleChannels(x, s) -> x * s
//   ScaleChannelsBwd(dy, x, s) -> dx, ds
static bool per_plane(int ndim, const int64_t *shape, const int64_t *sx) {
  if (ndim != 2 && ndim != 4) return false;
  if (shape[0] != sx[0] || shape[1] != sx[1]) return false;
  return ndim == 2 || (shape[2] == 1 && shape[3] == 1);
}

int MeanHWBwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[1] != 4 || ndims[2] != 4 || !per_plane(ndims[0], shapes[0], shapes[1])) return kBadArity;
  if (!all_f32(3, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[1];
  mean_hw_bwd_all(static_cast<const float *>(params[0]), static_cast<float *>(params[2]), sx[0] * sx[1],
                  sx[2] * sx[3]);
  return kOk;
}

int ScaleChannels(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || ndims[2] != 4 || !per_plane(ndims[1], shapes[1], shapes[0])) return kBadArity;
  if (!all_f32(3, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[0];
  auto f = [&](int i) { return static_cast<float *>(params[i]); };
  scale_channels_all(f(0), f(1), f(2), sx[0] * sx[1], sx[2] * sx[3]);
  return kOk;
}

int ScaleChannelsBwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                     void *) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4) return kBadArity;
  if (!per_plane(ndims[2], shapes[2], shapes[1]) || !per_plane(ndims[4], shapes[4], shapes[1])) return kBadArity;
  if (!same_shape4(shapes[0], shapes[1])) return kBadShape;
  if (!all_f32(5, dtypes)) return kBadDtype;
  const int64_t *sx = shapes[1];
  auto f = [&](int i) { return static_cast<float *>(params[i]); };
  scale_channels_bwd_all(f(0), f(1), f(2), f(3), f(4), sx[0] * sx[1], sx[2] * sx[3]);
  return kOk;
}

//   NormalizeNhwc(x uint8 [N,H,W,C], mean[C], std[C]) -> float32 [N,C,H,W]
int NormalizeNhwc(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 4) return kBadArity;
  if (std::strcmp(dtypes[0], "uint8") != 0 || !all_f32(3, dtypes + 1)) return kBadDtype;
  const int64_t *sx = shapes[0];
  if (shapes[1][0] != sx[3] || shapes[2][0] != sx[3]) return kBadShape;
  normalize_nhwc_all(static_cast<const uint8_t *>(params[0]), static_cast<const float *>(params[1]),
                     static_cast<const float *>(params[2]), static_cast<float *>(params[3]), sx[0], sx[1],
                     sx[2], sx[3]);
  return kOk;
}

static int linear(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, int act) {
  if (nparam != 4 || ndims[0] != 2 || ndims[1] != 2 || ndims[2] != 1 || ndims[3] != 2) return kBadArity;
  if (!all_f32(3, dtypes)) return kBadDtype;
  const int64_t n = shapes[0][0], k = shapes[0][1], m = shapes[1][0];
  if (shapes[1][1] != k || shapes[2][0] != m) return kBadShape;
  linear_all(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
             static_cast<const float *>(params[2]), act, static_cast<float *>(params[3]), n, m, k);
  return kOk;
}

AOT_ENTRY(Linear, linear, kNone)
AOT_ENTRY(LinearHswish, linear, kHswish)

}  // extern "C"
