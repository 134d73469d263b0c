// The NIQE-style naturalness distance and the score term built on it: fgresq_sdk/niqe.py and
// fgresq_sdk/naturalness.py, step for step, in double precision.
//
// The distance of a 0-255 luma from the "pristine" Gaussian of clean photos: MSCN coefficients (separable
// 7-tap Gaussian, sigma 7/6, edge-replicated borders, C = 1) at two scales (the luma and its 2x2-mean half),
// per 64-px patch (32 px at the half scale) a generalised Gaussian fit of the coefficients and asymmetric ones
// of their four neighbour products (36 features), flat patches dropped, then the Mahalanobis-type distance
// between the pristine Gaussian and the Gaussian of the image's patches with the pooled covariance.
// Sums over a patch follow numpy's pairwise summation, so the per-patch moments (and so the discrete shape
// picks) come out as numpy's; what is left (BLAS/LAPACK order, numpy's SIMD exp/pow, CPython's own lgamma)
// stays at rounding level: parity with the Python SDK is ~1e-12 relative, not bit equality.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fgresq::detail::niqe {

constexpr const char* kPristineFormat = "fgresq-niqe-pristine/1";
constexpr int kPatch = 64;
constexpr int kFeatures = 36;
constexpr double kFlatMeanSquare = 1e-6;  // a patch's MSCN mean square below this is rounding noise: dropped
constexpr double kFlatDistance = 1e4;     // the distance of an all-flat image, and the cap of every distance

// A 2-D double image, row-major: rows are numpy's axis 0.
struct Plane {
  int rows = 0, cols = 0;
  std::vector<double> v;
  Plane() = default;
  Plane(int r, int c) : rows(r), cols(c), v(size_t(r) * size_t(c)) {}
  double& at(int r, int c) { return v[size_t(r) * size_t(cols) + size_t(c)]; }
  double at(int r, int c) const { return v[size_t(r) * size_t(cols) + size_t(c)]; }
};

// The pristine multivariate Gaussian (fgresq_sdk.niqe.Pristine): 36 means, 36x36 row-major covariance.
struct Pristine {
  std::vector<double> mean;
  std::vector<double> cov;
  int patch = kPatch;
};

// Pristine.from_bytes: the JSON file {"format": "fgresq-niqe-pristine/1", "patch": 64, "mean": [36],
// "cov": [[36x36]], ...}, with its rules and wording (finite, symmetric as np.allclose says, positive
// definite, 64-px patches). Problems: Error(FGRESQ_CORRUPTED, "<where>: ..."), one line.
Pristine parse_pristine(const uint8_t* data, size_t size, const std::string& where);

// numpy's pairwise summation of a contiguous run (np.add.reduce of float64 along a contiguous axis).
double pairwise_sum(const double* a, size_t n);

// The 7x7 Gaussian as two 1-D passes, along rows (axis 0) then along columns, edge-replicated borders.
Plane gaussian_blur(const Plane& in);

// MSCN coefficients (i - mu) / (sigma + C) of a 0-255 luma.
Plane mscn(const Plane& luma);

// The grid shape (0.2, 0.201, ... 9.999) whose moment ratio is nearest to rho (numpy's tie rule).
double nearest_shape(double rho);

struct Ggd {
  double shape, var;
};
struct Aggd {
  double shape, mean, lvar, rvar;
};
// Moment-matching fits of n values (ggd_fit / aggd_fit of one row).
Ggd ggd_fit(const double* x, size_t n);
Aggd aggd_fit(const double* x, size_t n);

// features(): one row of 36 per patch of the top-left whole-patch grid, NaN rows for flat patches. Throws
// Error(FGRESQ_UNSUPPORTED) for a luma smaller than patch x patch (Python: ValueError).
std::vector<double> features(const Plane& luma, int patch, size_t* rows);

// Pristine.distance: lower = closer to clean photos; kFlatDistance when every patch is flat, capped there.
double distance(const Pristine& pristine, const Plane& luma);

// luma_of_view: the 0-255 BT.601 luma of one normalised model input [3, size, size] (mean/std undone).
Plane luma_of_view(const float* view, int size, const double mean[3], const double stdv[3]);

// A bundle's naturalness term (model.json "naturalness", fgresq_sdk.naturalness.NaturalnessTerm):
//   score = sigmoid(scale * (logit(clamp(s, 1e-7, 1 - 1e-7)) - weight * ln d) + offset).
struct Term {
  double weight = 0.0, scale = 1.0, offset = 0.0;
  double mean[3] = {0, 0, 0}, stdv[3] = {1, 1, 1};  // preprocess mean/std as JSON doubles (not float32)
  Pristine pristine;
  std::string pristine_path;  // names the file in messages

  // ln d of one preprocessed model input [3, size, size] (d clamped below at 1e-12).
  double log_distance(const float* view, int size) const;
  // The fused score in (0, 1) from the encoder's score and ln d.
  double fuse(float score, double log_distance) const;
};

}  // namespace fgresq::detail::niqe
