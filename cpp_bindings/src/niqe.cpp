#include "niqe.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>

#include "error.hpp"
#include "json.hpp"

namespace fgresq::detail::niqe {
namespace {

constexpr int kRadius = 3;
constexpr double kSigma = 7.0 / 6.0;  // Python's 7 / 6
constexpr double kC = 1.0;            // MSCN stabiliser on the 0-255 scale
constexpr double kShapeStart = 0.2, kShapeStep = 0.001;
constexpr int kShapeCount = 9800;
constexpr double kScoreClamp = 1e-7;  // a float32 score's logit is only known to about ±16
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ln Γ(x) without glibc's lgamma writing the global `signgam`: scores may be computed on many threads.
double log_gamma(double x) {
#if defined(__GLIBC__)
  int sign = 0;
  return ::lgamma_r(x, &sign);
#else
  return std::lgamma(x);
#endif
}

// numpy's pairwise_sum for a contiguous run: blocks of at most 128 summed with 8 accumulators, halves above.
double pairwise_block(const double* a, size_t n) {
  if (n < 8) {
    double res = 0.0;
    for (size_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + size_t(j)];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_block(a, n2) + pairwise_block(a + n2, n - n2);
}

// The normalised 7 taps of the Gaussian (scipy's gaussian_filter(sigma 7/6, truncate 2.5) uses the same).
const std::array<double, 2 * kRadius + 1>& taps() {
  static const std::array<double, 2 * kRadius + 1> t = [] {
    std::array<double, 2 * kRadius + 1> a{};
    for (int k = 0; k < 2 * kRadius + 1; ++k) {
      const double x = double(k - kRadius) / kSigma;
      a[size_t(k)] = std::exp(-0.5 * (x * x));
    }
    const double sum = pairwise_sum(a.data(), a.size());
    for (double& v : a) v /= sum;
    return a;
  }();
  return t;
}

// The shape grid a_i = 0.2 + 0.001 i and its moment ratios Γ(1/a)Γ(3/a)/Γ(2/a)², reversed so they increase
// (the order numpy's searchsorted needs). Built once; a function-local static is thread-safe to build.
struct ShapeGrid {
  std::vector<double> alpha;  // increasing
  std::vector<double> order;  // ratio of alpha[n-1-i]: increasing
};

const ShapeGrid& shape_grid() {
  static const ShapeGrid g = [] {
    ShapeGrid s;
    s.alpha.resize(kShapeCount);
    s.order.resize(kShapeCount);
    for (int i = 0; i < kShapeCount; ++i) {
      const double a = kShapeStart + kShapeStep * double(i);
      s.alpha[size_t(i)] = a;
      const double lg = (log_gamma(1.0 / a) + log_gamma(3.0 / a)) - 2.0 * log_gamma(2.0 / a);
      s.order[size_t(kShapeCount - 1 - i)] = std::exp(lg);
    }
    return s;
  }();
  return g;
}

// numpy's float ordering for searchsorted: NaN sorts after every number.
bool less_nan_last(double a, double b) { return a < b || (b != b && a == a); }

// One scale's 18 features per patch (row-major patch grid from the top-left) and whether each is flat.
void scale_features(const Plane& img, int size, std::vector<double>& f, std::vector<bool>& flat, size_t& n) {
  const Plane m = mscn(img);
  const int ny = img.rows / size, nx = img.cols / size;
  n = size_t(ny) * size_t(nx);
  f.assign(n * 18, 0.0);
  flat.assign(n, false);
  const size_t s = size_t(size), s1 = s - 1;
  std::vector<double> p(s * s), prod(s * s);
  for (int iy = 0; iy < ny; ++iy) {
    for (int ix = 0; ix < nx; ++ix) {
      const size_t idx = size_t(iy) * size_t(nx) + size_t(ix);
      for (size_t r = 0; r < s; ++r)
        for (size_t c = 0; c < s; ++c) p[r * s + c] = m.at(iy * size + int(r), ix * size + int(c));
      double* row = &f[idx * 18];
      const Ggd g = ggd_fit(p.data(), p.size());
      // The GGD variance is the mean square np.mean(p ** 2) of the flat rule, summed the same way.
      flat[idx] = g.var < kFlatMeanSquare;
      row[0] = g.shape;
      row[1] = g.var;
      // Neighbour products in numpy's slicing: horizontal, vertical, main diagonal, anti-diagonal.
      for (int dir = 0; dir < 4; ++dir) {
        size_t k = 0;
        const size_t rows = dir == 0 ? s : s1, cols = dir == 1 ? s : s1;
        for (size_t r = 0; r < rows; ++r) {
          for (size_t c = 0; c < cols; ++c) {
            const double* q = &p[r * s + c];
            prod[k++] = dir == 0   ? q[0] * q[1]                     // p[:, :, :-1] * p[:, :, 1:]
                        : dir == 1 ? q[0] * q[s]                     // p[:, :-1, :] * p[:, 1:, :]
                        : dir == 2 ? q[0] * q[s + 1]                 // p[:, :-1, :-1] * p[:, 1:, 1:]
                                   : q[s] * q[1];                    // p[:, 1:, :-1] * p[:, :-1, 1:]
          }
        }
        const Aggd a = aggd_fit(prod.data(), k);
        row[2 + 4 * dir] = a.shape;
        row[3 + 4 * dir] = a.mean;
        row[4 + 4 * dir] = a.lvar;
        row[5 + 4 * dir] = a.rvar;
      }
    }
  }
}

// The 2x2-mean half of a luma cropped to even size; numpy's mean over axes (1, 3) adds the pairs per row first.
Plane half_of(const Plane& luma) {
  Plane h(luma.rows / 2, luma.cols / 2);
  for (int r = 0; r < h.rows; ++r)
    for (int c = 0; c < h.cols; ++c) {
      const double top = luma.at(2 * r, 2 * c) + luma.at(2 * r, 2 * c + 1);
      const double bottom = luma.at(2 * r + 1, 2 * c) + luma.at(2 * r + 1, 2 * c + 1);
      h.at(r, c) = (top + bottom) / 4.0;
    }
  return h;
}

// Lower Cholesky factor of the symmetric matrix a (n x n, its lower triangle read, as numpy's cholesky);
// false when a leading minor is not positive (LAPACK's potrf test).
bool cholesky(const std::vector<double>& a, size_t n, std::vector<double>& l) {
  l.assign(n * n, 0.0);
  for (size_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (size_t k = 0; k < j; ++k) d -= l[j * n + k] * l[j * n + k];
    if (!(d > 0.0)) return false;  // also NaN
    const double ljj = std::sqrt(d);
    l[j * n + j] = ljj;
    for (size_t i = j + 1; i < n; ++i) {
      double t = a[i * n + j];
      for (size_t k = 0; k < j; ++k) t -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = t / ljj;
    }
  }
  return true;
}

// ---------------------------------------------------------------- the pristine file

[[noreturn]] void corrupt(const std::string& msg) { throw Error(FGRESQ_CORRUPTED, msg); }

// np.asarray(value, np.float64) of a JSON value: its shape and values (C order). False where numpy raises
// (an object, a ragged list) and, stricter than numpy, for strings (numpy would parse "1.5").
bool as_array(const Json& v, std::vector<size_t>& shape, std::vector<double>& out) {
  switch (v.type) {
    case Json::Type::Number: out.push_back(v.number); shape.clear(); return true;
    case Json::Type::Bool: out.push_back(v.boolean ? 1.0 : 0.0); shape.clear(); return true;
    case Json::Type::Null: out.push_back(kNaN); shape.clear(); return true;  // numpy: None -> nan
    case Json::Type::String:
    case Json::Type::Object: return false;
    case Json::Type::Array: break;
  }
  std::vector<size_t> first, child;
  for (size_t k = 0; k < v.array.size(); ++k) {
    if (!as_array(v.array[k], k ? child : first, out)) return false;
    if (k && child != first) return false;  // inhomogeneous: numpy's ValueError
  }
  shape.assign(1, v.array.size());
  shape.insert(shape.end(), first.begin(), first.end());
  return true;
}

bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

// np.allclose(cov, cov.T): |a - b| <= 1e-8 + 1e-5 |b| everywhere, b the transpose.
bool symmetric(const std::vector<double>& cov, size_t n) {
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) {
      const double a = cov[i * n + j], b = cov[j * n + i];
      if (!(std::fabs(a - b) <= 1e-8 + 1e-5 * std::fabs(b))) return false;
    }
  return true;
}

}  // namespace

double pairwise_sum(const double* a, size_t n) { return 0.0 + pairwise_block(a, n); }  // the identity, then the run

Plane gaussian_blur(const Plane& in) {
  const auto& t = taps();
  Plane cur = in;
  for (int axis = 0; axis < 2; ++axis) {
    Plane out(cur.rows, cur.cols);
    const int n = axis == 0 ? cur.rows : cur.cols;
    for (int r = 0; r < cur.rows; ++r)
      for (int c = 0; c < cur.cols; ++c) {
        const int at = axis == 0 ? r : c;
        double acc = 0.0;  // Python's sum(): 0 + t0 x0 + t1 x1 + ..., in tap order
        for (int k = 0; k < 2 * kRadius + 1; ++k) {
          const int src = std::clamp(at + k - kRadius, 0, n - 1);  // np.pad(mode="edge")
          acc += t[size_t(k)] * (axis == 0 ? cur.at(src, c) : cur.at(r, src));
        }
        out.at(r, c) = acc;
      }
    cur = std::move(out);
  }
  return cur;
}

Plane mscn(const Plane& luma) {
  Plane sq(luma.rows, luma.cols);
  for (size_t i = 0; i < luma.v.size(); ++i) sq.v[i] = luma.v[i] * luma.v[i];
  const Plane mu = gaussian_blur(luma);
  const Plane mu2 = gaussian_blur(sq);
  Plane out(luma.rows, luma.cols);
  for (size_t i = 0; i < luma.v.size(); ++i) {
    const double sigma = std::sqrt(std::fabs(mu2.v[i] - mu.v[i] * mu.v[i]));
    out.v[i] = (luma.v[i] - mu.v[i]) / (sigma + kC);
  }
  return out;
}

double nearest_shape(double rho) {
  const ShapeGrid& g = shape_grid();
  const size_t n = g.order.size();
  // np.searchsorted(order, rho) (left), clipped to [1, n-1]; then the nearer neighbour, ties to idx - 1
  // (the larger shape); rho = inf or NaN lands on idx - 1 = n - 2, exactly as numpy's expression does.
  size_t idx = size_t(std::lower_bound(g.order.begin(), g.order.end(), rho, less_nan_last) - g.order.begin());
  idx = std::clamp<size_t>(idx, 1, n - 1);
  const size_t pick = std::fabs(g.order[idx] - rho) < std::fabs(g.order[idx - 1] - rho) ? idx : idx - 1;
  return g.alpha[n - 1 - pick];
}

Ggd ggd_fit(const double* x, size_t n) {
  std::vector<double> tmp(n);
  for (size_t i = 0; i < n; ++i) tmp[i] = x[i] * x[i];
  const double var = pairwise_sum(tmp.data(), n) / double(n);
  for (size_t i = 0; i < n; ++i) tmp[i] = std::fabs(x[i]);
  const double mabs = pairwise_sum(tmp.data(), n) / double(n);
  const double rho = mabs > 0 ? var / (mabs * mabs) : kInf;
  return Ggd{nearest_shape(rho), var};
}

Aggd aggd_fit(const double* x, size_t n) {
  std::vector<double> tmp(n);
  // Left / right variances: the squares of one sign, zeros elsewhere, summed over the whole row (np.where).
  size_t neg = 0, pos = 0;
  for (size_t i = 0; i < n; ++i) {
    neg += x[i] < 0;
    tmp[i] = x[i] < 0 ? x[i] * x[i] : 0.0;
  }
  const double lvar = pairwise_sum(tmp.data(), n) / double(std::max<size_t>(neg, 1));
  for (size_t i = 0; i < n; ++i) {
    pos += x[i] > 0;
    tmp[i] = x[i] > 0 ? x[i] * x[i] : 0.0;
  }
  const double rvar = pairwise_sum(tmp.data(), n) / double(std::max<size_t>(pos, 1));
  const double sl = std::sqrt(lvar), sr = std::sqrt(rvar);
  const double gamma = sr > 0 ? sl / sr : 1.0;
  for (size_t i = 0; i < n; ++i) tmp[i] = std::fabs(x[i]);
  const double mabs = pairwise_sum(tmp.data(), n) / double(n);
  for (size_t i = 0; i < n; ++i) tmp[i] = x[i] * x[i];
  const double msq = pairwise_sum(tmp.data(), n) / double(n);
  const double r_hat = msq > 0 ? (mabs * mabs) / msq : 0.0;
  const double g2 = gamma * gamma + 1.0;
  const double big_r = r_hat * (std::pow(gamma, 3.0) + 1.0) * (gamma + 1.0) / (g2 * g2);
  const double rho = big_r > 0 ? 1.0 / big_r : kInf;
  const double shape = nearest_shape(rho);
  const double e1 = std::exp(log_gamma(1.0 / shape)), e2 = std::exp(log_gamma(2.0 / shape)),
               e3 = std::exp(log_gamma(3.0 / shape));
  const double mean = (sr - sl) * (e2 / e1) * std::sqrt(e1 / e3);
  return Aggd{shape, mean, lvar, rvar};
}

std::vector<double> features(const Plane& luma, int patch, size_t* rows) {
  if (std::min(luma.rows, luma.cols) < patch)
    throw Error(FGRESQ_UNSUPPORTED, "NIQE needs a luma of at least " + std::to_string(patch) + "x" +
                                        std::to_string(patch) + " pixels, got shape (" + std::to_string(luma.rows) +
                                        ", " + std::to_string(luma.cols) + ")");
  std::vector<double> f1, f2;
  std::vector<bool> flat1, flat2;
  size_t n1 = 0, n2 = 0;
  scale_features(luma, patch, f1, flat1, n1);
  scale_features(half_of(luma), patch / 2, f2, flat2, n2);
  // The half's grid is the same (floor(floor(H/2)/32) = floor(H/64)); numpy pairs rows by index (f2[:n1]).
  if (n2 < n1) throw Error(FGRESQ_INTERNAL, "NIQE: the half-scale patch grid is smaller than the full one");
  std::vector<double> f(n1 * kFeatures);
  for (size_t i = 0; i < n1; ++i) {
    const bool flat = flat1[i] || flat2[i];
    for (int j = 0; j < 18; ++j) {
      f[i * kFeatures + size_t(j)] = flat ? kNaN : f1[i * 18 + size_t(j)];
      f[i * kFeatures + 18 + size_t(j)] = flat ? kNaN : f2[i * 18 + size_t(j)];
    }
  }
  *rows = n1;
  return f;
}

double distance(const Pristine& pristine, const Plane& luma) {
  constexpr size_t F = kFeatures;
  size_t n = 0;
  const std::vector<double> all = features(luma, pristine.patch, &n);
  std::vector<double> f;  // the kept (all-finite) rows
  for (size_t i = 0; i < n; ++i) {
    const double* row = &all[i * F];
    if (std::all_of(row, row + F, [](double x) { return std::isfinite(x); })) f.insert(f.end(), row, row + F);
  }
  const size_t k = f.size() / F;
  if (k == 0) return kFlatDistance;
  // Mean over patches: numpy reduces axis 0 row after row.
  std::vector<double> mean(F, 0.0);
  for (size_t i = 0; i < k; ++i)
    for (size_t j = 0; j < F; ++j) mean[j] += f[i * F + j];
  for (double& m : mean) m /= double(k);
  // np.cov(f, rowvar=False): centred cross products times 1 / (k - 1); one patch: no spread at all.
  std::vector<double> cov(F * F, 0.0);
  if (k > 1) {
    for (size_t i = 0; i < k; ++i)
      for (size_t j = 0; j < F; ++j) f[i * F + j] -= mean[j];
    const double inv = 1.0 / double(k - 1);
    for (size_t a = 0; a < F; ++a)
      for (size_t b = 0; b < F; ++b) {
        double s = 0.0;
        for (size_t i = 0; i < k; ++i) s += f[i * F + a] * f[i * F + b];
        cov[a * F + b] = s * inv;
      }
  }
  std::vector<double> pooled(F * F), d(F), lower;
  for (size_t i = 0; i < F * F; ++i) pooled[i] = (pristine.cov[i] + cov[i]) / 2.0;
  for (size_t j = 0; j < F; ++j) d[j] = pristine.mean[j] - mean[j];
  // The pristine covariance is positive definite and the image's is semi-definite, so the pool is too.
  if (!cholesky(pooled, F, lower))
    throw Error(FGRESQ_RUNTIME, "NIQE: the pooled covariance is not positive definite");
  double yy = 0.0;
  std::vector<double> y(F);
  for (size_t i = 0; i < F; ++i) {  // forward substitution: lower · y = d
    double t = d[i];
    for (size_t j = 0; j < i; ++j) t -= lower[i * F + j] * y[j];
    y[i] = t / lower[i * F + i];
    yy += y[i] * y[i];
  }
  return std::min(std::sqrt(std::max(yy, 0.0)), kFlatDistance);  // NaN stays NaN, as Python's min/max
}

Plane luma_of_view(const float* view, int size, const double mean[3], const double stdv[3]) {
  const size_t plane = size_t(size) * size_t(size);
  Plane luma(size, size);
  for (size_t i = 0; i < plane; ++i) {
    double rgb[3];
    for (size_t c = 0; c < 3; ++c) rgb[c] = (double(view[c * plane + i]) * stdv[c] + mean[c]) * 255.0;
    luma.v[i] = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
  }
  return luma;
}

Pristine parse_pristine(const uint8_t* data, size_t size, const std::string& where) {
  Json model;
  try {
    model = parse_json(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const JsonError& e) {
    corrupt(where + ": not valid JSON (" + e.what() + ")");
  }
  const Json* fmt = model.get("format");
  if (!model.is_object() || !fmt || !fmt->is_string() || fmt->string != kPristineFormat)
    corrupt(where + ": not a " + kPristineFormat + " file");
  const Json* mean = model.get("mean");
  const Json* cov = model.get("cov");
  Pristine p;
  std::vector<size_t> mshape, cshape;
  if (!mean || !cov || !as_array(*mean, mshape, p.mean) || !as_array(*cov, cshape, p.cov))
    corrupt(where + ": mean/cov are not numbers");
  const Json* patch = model.get("patch");  // Python: patch != 64 (64.0 is equal, true is not)
  const bool patch_ok = !patch || (patch->is_number() && patch->number == double(kPatch));
  const std::vector<size_t> want_mean{size_t(kFeatures)}, want_cov{size_t(kFeatures), size_t(kFeatures)};
  if (mshape != want_mean || cshape != want_cov || !patch_ok)
    corrupt(where + ": needs a " + std::to_string(kFeatures) + "-feature mean and covariance with " +
            std::to_string(kPatch) + "-px patches");
  if (!all_finite(p.mean) || !all_finite(p.cov)) corrupt(where + ": mean/cov are not finite");
  if (!symmetric(p.cov, kFeatures)) corrupt(where + ": covariance is not a finite symmetric matrix");
  std::vector<double> lower;
  if (!cholesky(p.cov, kFeatures, lower)) corrupt(where + ": covariance is not positive definite");
  p.patch = kPatch;
  return p;
}

double Term::log_distance(const float* view, int size) const {
  const double d = distance(pristine, luma_of_view(view, size, mean, stdv));
  return std::log(std::max(d, 1e-12));
}

double Term::fuse(float score, double log_d) const {
  // np.clip keeps NaN; the logit of the clamped score, then the calibrated sigmoid.
  double s = double(score);
  s = s < kScoreClamp ? kScoreClamp : (s > 1.0 - kScoreClamp ? 1.0 - kScoreClamp : s);
  const double logit = std::log(s) - std::log1p(-s);
  const double z = scale * (logit - weight * log_d) + offset;
  return 1.0 / (1.0 + std::exp(-z));
}

}  // namespace fgresq::detail::niqe
