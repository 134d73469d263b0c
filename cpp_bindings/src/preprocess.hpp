// Image → model input, reproducing the Python SDK (fgresq_sdk/preprocess.py): RGB, PIL bilinear resize to
// S×S ignoring aspect (Pillow's two-pass convolution resampling with a triangle filter widened by the
// downscale factor, fixed-point coefficients, uint8 rounding between passes, pass order as in Pillow 13),
// /255, CLIP mean/std.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fgresq.h"

namespace fgresq::detail {

struct ImageView {
  const uint8_t* data;
  int width;
  int height;
  size_t stride;  // bytes per row
  int channels;   // 1, 3 or 4 (alpha ignored)
};

// Validate a caller's image; throws Error(INVALID_ARGUMENT, "<label>: ...").
ImageView check_image(const fgresq_image* img, const std::string& label);

// Pillow's Image.resize((out_w, out_h), Image.BILINEAR) of the image converted to RGB; out: out_h×out_w×3.
void resize_rgb8(const ImageView& in, int out_w, int out_h, uint8_t* out);

// uint8 HWC (size×size×3) → float32 CHW, x/255 then (x − mean)/std, in float32 like numpy.
void normalize_chw(const uint8_t* rgb, int size, const float mean[3], const float stdv[3], float* out);

// Both steps; out has 3·size·size floats.
void preprocess(const ImageView& in, int size, const float mean[3], const float stdv[3], float* out);

}  // namespace fgresq::detail
