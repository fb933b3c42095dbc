// Training-image augmentation straight from JPEG bytes: crop-decode, resize, flip, colour jitter.
//
// Why: MindSpore 2.10's dataset engine links a libjpeg-turbo built without SIMD, and decoding is
// most of the input pipeline's time. This file decodes with the SIMD libjpeg-turbo that Pillow
// ships (loaded by core/data/jpeg_augment.py), and like MindSpore's RandomCropDecodeResize decodes
// only the rows down to the bottom of the crop and only the iMCU columns under it. When the
// crop is at least twice the output size, libjpeg's DCT scaling (1/2, 1/4, 1/8) decodes it
// directly at a smaller size. The box and the random factors are chosen by the caller
// (core/data/jpeg_augment.py), so the result is a pure function of (bytes, parameters).
//
// Resize is bilinear with half-pixel centres, clamped at the crop's edges: what OpenCV's
// INTER_LINEAR (MindSpore's Resize) does after a crop. Colour jitter follows MindSpore's
// RandomColorAdjust / torchvision's ColorJitter: brightness scales, contrast blends with the
// mean grey level, saturation blends with each pixel's grey level, in the caller's order,
// clamped to [0, 255] after each step and rounded once at the end.
//
// Build: core/kernels/build.sh (`make kernels`); headers in third_party/libjpeg-turbo.
#include <dlfcn.h>
#include <setjmp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "jpeglib.h"

#include "multi_isa.h"

