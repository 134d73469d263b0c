#include "ranking.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace fgresq::detail {

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
  double m = std::max(logits[0], std::max(logits[1], logits[2]));
  double e[3];
  for (int r = 0; r < 3; ++r) e[r] = std::exp(logits[r] - m);
  double s = e[0] + e[1] + e[2];
  for (int r = 0; r < 3; ++r) out[r] = e[r] / s;
}

std::vector<double> bradley_terry(const std::vector<double>& pref, size_t n, double prior, double tol, int max_iter) {
  if (n == 1) return {0.0};
  std::vector<double> wins(n), pi(n, 1.0), next(n);
  for (size_t i = 0; i < n; ++i) {
    double s = 0.0;
    for (size_t j = 0; j < n; ++j)
      if (j != i) s += pref[i * n + j];
    wins[i] = s + prior;  // half a win against the virtual item of strength 1
  }
  for (int it = 0; it < max_iter; ++it) {
    double change = 0.0;
    for (size_t i = 0; i < n; ++i) {
      double d = 0.0;
      for (size_t j = 0; j < n; ++j)
        if (j != i) d += 1.0 / (pi[i] + pi[j]);
      d += 2 * prior / (pi[i] + 1.0);
      next[i] = wins[i] / d;
      change = std::max(change, std::fabs(std::log(next[i]) - std::log(pi[i])));
    }
    pi.swap(next);
    if (change < tol) break;
  }
  std::vector<double> theta(n);
  double mean = 0.0;
  for (size_t i = 0; i < n; ++i) {
    theta[i] = std::log(pi[i]);
    mean += theta[i];
  }
  mean /= double(n);
  for (double& t : theta) t -= mean;
  return theta;
}

RankResult rank_features(const CompareHead& head, const float* features, const float* scores, size_t n) {
  RankResult r;
  if (n == 0) return r;
  const size_t f = size_t(head.feature_size);
  std::vector<double> a(n * 3), b(n * 3);
  for (size_t i = 0; i < n; ++i) head.terms(features + i * f, &a[i * 3], &b[i * 3]);

  // Symmetrised preference P̃ (n×n, diagonal ½): P(i≻j) = p_first + ½ p_similar, P̃_ij = ½(P(i≻j) + 1 − P(j≻i)).
  std::vector<double> pref(n * n, 0.5);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      double pij[3], pji[3];
      head.probs(&a[i * 3], &b[j * 3], pij);
      head.probs(&a[j * 3], &b[i * 3], pji);
      double prefij = pij[0] + 0.5 * pij[2];
      double prefji = pji[0] + 0.5 * pji[2];
      pref[i * n + j] = 0.5 * (prefij + 1.0 - prefji);
      pref[j * n + i] = 0.5 * (prefji + 1.0 - prefij);
    }
  }
  r.strength = bradley_terry(pref, n);
  r.win_rate.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (n == 1) {
      r.win_rate[i] = 1.0;
      continue;
    }
    double s = 0.0;
    for (size_t j = 0; j < n; ++j) s += pref[i * n + j];
    r.win_rate[i] = (s - 0.5) / double(n - 1);
  }
  // np.lexsort((-scores, -round(theta, 9))): strength rounded to 9 decimals first, then score; stable.
  std::vector<double> key(n);
  for (size_t i = 0; i < n; ++i) key[i] = std::nearbyint(r.strength[i] * 1e9);
  r.order.resize(n);
  std::iota(r.order.begin(), r.order.end(), 0);
  std::stable_sort(r.order.begin(), r.order.end(), [&](int32_t x, int32_t y) {
    if (key[x] != key[y]) return key[x] > key[y];
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
      head.probs(&a[prev * 3], &b[idx * 3], ahead);
      head.probs(&a[idx * 3], &b[prev * 3], behind);
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
