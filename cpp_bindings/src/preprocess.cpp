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

// ---------------------------------------------------------------- OpenCV INTER_LINEAR (uint8)
// cv::resize (imgproc/src/resize.cpp) for INTER_LINEAR on 8-bit data: coefficients in 11-bit fixed point.
constexpr int kCvCoefBits = 11;
constexpr float kCvCoefScale = float(1 << kCvCoefBits);

struct LinearTab {
  std::vector<int> i0, i1;       // the two source indices per destination index (clamped to the image)
  std::vector<int32_t> w0, w1;   // their weights, summing to 2048
};

// saturate_cast<short>(float): round to nearest, ties to even (cvRound), then clamp.
int32_t cv_short(float v) {
  const long r = std::lrint(v);
  return static_cast<int32_t>(r < -32768 ? -32768 : r > 32767 ? 32767 : r);
}

// OpenCV's table for one axis: fx = (float)((dx + 0.5) * scale - 0.5) with scale = 1 / (dst / src) in double,
// sx = floor(fx), fx -= sx. Along x, a position left of the first or right of the last pixel takes that
// pixel alone (sx clamped, fx = 0). Along y only the rows are clamped: the weights stay as computed.
LinearTab cv2_linear_tab(int src, int dst, bool clamp_weights) {
  const double inv_scale = static_cast<double>(dst) / src;
  const double scale = 1.0 / inv_scale;
  LinearTab t;
  t.i0.resize(size_t(dst));
  t.i1.resize(size_t(dst));
  t.w0.resize(size_t(dst));
  t.w1.resize(size_t(dst));
  for (int d = 0; d < dst; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int s = static_cast<int>(std::floor(f));
    f -= static_cast<float>(s);
    if (clamp_weights) {
      if (s < 0) f = 0.0f, s = 0;
      if (s >= src - 1) f = 0.0f, s = src - 1;
    }
    t.w0[size_t(d)] = cv_short((1.0f - f) * kCvCoefScale);
    t.w1[size_t(d)] = cv_short(f * kCvCoefScale);
    t.i0[size_t(d)] = s < 0 ? 0 : s > src - 1 ? src - 1 : s;
    t.i1[size_t(d)] = s + 1 < 0 ? 0 : s + 1 > src - 1 ? src - 1 : s + 1;
  }
  return t;
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

void resize_rgb8_cv2(const ImageView& in, int out_w, int out_h, uint8_t* out) {
  const Source src = source_of(in);
  if (out_w == in.width && out_h == in.height) {  // cv2.resize copies
    copy_rgb(src, in.width, in.height, out);
    return;
  }
  const LinearTab tx = cv2_linear_tab(in.width, out_w, true);
  const LinearTab ty = cv2_linear_tab(in.height, out_h, false);
  // OpenCV's ring of horizontally resized rows: the rows a destination row needs never go backwards, so two
  // slots (with the source row each holds) are enough.
  const size_t row_len = size_t(out_w) * 3;
  std::vector<int32_t> rows(2 * row_len);
  int held[2] = {-1, -1};
  auto row = [&](int sy) -> const int32_t* {
    for (int k = 0; k < 2; ++k)
      if (held[k] == sy) return &rows[size_t(k) * row_len];
    const int k = held[0] < held[1] ? 0 : 1;  // the older (lower) row is not needed any more
    held[k] = sy;
    int32_t* d = &rows[size_t(k) * row_len];
    const uint8_t* s = src.base + size_t(sy) * src.stride;
    for (int dx = 0; dx < out_w; ++dx) {
      const uint8_t* p0 = s + size_t(tx.i0[size_t(dx)]) * src.ch;
      const uint8_t* p1 = s + size_t(tx.i1[size_t(dx)]) * src.ch;
      const int32_t a0 = tx.w0[size_t(dx)], a1 = tx.w1[size_t(dx)];
      for (int c = 0; c < 3; ++c) d[dx * 3 + c] = p0[src.map[c]] * a0 + p1[src.map[c]] * a1;
    }
    return d;
  };
  for (int dy = 0; dy < out_h; ++dy) {
    const int32_t* s0 = row(ty.i0[size_t(dy)]);
    const int32_t* s1 = row(ty.i1[size_t(dy)]);
    const int32_t b0 = ty.w0[size_t(dy)], b1 = ty.w1[size_t(dy)];
    uint8_t* o = out + size_t(dy) * row_len;
    // VResizeLinearVec_32s8u: rows >> 4 packed to int16, multiplied keeping the high 16 bits, summed, then
    // rounded by 2 bits. (The scalar form, (b0*S0 + b1*S1 + 2^21) >> 22, can differ by one level.)
    for (size_t i = 0; i < row_len; ++i) {
      const int32_t v = (((b0 * (s0[i] >> 4)) >> 16) + ((b1 * (s1[i] >> 4)) >> 16) + 2) >> 2;
      o[i] = static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  }
}

int center_crop_offset(int full, int crop) {
  const int d = full - crop;  // round(d / 2) with ties to even: d = 2k + 1 → k if k is even, else k + 1
  const int k = d >= 0 ? d / 2 : -((-d + 1) / 2);
  return (d & 1) ? k + (k & 1) : k;
}

void normalize_window_chw(const uint8_t* rgb, int width, int left, int top, int size, const float mean[3],
                          const float stdv[3], float* out) {
  const size_t plane = size_t(size) * size;
  for (int y = 0; y < size; ++y) {
    const uint8_t* row = rgb + (size_t(top + y) * width + size_t(left)) * 3;
    const size_t o = size_t(y) * size;
    for (int x = 0; x < size; ++x) {
      for (int c = 0; c < 3; ++c) {
        float v = static_cast<float>(row[x * 3 + c]) / 255.0f;
        out[c * plane + o + size_t(x)] = (v - mean[c]) / stdv[c];
      }
    }
  }
}

void normalize_chw(const uint8_t* rgb, int size, const float mean[3], const float stdv[3], float* out) {
  normalize_window_chw(rgb, size, 0, 0, size, mean, stdv, out);
}

void preprocess(const ImageView& in, const PreprocessSpec& spec, float* out) {
  const int w = spec.resize_w, h = spec.resize_h;
  std::vector<uint8_t> rgb(size_t(w) * h * 3);
  if (spec.resize == ResizeMethod::BilinearCv2) resize_rgb8_cv2(in, w, h, rgb.data());
  else resize_rgb8(in, w, h, rgb.data());
  const int left = spec.crop ? center_crop_offset(w, spec.size) : 0;
  const int top = spec.crop ? center_crop_offset(h, spec.size) : 0;
  if (left < 0 || top < 0 || left + spec.size > w || top + spec.size > h)  // load_bundle refuses such specs
    throw Error(FGRESQ_INTERNAL, "preprocess: the crop does not fit inside the resized image");
  normalize_window_chw(rgb.data(), w, left, top, spec.size, spec.mean, spec.stdv, out);
}

}  // namespace fgresq::detail
