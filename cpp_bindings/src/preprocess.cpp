#include "preprocess.hpp"

#include <cmath>
#include <cstring>

#include "error.hpp"

namespace fgresq::detail {
namespace {

// Pillow (libImaging/Resample.c): coefficients in fixed point with this many fractional bits.
constexpr int kPrecisionBits = 32 - 8 - 2;

double triangle(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;    // per output pixel: first input index, number of taps
  std::vector<int32_t> kk;    // out_size × ksize fixed-point weights
};

// Pillow's precompute_coeffs() for the bilinear filter (support 1) and the full box [0, in_size],
// followed by normalize_coeffs_8bpc().
Coeffs precompute(int in_size, int out_size) {
  const double support_base = 1.0;
  double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = support_base * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(size_t(out_size) * 2);
  c.kk.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = 0.0 + (xx + 0.5) * scale;
    double ww = 0.0;
    double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    int x = 0;
    for (; x < xmax; ++x) {
      double w = triangle((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    for (; x < c.ksize; ++x) k[x] = 0;
    c.bounds[size_t(xx) * 2] = xmin;
    c.bounds[size_t(xx) * 2 + 1] = xmax;
    int32_t* dst = &c.kk[size_t(xx) * c.ksize];
    for (x = 0; x < c.ksize; ++x) {
      double v = k[x] * (1 << kPrecisionBits);
      dst[x] = static_cast<int32_t>(k[x] < 0 ? -0.5 + v : 0.5 + v);
    }
  }
  return c;
}

inline uint8_t clip8(int32_t in) {
  if (in >= (1 << kPrecisionBits << 8)) return 255;
  if (in <= 0) return 0;
  return static_cast<uint8_t>(in >> kPrecisionBits);
}

// Pixel source for one pass: the caller's 1/3/4-channel image read as RGB (gray replicated, alpha
// dropped), or an intermediate RGB buffer.
struct Source {
  const uint8_t* base;
  size_t stride;  // bytes per row
  int ch;         // bytes per pixel
  int map[3];     // byte offset of R, G, B within a pixel
};

Source source_of(const ImageView& in) {
  Source s{in.data, in.stride, in.channels, {0, 1, 2}};
  if (in.channels == 1) s.map[1] = s.map[2] = 0;
  return s;
}

Source source_rgb(const uint8_t* base, int width) { return Source{base, size_t(width) * 3, 3, {0, 1, 2}}; }

// Pillow's ImagingResampleHorizontal_8bpc: rows [y0, y0 + rows) of src → rows × out_w × 3.
void horizontal_pass(const Source& src, int y0, int rows, const Coeffs& c, int out_w, uint8_t* dst) {
  for (int yy = 0; yy < rows; ++yy) {
    const uint8_t* row = src.base + size_t(yy + y0) * src.stride;
    uint8_t* out = dst + size_t(yy) * out_w * 3;
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = c.bounds[size_t(xx) * 2], xmax = c.bounds[size_t(xx) * 2 + 1];
      const int32_t* k = &c.kk[size_t(xx) * c.ksize];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = row + size_t(x + xmin) * src.ch;
        s0 += p[src.map[0]] * k[x];
        s1 += p[src.map[1]] * k[x];
        s2 += p[src.map[2]] * k[x];
      }
      out[xx * 3] = clip8(s0);
      out[xx * 3 + 1] = clip8(s1);
      out[xx * 3 + 2] = clip8(s2);
    }
  }
}

// Pillow's ImagingResampleVertical_8bpc: src (width columns; bounds relative to its first row) → out_h × width × 3.
void vertical_pass(const Source& src, const Coeffs& c, int width, int out_h, uint8_t* dst) {
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = c.bounds[size_t(yy) * 2], ymax = c.bounds[size_t(yy) * 2 + 1];
    const int32_t* k = &c.kk[size_t(yy) * c.ksize];
    uint8_t* out = dst + size_t(yy) * width * 3;
    for (int xx = 0; xx < width; ++xx) {
      const uint8_t* col = src.base + size_t(ymin) * src.stride + size_t(xx) * src.ch;
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int y = 0; y < ymax; ++y) {
        const uint8_t* p = col + size_t(y) * src.stride;
        s0 += p[src.map[0]] * k[y];
        s1 += p[src.map[1]] * k[y];
        s2 += p[src.map[2]] * k[y];
      }
      out[xx * 3] = clip8(s0);
      out[xx * 3 + 1] = clip8(s1);
      out[xx * 3 + 2] = clip8(s2);
    }
  }
}

