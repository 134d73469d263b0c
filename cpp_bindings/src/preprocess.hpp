// Image → model input, as the bundle's preprocess spec says (docs/preprocess-spec.md): RGB (gray
// replicated, alpha dropped), resize ignoring aspect, optional center crop, /255, mean/std.
// Resize methods:
//  - bilinear-antialias: Pillow's Image.resize(BILINEAR): two-pass convolution with a triangle filter widened
//    by the downscale factor, fixed-point coefficients, uint8 rounding between passes, Pillow 13 pass order.
//  - bilinear-cv2: OpenCV's cv2.resize(INTER_LINEAR) on uint8: half-pixel centres, 11-bit fixed-point
//    weights, no antialiasing, OpenCV's vector-path rounding.
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

enum class ResizeMethod { BilinearAntialias, BilinearCv2 };

// model.json "preprocess", validated by load_bundle. The legacy form (no resize/crop keys) is
// resize = bilinear-antialias to size×size, no crop. The crop, when present, is size×size and fits inside
// the resize; without a crop the resize is size×size.
struct PreprocessSpec {
  int size = 224;  // side of the tensor
  ResizeMethod resize = ResizeMethod::BilinearAntialias;
  int resize_w = 224, resize_h = 224;
  bool crop = false;  // center crop of size×size
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  float stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
};

// Pillow's Image.resize((out_w, out_h), Image.BILINEAR) of the image converted to RGB; out: out_h×out_w×3.
void resize_rgb8(const ImageView& in, int out_w, int out_h, uint8_t* out);

// cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_LINEAR) of the image converted to RGB (uint8, as
// OpenCV 4.x/5.x computes it on x86); out: out_h×out_w×3.
void resize_rgb8_cv2(const ImageView& in, int out_w, int out_h, uint8_t* out);

// torchvision CenterCrop's offset along one axis: int(round((full - crop) / 2)), Python's round (half to even).
int center_crop_offset(int full, int crop);

// uint8 HWC (size×size×3) → float32 CHW, x/255 then (x − mean)/std, in float32 like numpy.
void normalize_chw(const uint8_t* rgb, int size, const float mean[3], const float stdv[3], float* out);

// The size×size window at (left, top) of a uint8 HWC image `width` pixels wide → float32 CHW, as normalize_chw.
void normalize_window_chw(const uint8_t* rgb, int width, int left, int top, int size, const float mean[3],
                          const float stdv[3], float* out);

// The whole spec: resize, crop, normalise; out has 3·size·size floats.
void preprocess(const ImageView& in, const PreprocessSpec& spec, float* out);

}  // namespace fgresq::detail
