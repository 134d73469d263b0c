#include "ranking.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace fgresq::detail {

namespace {

void softmax3(const double logits[3], double out[3]) {
  const double m = std::max(logits[0], std::max(logits[1], logits[2]));
  double e[3];
  for (int r = 0; r < 3; ++r) e[r] = std::exp(logits[r] - m);
  const double s = e[0] + e[1] + e[2];
  for (int r = 0; r < 3; ++r) out[r] = e[r] / s;
}

}  // namespace

void CompareHead::terms(const float* q, double a[3], double b[3]) const {
  const size_t f = size_t(feature_size);
  for (int r = 0; r < 3; ++r) {
    const double* w = &weight[size_t(r) * 2 * f];
    double sa = 0.0, sb = 0.0;
    for (size_t k = 0; k < f; ++k) {
      const double x = static_cast<double>(q[k]);
      sa += x * w[k];
      sb += x * w[f + k];
    }
    a[r] = sa;
    b[r] = sb;
  }
}

void CompareHead::probs(const double a_first[3], const double b_second[3], double out[3]) const {
  double logits[3];
  for (int r = 0; r < 3; ++r) logits[r] = a_first[r] + b_second[r] + bias[r];
  softmax3(logits, out);
}

// ---- pair terms ----------------------------------------------------------------------------------------


PairTerms::PairTerms(const CompareHead& head, const float* features, size_t count)
    : n(count), first(3 * count), second(3 * count), f(3 * count), g(3 * count) {
  const size_t fs = size_t(head.feature_size);
  for (size_t i = 0; i < n; ++i) {
    double* a = &first[3 * i];
    double* b = &second[3 * i];
    head.terms(features + i * fs, a, b);
    for (int r = 0; r < 3; ++r) b[r] += head.bias[r];
    const double ma = std::max(a[0], std::max(a[1], a[2])), mb = std::max(b[0], std::max(b[1], b[2]));
    for (int r = 0; r < 3; ++r) {
      f[3 * i + size_t(r)] = std::exp(a[r] - ma);
      g[3 * i + size_t(r)] = std::exp(b[r] - mb);
    }
  }
}

void PairTerms::probs(size_t i, size_t j, double out[3]) const {
  double logits[3];
  for (int r = 0; r < 3; ++r) logits[r] = first[3 * i + size_t(r)] + second[3 * j + size_t(r)];
  softmax3(logits, out);
}

double PairTerms::preference(size_t i, size_t j) const {
  const double* fi = &f[3 * i];
  const double* gj = &g[3 * j];
  const double e0 = fi[0] * gj[0], e1 = fi[1] * gj[1], e2 = fi[2] * gj[2];
  const double den = e0 + e1 + e2;
  if (!(den > 1e-290)) {  // logits hundreds apart underflow: the exact softmax instead (as heads.PairTerms)
    double p[3];
    probs(i, j, p);
    return p[0] + 0.5 * p[2];
  }
  return (e0 + 0.5 * e2) / den;
}

std::vector<double> soft_wins(const PairTerms& pairs) {
  const size_t n = pairs.n;
  std::vector<double> wins(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    double wi = 0.0;
    for (size_t j = i + 1; j < n; ++j) {
      const double p = ((pairs.preference(i, j) + 1.0) - pairs.preference(j, i)) * 0.5;  // P̃_ij; P̃_ji = 1 − P̃_ij
      wi += p;
      wins[j] += 1.0 - p;
    }
    wins[i] += wi;
  }
  return wins;
}

// ---- the Bradley–Terry fit (ranking.fit_bradley_terry) ------------------------------------------------

namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double norm2(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// The pair curvatures S_ij = σ_ij(1 − σ_ij), i < j, as float32 in a packed upper triangle (row i holds
// j = i+1 … n−1), and their row sums deg_i = Σ_{j≠i} S_ij (summed from the float32 values, so that
// L = diag(deg) − S has L·1 = 0 as exactly as it can).
struct Curvature {
  size_t n = 0;
  std::vector<float> s;
  std::vector<double> deg;

  explicit Curvature(size_t count) : n(count), s(count > 1 ? count * (count - 1) / 2 : 0), deg(count) {}
  size_t row(size_t i) const { return i * (2 * n - i - 1) / 2; }  // offset of S_{i,i+1}

  // y = S·w (S symmetric, zero diagonal).
  void multiply(const std::vector<double>& w, std::vector<double>& y) const {
    std::fill(y.begin(), y.end(), 0.0);
    for (size_t i = 0; i < n; ++i) {
      const float* si = s.data() + row(i);  // si[j − i − 1] = S_ij for j > i
      const double wi = w[i];
      double acc = 0.0;
      for (size_t j = i + 1; j < n; ++j) {
        const double sij = double(si[j - i - 1]);
        acc += sij * w[j];
        y[j] += sij * wi;
      }
      y[i] += acc;
    }
  }
};

// Σ_{j≠i} σ(θ_i − θ_j) per item; with `curv`, also its S and deg. σ_ij = π_i/(π_i + π_j) with
// π = e^(θ − max θ) ∈ (0, 1]: no exp per pair (unless the spread is so large that π_i + π_j could underflow).
std::vector<double> pairwise_pass(const std::vector<double>& theta, Curvature* curv) {
  const size_t n = theta.size();
  std::vector<double> expected(n, 0.0);
  if (curv) std::fill(curv->deg.begin(), curv->deg.end(), 0.0);
  if (n == 0) return expected;
  const double hi = *std::max_element(theta.begin(), theta.end());
  const double lo = *std::min_element(theta.begin(), theta.end());
  const bool use_pi = hi - lo < 600.0;
  std::vector<double> pi(use_pi ? n : 0);
  for (size_t i = 0; i < pi.size(); ++i) pi[i] = std::exp(theta[i] - hi);
  for (size_t i = 0; i < n; ++i) {
    float* si = curv ? curv->s.data() + curv->row(i) : nullptr;  // si[j − i − 1] = S_ij
    double ei = 0.0, di = 0.0;
    for (size_t j = i + 1; j < n; ++j) {
      const double sig = use_pi ? pi[i] / (pi[i] + pi[j]) : 1.0 / (1.0 + std::exp(theta[j] - theta[i]));
      ei += sig;
      expected[j] += 1.0 - sig;
      if (si) {
        const float sij = static_cast<float>(sig * (1.0 - sig));
        si[j - i - 1] = sij;
        di += double(sij);
        curv->deg[j] += double(sij);
      }
    }
    expected[i] += ei;
    if (curv) curv->deg[i] += di;
  }
  return expected;
}

// ∂ℓ/∂θ: soft wins (the prior's half win included) minus the wins θ predicts; fills `curv` for θ.
std::vector<double> gradient(const std::vector<double>& theta, const std::vector<double>& wins, double prior,
                             Curvature* curv) {
  std::vector<double> g = pairwise_pass(theta, curv);
  for (size_t i = 0; i < g.size(); ++i) g[i] = wins[i] + prior - g[i] - 2.0 * prior * sigmoid(theta[i]);
  return g;
}

// Solve (L + diag c)·δ = g by preconditioned conjugate gradients to a relative residual eta. L·1 = 0, so the
// common shift is held only by the weak prior (c): the preconditioner solves that direction exactly (coarse
// correction 1·Σr/Σc) and the rest by the diagonal, M⁻¹r = r/(deg + c) + 1·Σr/Σc (ranking._newton_direction).
std::vector<double> newton_direction(const Curvature& curv, const std::vector<double>& c,
                                     const std::vector<double>& g, double eta, int max_iter = 500) {
  const size_t n = g.size();
  std::vector<double> diag(n);
  double c_sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    diag[i] = curv.deg[i] + c[i];
    c_sum += c[i];
  }
  std::vector<double> w(n), sw(n);
  auto apply = [&](const std::vector<double>& v, std::vector<double>& out) {
    double mean = 0.0;
    for (double x : v) mean += x;
    mean /= double(n);
    for (size_t i = 0; i < n; ++i) w[i] = v[i] - mean;  // L·1 = 0: apply L to the centred vector
    curv.multiply(w, sw);
    for (size_t i = 0; i < n; ++i) out[i] = curv.deg[i] * w[i] - sw[i] + c[i] * v[i];
  };
  auto precondition = [&](const std::vector<double>& r, std::vector<double>& z) {
    double sum = 0.0;
    for (double x : r) sum += x;
    for (size_t i = 0; i < n; ++i) z[i] = r[i] / diag[i] + sum / c_sum;
  };
  std::vector<double> x(n, 0.0), r = g, z(n), p(n), ap(n);
  const double target = eta * norm2(g);
  if (target == 0.0) return x;
  precondition(r, z);
  p = z;
  double rz = dot(r, z);
  for (int it = 0; it < max_iter; ++it) {
    apply(p, ap);
    const double alpha = rz / dot(p, ap);
    for (size_t i = 0; i < n; ++i) {
      x[i] += alpha * p[i];
      r[i] -= alpha * ap[i];
    }
    if (norm2(r) <= target) break;
    precondition(r, z);
    const double rz_new = dot(r, z);
    const double beta = rz_new / rz;
    rz = rz_new;
    for (size_t i = 0; i < n; ++i) p[i] = z[i] + beta * p[i];
  }
  return x;
}

std::vector<double> centred(std::vector<double> theta) {
  if (theta.empty()) return theta;
  double mean = 0.0;
  for (double t : theta) mean += t;
  mean /= double(theta.size());
  for (double& t : theta) t -= mean;
  return theta;
}

}  // namespace