namespace {

enum Status { kOk = 0, kError = 1, kUnsupported = 2 };

struct ErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// Warnings (damage after the headers, which libjpeg decodes around) are not printed.
void on_emit_message(j_common_ptr, int) {}

void set_message(char* out, int out_len, const char* text) {
  if (out && out_len > 0) std::snprintf(out, out_len, "%s", text);
}

// Where the output box lies in an image: left, top, width, height in that image's pixels.
struct Box {
  double x, y, w, h;
};

// One axis of a bilinear resize: for each output index the two source indices (relative to the
// decoded region) and the weight of the second.
struct Taps {
  std::vector<int> first, second;
  std::vector<float> weight;
};

// Half-pixel centres, clamped to [lo, hi]: the box's edge pixels for OpenCV's INTER_LINEAR after a
// crop (training), the image's for a resize before a crop (evaluation).
Taps make_taps(double start, double length, int out_size, int region_start, int region_size,
               double lo, double hi) {
  Taps taps;
  taps.first.resize(out_size);
  taps.second.resize(out_size);
  taps.weight.resize(out_size);
  const double scale = length / out_size;
  const int last = region_start + region_size - 1;
  for (int i = 0; i < out_size; ++i) {
    double pos = std::clamp(start + (i + 0.5) * scale - 0.5, lo, hi);
    int index = static_cast<int>(std::floor(pos));
    index = std::clamp(index, region_start, last);
    const int next = std::min(index + 1, last);
    taps.first[i] = index - region_start;
    taps.second[i] = next - region_start;
    taps.weight[i] = static_cast<float>(std::clamp(pos - index, 0.0, 1.0));
  }
  return taps;
}

// Per-thread scratch memory, kept between calls (no allocation or zeroing per image).
template <typename T>
T* scratch(std::vector<T>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// Resize the box of an RGB region (`stride` bytes per row) into three float planes of
// out_h x out_w: per output row, first blend the two source rows over the region's width
// (contiguous, vectorised), then pick and blend columns (mirrored if flip).
MULTI_ISA void resize_box(const uint8_t* region, int stride, const Taps& ys, const Taps& xs, bool flip,
                int out_h, int out_w, float* planes) {
  thread_local std::vector<float> row_buffer;
  float* row = scratch(row_buffer, static_cast<size_t>(stride));
  const size_t plane = static_cast<size_t>(out_h) * out_w;
  for (int y = 0; y < out_h; ++y) {
    const uint8_t* a = region + static_cast<size_t>(ys.first[y]) * stride;
    const uint8_t* b = region + static_cast<size_t>(ys.second[y]) * stride;
    const float w = ys.weight[y];
    for (int i = 0; i < stride; ++i) row[i] = a[i] + w * (static_cast<float>(b[i]) - a[i]);
    float* r = planes + static_cast<size_t>(y) * out_w;
    float* g = r + plane;
    float* bl = g + plane;
    for (int x = 0; x < out_w; ++x) {
      const int o = flip ? out_w - 1 - x : x;
      const float* p = row + 3 * xs.first[x];
      const float* q = row + 3 * xs.second[x];
      const float wx = xs.weight[x];
      r[o] = p[0] + wx * (q[0] - p[0]);
      g[o] = p[1] + wx * (q[1] - p[1]);
      bl[o] = p[2] + wx * (q[2] - p[2]);
    }
  }
}

inline float clamp255(float v) { return std::min(std::max(v, 0.0f), 255.0f); }

// factors: brightness, contrast, saturation (1 = unchanged); order: a permutation of 0, 1, 2.
// The image is three planes of n pixels.
MULTI_ISA void colour_jitter(float* planes, size_t n, const float* factors, const int* order) {
  float* r = planes;
  float* g = planes + n;
  float* b = planes + 2 * n;
  for (int k = 0; k < 3; ++k) {
    const int op = order[k];
    const float f = factors[op];
    if (f == 1.0f) continue;
    if (op == 0) {
      for (size_t i = 0; i < 3 * n; ++i) planes[i] = clamp255(planes[i] * f);
    } else if (op == 1) {
      // 16 independent partial sums (vectorised, and the same order on every ISA clone).
      constexpr size_t kLanes = 16;
      float lanes[kLanes] = {};
      size_t i = 0;
      for (; i + kLanes <= n; i += kLanes)
        for (size_t lane = 0; lane < kLanes; ++lane)
          lanes[lane] += 0.299f * r[i + lane] + 0.587f * g[i + lane] + 0.114f * b[i + lane];
      double total = 0;
      for (size_t lane = 0; lane < kLanes; ++lane) total += lanes[lane];
      for (; i < n; ++i) total += 0.299f * r[i] + 0.587f * g[i] + 0.114f * b[i];
      const float mean_part = static_cast<float>(total / n) * (1.0f - f);
      for (size_t i = 0; i < 3 * n; ++i) planes[i] = clamp255(planes[i] * f + mean_part);
    } else {
      for (size_t i = 0; i < n; ++i) {
        const float grey = (0.299f * r[i] + 0.587f * g[i] + 0.114f * b[i]) * (1.0f - f);
        r[i] = clamp255(r[i] * f + grey);
        g[i] = clamp255(g[i] * f + grey);
        b[i] = clamp255(b[i] * f + grey);
      }
    }
  }
}

// Three float planes (already within [0, 255]) to interleaved uint8 RGB, rounded.
MULTI_ISA void to_uint8(const float* planes, size_t n, uint8_t* out) {
  const float* r = planes;
  const float* g = planes + n;
  const float* b = planes + 2 * n;
  for (size_t i = 0; i < n; ++i) {
    out[3 * i] = static_cast<uint8_t>(r[i] + 0.5f);
    out[3 * i + 1] = static_cast<uint8_t>(g[i] + 0.5f);
    out[3 * i + 2] = static_cast<uint8_t>(b[i] + 0.5f);
  }
}

// The common tail: resize the box out of a decoded region, flip, jitter, round.
void augment_region(const uint8_t* region, int stride, int region_x, int region_y, int region_w,
                    int region_h, const Box& box, int flip, const float* factors,
                    const int* order, int out_h, int out_w, uint8_t* out) {
  const Taps xs = make_taps(box.x, box.w, out_w, region_x, region_w, box.x,
                            box.x + std::max(box.w - 1.0, 0.0));
  const Taps ys = make_taps(box.y, box.h, out_h, region_y, region_h, box.y,
                            box.y + std::max(box.h - 1.0, 0.0));
  const size_t n = static_cast<size_t>(out_h) * out_w;
  thread_local std::vector<float> planes_buffer;
  float* planes = scratch(planes_buffer, 3 * n);
  resize_box(region, stride, ys, xs, flip != 0, out_h, out_w, planes);
  if (factors && order) colour_jitter(planes, n, factors, order);
  to_uint8(planes, n, out);
}

// The largest DCT reduction (8/8, 4/8, 2/8, 1/8) that keeps the box at least the output size.
int dct_scale_num(const Box& box, int out_h, int out_w) {
  for (int num = 1; num < 8; num *= 2)
    if (box.w * num / 8.0 >= out_w && box.h * num / 8.0 >= out_h) return num;
  return 8;
}

struct Decoder {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  Decoder() {
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error_exit;
    err.pub.emit_message = on_emit_message;
    err.message[0] = '\0';
  }
};

// What to do with a JPEG beyond reading its headers.
struct Request {
  Box box;  // source pixels
  int flip;
  const float* factors;  // null: no colour jitter
  const int* order;
  int out_h, out_w;
  int allow_scaling;
  uint8_t* out;
};

bool unsupported_colour_space(const jpeg_decompress_struct& cinfo) {
  const J_COLOR_SPACE space = cinfo.jpeg_color_space;
  return space == JCS_CMYK || space == JCS_YCCK || cinfo.num_components == 2 ||
         cinfo.num_components > 4;
}

// A decoded part of the (DCT-scaled) image: rows y..y+h-1, columns x..x+w-1, `stride` bytes a row.
struct Region {
  const uint8_t* pixels;
  int stride, x, y, w, h;
};

// After jpeg_start_decompress: decode rows y0..y1 and at least columns x0..x1 (clamped to the
// image) into per-thread memory. Rows below are never decoded: the caller destroys the
// decompressor instead of finishing it.
// libjpeg may longjmp out of here to the caller's setjmp; nothing here has a destructor.
Region read_region(jpeg_decompress_struct* cinfo, int x0, int x1, int y0, int y1) {
  thread_local std::vector<uint8_t> region_buffer;
  const int full_w = static_cast<int>(cinfo->output_width);
  const int full_h = static_cast<int>(cinfo->output_height);
  x0 = std::clamp(x0, 0, full_w - 1);
  x1 = std::clamp(x1, x0, full_w - 1);
  y0 = std::clamp(y0, 0, full_h - 1);
  y1 = std::clamp(y1, y0, full_h - 1);
  // One more column each side: libjpeg starts the cropped region at an iMCU boundary and
  // upsamples chroma at the region's edges as at the image's, so a needed pixel must not be
  // the region's first or last column for the result to equal a full decode's.
  JDIMENSION crop_x = static_cast<JDIMENSION>(std::max(x0 - 1, 0));
  JDIMENSION crop_w = static_cast<JDIMENSION>(std::min(x1 + 1, full_w - 1)) - crop_x + 1;
  if (crop_w < cinfo->output_width) {
    jpeg_crop_scanline(cinfo, &crop_x, &crop_w);  // widened to whole iMCU columns
  } else {
    crop_x = 0;
  }
  const int stride = static_cast<int>(cinfo->output_width) * 3;  // the cropped width
  const int rows = y1 - y0 + 1;
  uint8_t* region = scratch(region_buffer, static_cast<size_t>(rows) * stride);
  if (y0 > 0) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(y0));
  for (int r = 0; r < rows;) {
    JSAMPROW row = region + static_cast<size_t>(r) * stride;
    r += static_cast<int>(jpeg_read_scanlines(cinfo, &row, 1));
  }
  return Region{region, stride, static_cast<int>(crop_x), y0, static_cast<int>(crop_w), rows};
}

// Open `data`, read its headers and return body(cinfo). A libjpeg error longjmps back here (the
// frame with the setjmp outlives every libjpeg call the body makes) and returns kError with its
// message; unsupported colour spaces return kUnsupported when `check_colour` (the caller
// decodes those another way). The decompressor is destroyed on every path. Nothing in a body
// may hold an object with a destructor across libjpeg calls.
template <class Body>
int with_jpeg(const uint8_t* data, size_t size, bool check_colour, char* message, int message_len,
              Body&& body) {
  Decoder d;
  if (setjmp(d.err.jump)) {
    set_message(message, message_len, d.err.message);
    jpeg_destroy_decompress(&d.cinfo);
    return kError;
  }
  jpeg_create_decompress(&d.cinfo);
  jpeg_mem_src(&d.cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&d.cinfo, TRUE);
  int status = kUnsupported;
  if (check_colour && unsupported_colour_space(d.cinfo)) {
    set_message(message, message_len, "unsupported JPEG colour space");
  } else {
    status = body(&d.cinfo);
  }
  jpeg_destroy_decompress(&d.cinfo);
  return status;
}

// Start decompressing at num/8 scale in RGB.
void start_rgb(jpeg_decompress_struct* cinfo, int num) {
  cinfo->out_color_space = JCS_RGB;
  cinfo->scale_num = num;
  cinfo->scale_denom = 8;
  jpeg_start_decompress(cinfo);
}

// Decode the part of the image under the request's box, resize, flip, jitter and write it.
int decode_augment(jpeg_decompress_struct* cinfo, const Request& request) {
  const int out_h = request.out_h, out_w = request.out_w;
  const int num = request.allow_scaling ? dct_scale_num(request.box, out_h, out_w) : 8;
  const double s = num / 8.0;
  const Box box{request.box.x * s, request.box.y * s, request.box.w * s, request.box.h * s};
  start_rgb(cinfo, num);
  // Pixels the resize reads: from the box's first to its last pixel, within the image.
  const Region region = read_region(
      cinfo, static_cast<int>(std::floor(box.x)), static_cast<int>(std::ceil(box.x + box.w - 1.0)),
      static_cast<int>(std::floor(box.y)), static_cast<int>(std::ceil(box.y + box.h - 1.0)));
  augment_region(region.pixels, region.stride, region.x, region.y, region.w, region.h, box,
                 request.flip, request.factors, request.order, out_h, out_w, request.out);
  return kOk;
}

// ---------------------------------------------------------------------------------- evaluation
// Resize the shorter side (bilinear, half-pixel centres, clamped at the image's edges: OpenCV's
// INTER_LINEAR, MindSpore's Resize) to resized_w x resized_h, then centre crop out_w x out_h at
// (left, top): only the crop's pixels are computed, from only the rows and columns they read.

struct EvalRequest {
  int resized_w, resized_h, left, top, out_w, out_h;
  int allow_scaling;
  const float* mean;  // per channel, 0-255 scale; null: uint8 HWC out instead of float CHW
  const float* std;
  void* out;
};

// The largest DCT reduction (8/8, 4/8, 2/8, 1/8) that keeps the image at least the resized size.
int eval_scale_num(int width, int height, const EvalRequest& r) {
  for (int num = 1; num < 8; num *= 2)
    if (width * num / 8.0 >= r.resized_w && height * num / 8.0 >= r.resized_h) return num;
  return 8;
}

// Source position of output pixel i (crop offset `first`, scale = source / resized), clamped.
double eval_position(int first, int i, double scale, int full) {
  return std::clamp((first + i + 0.5) * scale - 0.5, 0.0, full - 1.0);
}

// Three float planes to the output: uint8 HWC, or (rounded to uint8, then) (v - mean) / std CHW.
MULTI_ISA void eval_output(const float* planes, size_t n, const EvalRequest& r) {
  if (!r.mean) {
    to_uint8(planes, n, static_cast<uint8_t*>(r.out));
    return;
  }
  float* out = static_cast<float*>(r.out);
  for (int c = 0; c < 3; ++c) {
    const float mean = r.mean[c], std = r.std[c];
    for (size_t i = 0; i < n; ++i)
      out[c * n + i] = (static_cast<float>(static_cast<int>(planes[c * n + i] + 0.5f)) - mean) / std;
  }
}

// The crop of the resized image out of a region of a full_w x full_h image.
void eval_region(const Region& region, int full_w, int full_h, const EvalRequest& r) {
  const double sx = static_cast<double>(full_w) / r.resized_w;
  const double sy = static_cast<double>(full_h) / r.resized_h;
  const Taps xs = make_taps(r.left * sx, r.out_w * sx, r.out_w, region.x, region.w, 0.0, full_w - 1.0);
  const Taps ys = make_taps(r.top * sy, r.out_h * sy, r.out_h, region.y, region.h, 0.0, full_h - 1.0);
  const size_t n = static_cast<size_t>(r.out_h) * r.out_w;
  thread_local std::vector<float> planes_buffer;
  float* planes = scratch(planes_buffer, 3 * n);
  resize_box(region.pixels, region.stride, ys, xs, false, r.out_h, r.out_w, planes);
  eval_output(planes, n, r);
}

// The centre crop of the resized image: decode (DCT-scaled when allowed) only the rows and
// columns the resize reads, then resize, crop and write.
int decode_eval(jpeg_decompress_struct* cinfo, const EvalRequest& r) {
  start_rgb(cinfo, r.allow_scaling ? eval_scale_num(static_cast<int>(cinfo->image_width),
                                                    static_cast<int>(cinfo->image_height), r) : 8);
  const int full_w = static_cast<int>(cinfo->output_width);
  const int full_h = static_cast<int>(cinfo->output_height);
  const double sx = static_cast<double>(full_w) / r.resized_w;
  const double sy = static_cast<double>(full_h) / r.resized_h;
  // The first and last pixels the resize reads (taps are monotonic).
  const Region region = read_region(
      cinfo, static_cast<int>(std::floor(eval_position(r.left, 0, sx, full_w))),
      static_cast<int>(std::floor(eval_position(r.left, r.out_w - 1, sx, full_w))) + 1,
      static_cast<int>(std::floor(eval_position(r.top, 0, sy, full_h))),
      static_cast<int>(std::floor(eval_position(r.top, r.out_h - 1, sy, full_h))) + 1);
  eval_region(region, full_w, full_h, r);
  return kOk;
}

}  // namespace