void copy_rgb(const Source& src, int width, int height, uint8_t* dst) {
  for (int y = 0; y < height; ++y) {
    const uint8_t* row = src.base + size_t(y) * src.stride;
    uint8_t* out = dst + size_t(y) * width * 3;
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c) out[x * 3 + c] = row[size_t(x) * src.ch + src.map[c]];
  }
}

}  // namespace

ImageView check_image(const fgresq_image* img, const std::string& label) {
  if (!img) throw Error(FGRESQ_INVALID_ARGUMENT, label + ": image pointer is NULL");
  if (img->width <= 0 || img->height <= 0)
    throw Error(FGRESQ_INVALID_ARGUMENT, label + ": image has zero width or height (" + std::to_string(img->width) +
                                             "x" + std::to_string(img->height) + ")");
  if (img->channels != 1 && img->channels != 3 && img->channels != 4)
    throw Error(FGRESQ_INVALID_ARGUMENT,
                label + ": " + std::to_string(img->channels) + " channels (expected 1, 3 or 4)");
  if (!img->data) throw Error(FGRESQ_INVALID_ARGUMENT, label + ": pixel data pointer is NULL");
  size_t row = size_t(img->width) * size_t(img->channels);
  if (img->stride_bytes < 0)
    throw Error(FGRESQ_INVALID_ARGUMENT, label + ": negative stride_bytes (" + std::to_string(img->stride_bytes) + ")");
  size_t stride = img->stride_bytes == 0 ? row : size_t(img->stride_bytes);
  if (stride < row)
    throw Error(FGRESQ_INVALID_ARGUMENT, label + ": stride_bytes " + std::to_string(stride) +
                                             " is smaller than width x channels (" + std::to_string(row) + ")");
  return ImageView{img->data, img->width, img->height, stride, img->channels};
}

void resize_rgb8(const ImageView& in, int out_w, int out_h, uint8_t* out) {
  const Source src = source_of(in);
  const bool need_h = out_w != in.width;
  const bool need_v = out_h != in.height;
  // Pillow >= 13 (ImagingResampleInner) runs the vertical pass first when the height shrinks by more than
  // twice as many pixels as the width; otherwise horizontal first, on the source rows the vertical pass reads.
  const bool horizontal_first = !((in.height - out_h) > 0 && (in.height - out_h) > (in.width - out_w) * 2);
  if (!need_h && !need_v) {
    copy_rgb(src, in.width, in.height, out);
    return;
  }
  std::vector<uint8_t> temp;
  if (horizontal_first) {
    const Coeffs ch = precompute(in.width, out_w);
    if (!need_v) {
      horizontal_pass(src, 0, in.height, ch, out_w, out);
      return;
    }
    Coeffs cv = precompute(in.height, out_h);
    if (!need_h) {
      vertical_pass(src, cv, in.width, out_h, out);
      return;
    }
    const int y_first = cv.bounds[0];
    const int y_last = cv.bounds[size_t(out_h - 1) * 2] + cv.bounds[size_t(out_h - 1) * 2 + 1];
    for (int yy = 0; yy < out_h; ++yy) cv.bounds[size_t(yy) * 2] -= y_first;
    temp.resize(size_t(y_last - y_first) * out_w * 3);
    horizontal_pass(src, y_first, y_last - y_first, ch, out_w, temp.data());
    vertical_pass(source_rgb(temp.data(), out_w), cv, out_w, out_h, out);
  } else {
    const Coeffs cv = precompute(in.height, out_h);  // need_v holds: the height shrinks
    if (!need_h) {
      vertical_pass(src, cv, in.width, out_h, out);
      return;
    }
    temp.resize(size_t(out_h) * in.width * 3);
    vertical_pass(src, cv, in.width, out_h, temp.data());
    horizontal_pass(source_rgb(temp.data(), in.width), 0, out_h, precompute(in.width, out_w), out_w, out);
  }
}

void normalize_chw(const uint8_t* rgb, int size, const float mean[3], const float stdv[3], float* out) {
  const size_t plane = size_t(size) * size;
  for (size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < 3; ++c) {
      float v = static_cast<float>(rgb[i * 3 + c]) / 255.0f;
      out[c * plane + i] = (v - mean[c]) / stdv[c];
    }
  }
}

void preprocess(const ImageView& in, int size, const float mean[3], const float stdv[3], float* out) {
  std::vector<uint8_t> rgb(size_t(size) * size * 3);
  resize_rgb8(in, size, size, rgb.data());
  normalize_chw(rgb.data(), size, mean, stdv, out);
}

}  // namespace fgresq::detail