BTFit fit_bradley_terry(const std::vector<double>& wins, double prior, double rtol, int max_iter) {
  if (!(prior > 0.0))
    throw std::invalid_argument("prior must be > 0: without it the strengths are defined only up to a shift");
  const size_t n = wins.size();
  BTFit fit;
  if (n == 0) return fit;
  // Start from each item's win-rate logit, the prior's half win and loss included.
  const double games = double(n - 1) + 2.0 * prior;
  std::vector<double> theta(n);
  for (size_t i = 0; i < n; ++i) {
    const double rate = (wins[i] + prior) / games;
    theta[i] = std::log(rate) - std::log1p(-rate);
  }
  Curvature curv(n);
  std::vector<double> g = gradient(theta, wins, prior, &curv);
  double g0 = norm2(g);
  if (g0 == 0.0) g0 = 1.0;
  std::vector<double> c(n), trial(n);
  for (int it = 1; it <= max_iter; ++it) {
    const double gnorm = norm2(g);
    const double eta = std::min(0.1, std::max(1e-6, gnorm / g0));  // inexact Newton: loose early, tight late
    for (size_t i = 0; i < n; ++i) {
      const double s = sigmoid(theta[i]);
      c[i] = 2.0 * prior * s * (1.0 - s);
    }
    const std::vector<double> step = newton_direction(curv, c, g, eta);
    if (max_abs(step) <= rtol * std::max(1.0, max_abs(theta))) {
      for (size_t i = 0; i < n; ++i) theta[i] += step[i];
      fit.theta = centred(std::move(theta));
      fit.converged = true;
      fit.iterations = it;
      return fit;
    }
    // Line search: the largest t in 1, ½, ¼, … whose point lowers ‖∇ℓ‖ (fills curv for it).
    bool ok = false;
    double t = 1.0;
    for (int k = 0; k < 40; ++k) {
      for (size_t i = 0; i < n; ++i) trial[i] = theta[i] + t * step[i];
      std::vector<double> g_trial = gradient(trial, wins, prior, &curv);
      if (norm2(g_trial) <= (1.0 - 1e-4 * t) * gnorm) {
        theta.swap(trial);
        g.swap(g_trial);
        ok = true;
        break;
      }
      t *= 0.5;
    }
    if (!ok) {  // no step lowers ‖∇ℓ‖: fine if ∇ℓ is at float64 rounding level already
      fit.theta = centred(std::move(theta));
      fit.converged = max_abs(g) <= 1e-12 * double(n + 1);
      fit.iterations = it;
      return fit;
    }
  }
  fit.theta = centred(std::move(theta));
  fit.converged = false;
  fit.iterations = max_iter;
  return fit;
}

std::vector<double> bradley_terry(const std::vector<double>& pref, size_t n, double prior, double rtol, int max_iter) {
  std::vector<double> wins(n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      if (j != i) wins[i] += pref[i * n + j];
  return fit_bradley_terry(wins, prior, rtol, max_iter).theta;
}

RankResult rank_features(const CompareHead& head, const float* features, const float* scores, size_t n) {
  RankResult r;
  if (n == 0) return r;
  const PairTerms pairs(head, features, n);
  const std::vector<double> wins = soft_wins(pairs);
  BTFit fit = fit_bradley_terry(wins);
  r.strength = std::move(fit.theta);
  r.converged = fit.converged;
  r.iterations = fit.iterations;
  r.win_rate.resize(n);
  for (size_t i = 0; i < n; ++i)
    r.win_rate[i] = n > 1 ? wins[i] / double(n - 1) : std::numeric_limits<double>::quiet_NaN();
  // np.lexsort((-scores, -round(theta, 9))): strength rounded to 9 decimals first, then score; stable.
  std::vector<double> key(n);
  for (size_t i = 0; i < n; ++i) key[i] = std::nearbyint(r.strength[i] * 1e9);
  r.order.resize(n);
  std::iota(r.order.begin(), r.order.end(), 0);
  std::stable_sort(r.order.begin(), r.order.end(), [&](int32_t x, int32_t y) {
    if (key[size_t(x)] != key[size_t(y)]) return key[size_t(x)] > key[size_t(y)];
    return static_cast<double>(scores[x]) > static_cast<double>(scores[y]);
  });
  // Tiers (ranking._tiers): adjacent images share a tier when compare would say "similar" for them
  // (order-symmetrised probabilities, the verdict rule).
  r.tier.assign(n, 0);
  int32_t current = 1;
  for (size_t k = 0; k < n; ++k) {
    const size_t idx = size_t(r.order[k]);
    if (k > 0) {
      const size_t prev = size_t(r.order[k - 1]);
      double ahead[3], behind[3], sym[3];
      pairs.probs(prev, idx, ahead);
      pairs.probs(idx, prev, behind);
      symmetrise(ahead, behind, sym);
      if (verdict(sym) != 2) ++current;
    }
    r.tier[idx] = current;
  }
  return r;
}

void symmetrise(const double fwd[3], const double bwd[3], double out[3]) {
  out[0] = 0.5 * (fwd[0] + bwd[1]);
  out[1] = 0.5 * (fwd[1] + bwd[0]);
  out[2] = 0.5 * (fwd[2] + bwd[2]);
}

int verdict(const double p[3]) {
  if (p[2] >= std::max(p[0], p[1]) || std::fabs(p[0] - p[1]) < kTieMargin) return 2;
  return p[0] > p[1] ? 0 : 1;
}

}  // namespace fgresq::detail
