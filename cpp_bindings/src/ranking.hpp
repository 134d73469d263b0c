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

// The head reduced to per-image terms (fgresq_sdk.heads.PairTerms): logits_ij = first_i + second_j (bias folded
// into `second`), and exp(logits_ij,k) = F_ik·G_jk with per-image factors scaled into (0, 1], so a pair's
// probabilities cost three products and one division, no exp.
struct PairTerms {
  size_t n = 0;
  std::vector<double> first, second;  // n × 3: logit terms as the first image, as the second (+ bias)
  std::vector<double> f, g;           // n × 3: exp(first − max first_i), exp(second − max second_j)

  PairTerms(const CompareHead& head, const float* features, size_t count);
  // Raw head probabilities (first better, second better, similar) of the pair (i first, j second): exact softmax.
  void probs(size_t i, size_t j, double out[3]) const;
  // P(i ≻ j) = p_first + ½·p_similar with i first (not symmetrised), from the factors.
  double preference(size_t i, size_t j) const;
};

// Σ_{j≠i} P̃_ij per item, P̃_ij = ½(P(i≻j) + 1 − P(j≻i)) (ranking.soft_wins): all the Bradley–Terry fit needs
// from the n² pairs. O(n) memory.
std::vector<double> soft_wins(const PairTerms& pairs);

constexpr double kRtol = 1e-9;   // Newton stops when its step is below kRtol·max(1, max|θ|)
constexpr int kMaxNewton = 60;

struct BTFit {
  std::vector<double> theta;  // log-strengths, mean zero
  bool converged = true;      // the last Newton step was below the tolerance
  int iterations = 0;         // Newton steps taken
};

// ranking.fit_bradley_terry: log-strengths θ maximising Σ_{i≠j} P̃_ij·log σ(θ_i − θ_j) + the prior (each item
// plays 2·prior games against a virtual item of θ = 0 and wins half of them), from the soft-win totals, by
// Newton's method (conjugate-gradient steps, line search on ‖∇ℓ‖). prior > 0 (std::invalid_argument otherwise).
// Memory: the pair curvatures as one packed float32 upper triangle (2·n² bytes) and O(n) vectors.
BTFit fit_bradley_terry(const std::vector<double>& wins, double prior = kPriorGames, double rtol = kRtol,
                        int max_iter = kMaxNewton);

// ranking.bradley_terry: the fit from a full P̃ (n × n, row-major); kept for tests.
std::vector<double> bradley_terry(const std::vector<double>& pref, size_t n, double prior = kPriorGames,
                                  double rtol = kRtol, int max_iter = kMaxNewton);

struct RankResult {
  std::vector<int32_t> order;    // input indices, best first
  std::vector<double> strength;  // Bradley–Terry log-strength per input (mean zero)
  std::vector<double> win_rate;  // per input; NaN for a single image (no others to win against)
  std::vector<int32_t> tier;     // per input, 1 = best
  bool converged = true;         // the fit met its tolerance
  int iterations = 0;            // Newton steps of the fit
};

// ranking.rank_pairs on the head's pair terms: soft wins, Newton fit, ties by score, tiers.
RankResult rank_features(const CompareHead& head, const float* features, const float* scores, size_t n);

}  // namespace fgresq::detail
