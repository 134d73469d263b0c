// The comparison head and the ranking of fgresq_sdk/heads.py + fgresq_sdk/ranking.py, in double precision.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fgresq::detail {

constexpr double kPriorGames = 0.5;

// compare_head = Linear(2F, 3) on [q_first, q_second]; split into per-image terms.
struct CompareHead {
  int feature_size = 0;        // F = 3·D
  std::vector<double> weight;  // 3 × 2F, row-major
  double bias[3] = {0, 0, 0};

  // Terms of one image as the first (a) and as the second (b) of a pair.
  void terms(const float* q, double a[3], double b[3]) const;
  // Softmax over the three logits a_first + b_second + bias.
  void probs(const double a_first[3], const double b_second[3], double out[3]) const;
};

// fgresq_sdk/verdict.py: the one rule behind compare's verdict and rank's tiers.
constexpr double kTieMargin = 0.02;  // |p_first − p_second| below this reads "similar"

// Order-symmetrised probabilities of (A, B) from the raw head probabilities of (A, B) and of (B, A):
// first = ½(fwd_first + bwd_second), second = ½(fwd_second + bwd_first), similar = ½(fwd_similar + bwd_similar).
void symmetrise(const double fwd[3], const double bwd[3], double out[3]);
// 0 = first, 1 = second, 2 = similar: "similar" when p_similar ≥ both others or |p_first − p_second| < kTieMargin.
int verdict(const double p[3]);

struct RankResult {
  std::vector<int32_t> order;    // input indices, best first
  std::vector<double> strength;  // Bradley–Terry log-strength per input (mean zero)
  std::vector<double> win_rate;  // per input
  std::vector<int32_t> tier;     // per input, 1 = best
};

// Hunter's MM fit with the virtual-item prior, exactly as ranking.bradley_terry.
std::vector<double> bradley_terry(const std::vector<double>& pref, size_t n, double prior = kPriorGames,
                                  double tol = 1e-10, int max_iter = 5000);

RankResult rank_features(const CompareHead& head, const float* features, const float* scores, size_t n);

}  // namespace fgresq::detail