extern "C" {

// Image size from the headers. Returns kOk, or kError with a message.
int mnv3_jpeg_size(const uint8_t* data, size_t size, int* width, int* height, char* message,
                   int message_len) {
  return with_jpeg(data, size, false, message, message_len, [&](jpeg_decompress_struct* cinfo) {
    if (width) *width = static_cast<int>(cinfo->image_width);
    if (height) *height = static_cast<int>(cinfo->image_height);
    return kOk;
  });
}

// Decode the part of the JPEG under box = {x, y, w, h} (source pixels), resize it to
// out_h x out_w, mirror it if flip, apply factors in order (both may be null: no jitter) and
// write uint8 HWC RGB to out. allow_scaling=0 decodes at full size (for comparisons).
// Returns kOk; kUnsupported for colour spaces other than grey/YCbCr/RGB (the caller decodes
// those another way); kError with a message for a damaged file.
int mnv3_jpeg_augment(const uint8_t* data, size_t size, const double* box_xywh, int flip,
                      const float* factors, const int* order, int out_h, int out_w,
                      int allow_scaling, uint8_t* out, char* message, int message_len) {
  const Request request{{box_xywh[0], box_xywh[1], box_xywh[2], box_xywh[3]}, flip, factors,
                        order, out_h, out_w, allow_scaling, out};
  return with_jpeg(data, size, true, message, message_len,
                   [&](jpeg_decompress_struct* cinfo) { return decode_augment(cinfo, request); });
}

// The same augmentation for an image already decoded to RGB (PNG, BMP, CMYK JPEG).
int mnv3_rgb_augment(const uint8_t* rgb, int height, int width, const double* box_xywh, int flip,
                     const float* factors, const int* order, int out_h, int out_w, uint8_t* out) {
  const Box box{box_xywh[0], box_xywh[1], box_xywh[2], box_xywh[3]};
  augment_region(rgb, width * 3, 0, 0, width, height, box, flip, factors, order, out_h, out_w,
                 out);
  return kOk;
}

// Evaluation preprocessing of a JPEG: the centre crop out_w x out_h at (left, top) of the image
// resized to resized_w x resized_h (the caller computes MindSpore's Resize/CenterCrop geometry),
// decoded with DCT scaling when allow_scaling and the image is at least twice the resized size.
// mean/std null: uint8 HWC RGB to out; else float32 CHW, (pixel - mean) / std. Returns as
// mnv3_jpeg_augment does.
int mnv3_jpeg_eval(const uint8_t* data, size_t size, int resized_w, int resized_h, int left, int top,
                   int out_w, int out_h, int allow_scaling, const float* mean, const float* std,
                   void* out, char* message, int message_len) {
  const EvalRequest r{resized_w, resized_h, left, top, out_w, out_h, allow_scaling, mean, std, out};
  return with_jpeg(data, size, true, message, message_len,
                   [&](jpeg_decompress_struct* cinfo) { return decode_eval(cinfo, r); });
}

// The same for an image already decoded to RGB (PNG, BMP, CMYK JPEG).
int mnv3_rgb_eval(const uint8_t* rgb, int height, int width, int resized_w, int resized_h, int left,
                  int top, int out_w, int out_h, const float* mean, const float* std, void* out) {
  const EvalRequest r{resized_w, resized_h, left, top, out_w, out_h, 0, mean, std, out};
  eval_region(Region{rgb, width * 3, 0, 0, width, height}, width, height, r);
  return kOk;
}

// The file that provides libjpeg to this library (to check it is the SIMD build).
int mnv3_jpeg_library(char* path, int path_len) {
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&jpeg_CreateDecompress), &info) || !info.dli_fname) return kError;
  set_message(path, path_len, info.dli_fname);
  return kOk;
}

}  // extern "C"
