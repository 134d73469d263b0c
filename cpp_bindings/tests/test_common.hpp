// The test cases written by make_test_data.py.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fgresq.h"
#include "testing.hpp"

struct Case {
  std::string name;
  int width = 0, height = 0, channels = 0;
  double expected_score = 0;
  std::vector<uint8_t> pixels;
  fgresq_image image() const { return fgresq_image{pixels.data(), width, height, 0, channels}; }
};

inline std::vector<Case> load_cases(const std::string& dir) {
  std::vector<Case> out;
  for (const auto& row : testing::read_tsv(dir + "/cases.tsv")) {
    Case c;
    c.name = row.at(0);
    c.width = std::stoi(row.at(1));
    c.height = std::stoi(row.at(2));
    c.channels = std::stoi(row.at(3));
    c.expected_score = std::stod(row.at(4));
    c.pixels = testing::read_bytes(dir + "/images/" + c.name + ".raw");
    if (c.pixels.size() != size_t(c.width) * c.height * c.channels) {
      std::fprintf(stderr, "%s: raw size mismatch\n", c.name.c_str());
      std::exit(2);
    }
    out.push_back(std::move(c));
  }
  return out;
}

inline std::vector<fgresq_image> images_of(const std::vector<Case>& cases) {
  std::vector<fgresq_image> v;
  for (const auto& c : cases) v.push_back(c.image());
  return v;
}

inline fgresq_model* open_or_die(const std::string& bundle) {
  fgresq_model* m = nullptr;
  fgresq_status st = fgresq_open(bundle.c_str(), nullptr, &m);
  if (st != FGRESQ_OK) {
    std::fprintf(stderr, "fgresq_open(%s): %s: %s\n", bundle.c_str(), fgresq_status_string(st), fgresq_last_error());
    std::exit(2);
  }
  return m;
}

// fgresq_score on all cases against their expected scores, each within tol; returns the largest difference.
inline double check_scores(fgresq_model* m, const std::vector<Case>& cases, std::vector<float>& scores, double tol,
                           const char* against = "Python") {
  const auto images = images_of(cases);
  scores.assign(cases.size(), -1.0f);
  CHECK(fgresq_score(m, images.data(), images.size(), scores.data()) == FGRESQ_OK);
  double worst = 0.0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const double d = std::fabs(double(scores[i]) - cases[i].expected_score);
    worst = std::max(worst, d);
    CHECK_MSG(d <= tol, "%s: score %.8f, %s %.8f", cases[i].name.c_str(), scores[i], against, cases[i].expected_score);
  }
  return worst;
}

// What the library ranks, indexed by input: fgresq_rank's order, scores, win rates and tiers, and the
// Bradley–Terry strengths of fgresq_rank_features on the same images.
struct Ranked {
  std::vector<int32_t> order, tier;
  std::vector<float> scores;
  std::vector<double> win, strength;
};

// fgresq_rank, and fgresq_encode + fgresq_rank_features, which must agree on order and tiers.
inline Ranked rank_images(fgresq_model* m, const std::vector<fgresq_image>& images) {
  const size_t n = images.size();
  Ranked r{std::vector<int32_t>(n), std::vector<int32_t>(n), std::vector<float>(n), std::vector<double>(n),
           std::vector<double>(n)};
  CHECK(fgresq_rank(m, images.data(), n, r.order.data(), r.scores.data(), r.win.data(), r.tier.data()) == FGRESQ_OK);
  std::vector<float> feats(n * size_t(fgresq_feature_size(m))), fscores(n);
  CHECK(fgresq_encode(m, images.data(), n, feats.data(), fscores.data()) == FGRESQ_OK);
  std::vector<int32_t> order2(n), tier2(n);
  std::vector<double> win2(n);
  CHECK(fgresq_rank_features(m, feats.data(), fscores.data(), n, order2.data(), win2.data(), tier2.data(),
                             r.strength.data()) == FGRESQ_OK);
  CHECK(order2 == r.order);
  CHECK(tier2 == r.tier);
  return r;
}

struct RankDiff {
  double win = 0, strength = 0;
};

// A ranking against the Python SDK's rank.tsv rows (rank, input index, score, win rate, tier, strength): the
// same order and tiers, scores within 1e-4, win rates and strengths within tol. A single image's win rate is
// NaN on both sides (Python writes nan).
inline RankDiff check_ranking(const std::string& what, const Ranked& got, const std::vector<std::vector<std::string>>& want,
                              double tol) {
  RankDiff worst;
  CHECK_MSG(want.size() == got.order.size(), "%s: %zu ranked, Python %zu", what.c_str(), got.order.size(), want.size());
  for (size_t k = 0; k < want.size() && k < got.order.size(); ++k) {
    const int idx = std::stoi(want[k][1]);
    CHECK_MSG(got.order[k] == idx, "%s rank %zu: C++ has input %d, Python %d", what.c_str(), k + 1, got.order[k], idx);
    const size_t i = size_t(idx);
    const double w = std::stod(want[k][3]), s = std::stod(want[k][5]);
    const bool both_nan = std::isnan(w) && std::isnan(got.win[i]);
    if (!both_nan) worst.win = std::max(worst.win, std::fabs(got.win[i] - w));
    worst.strength = std::max(worst.strength, std::fabs(got.strength[i] - s));
    CHECK_MSG(both_nan || std::fabs(got.win[i] - w) <= tol, "%s input %d: win rate %.12g, Python %.12g", what.c_str(),
              idx, got.win[i], w);
    CHECK_MSG(std::fabs(got.strength[i] - s) <= tol, "%s input %d: strength %.12g, Python %.12g", what.c_str(), idx,
              got.strength[i], s);
    CHECK_MSG(got.tier[i] == std::stoi(want[k][4]), "%s input %d: tier %d, Python %s", what.c_str(), idx, got.tier[i],
              want[k][4].c_str());
    CHECK_MSG(std::fabs(double(got.scores[i]) - std::stod(want[k][2])) <= 1e-4, "%s input %d: score %.8f, Python %s",
              what.c_str(), idx, got.scores[i], want[k][2].c_str());
  }
  return worst;
}

// fgresq_compare (raw: fgresq_compare_raw) on the pairs of a compare.tsv (a, b, p_first, p_second, p_similar from
// Scorer.compare(raw=...)): each probability within 1e-4, and they sum to 1. Returns the largest difference.
inline double check_compare(fgresq_model* m, const std::vector<fgresq_image>& images, const std::string& tsv, bool raw) {
  double worst = 0.0;
  const auto rows = testing::read_tsv(tsv);
  CHECK_MSG(!rows.empty(), "%s: no pairs", tsv.c_str());
  for (const auto& row : rows) {
    const size_t a = size_t(std::stoi(row[0])), b = size_t(std::stoi(row[1]));
    double p[3];
    CHECK((raw ? fgresq_compare_raw(m, &images[a], &images[b], p) : fgresq_compare(m, &images[a], &images[b], p)) ==
          FGRESQ_OK);
    for (size_t r = 0; r < 3; ++r) {
      const double d = std::fabs(p[r] - std::stod(row[2 + r]));
      worst = std::max(worst, d);
      CHECK_MSG(d <= 1e-4, "%s (%zu, %zu)[%zu] = %.8f, Python %s", tsv.c_str(), a, b, r, p[r], row[2 + r].c_str());
    }
    CHECK(std::fabs(p[0] + p[1] + p[2] - 1.0) < 1e-12);
  }
  return worst;
}
