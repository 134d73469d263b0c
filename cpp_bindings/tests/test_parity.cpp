// C API vs the Python SDK on the same pixels: preprocessing, scores, comparison and ranking.
#include <algorithm>
#include <cmath>

#include "fgresq.hpp"
#include "test_common.hpp"

static const float kStd[3] = {0.26862954f, 0.26130258f, 0.27577711f};

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: test_parity TESTDATA_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  const auto cases = load_cases(dir);
  const auto images = images_of(cases);
  fgresq_model* m = open_or_die(dir + "/bundle");
  const int S = fgresq_input_size(m);
  CHECK(S == 224);
  CHECK(fgresq_feature_size(m) == 3 * 64);
  CHECK(std::string(fgresq_model_name(m)) == "fgresq-vit-tiny");

  // (b) preprocessing: the C tensor against Python's, per pixel before normalisation (×std undoes it).
  double max_pre = 0.0, max_norm = 0.0;
  size_t exact = 0, total = 0;
  const size_t plane = size_t(S) * S;
  std::vector<float> t(3 * plane);
  for (const auto& c : cases) {
    fgresq_image img = c.image();
    CHECK(fgresq_preprocess(m, &img, t.data(), t.size()) == FGRESQ_OK);
    const auto ref = testing::read_f32(dir + "/pre/" + c.name + ".f32");
    CHECK(ref.size() == t.size());
    double case_max = 0.0;
    for (size_t i = 0; i < t.size() && i < ref.size(); ++i) {
      const int ch = int(i / plane);
      const double d = std::fabs(double(t[i]) - double(ref[i]));
      max_norm = std::max(max_norm, d);
      case_max = std::max(case_max, d * kStd[ch]);
      exact += t[i] == ref[i];
      ++total;
    }
    max_pre = std::max(max_pre, case_max);
    CHECK_MSG(case_max <= 1.0 / 255.0 + 1e-6, "%s: preprocessing differs by %.6g (> 1/255)", c.name.c_str(), case_max);

    // The same pixels behind a padded stride give the same tensor.
    const size_t row = size_t(c.width) * c.channels, stride = row + 13;
    std::vector<uint8_t> padded(stride * c.height, 0xAB);
    for (int y = 0; y < c.height; ++y) std::memcpy(&padded[y * stride], &c.pixels[y * row], row);
    fgresq_image strided{padded.data(), c.width, c.height, int(stride), c.channels};
    std::vector<float> t2(t.size());
    CHECK(fgresq_preprocess(m, &strided, t2.data(), t2.size()) == FGRESQ_OK);
    CHECK_MSG(t2 == t, "%s: stride changes the tensor", c.name.c_str());
  }

  // (a) scores.
  std::vector<float> scores(cases.size());
  CHECK(fgresq_score(m, images.data(), images.size(), scores.data()) == FGRESQ_OK);
  double max_score = 0.0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const double d = std::fabs(double(scores[i]) - cases[i].expected_score);
    max_score = std::max(max_score, d);
    CHECK_MSG(d <= 1e-4, "%s: score %.8f, Python %.8f", cases[i].name.c_str(), scores[i], cases[i].expected_score);
  }
  // One at a time and in batches of 3: same scores (batching must not matter beyond float noise).
  for (size_t i = 0; i < cases.size(); ++i) {
    float s1 = -1;
    CHECK(fgresq_score(m, &images[i], 1, &s1) == FGRESQ_OK);
    CHECK_MSG(std::fabs(s1 - scores[i]) <= 1e-5, "%s: single %.8f vs batched %.8f", cases[i].name.c_str(), s1, scores[i]);
  }
  {
    fgresq_options o;
    fgresq_options_init(&o);
    o.batch_size = 3;
    o.threads = 1;
    fgresq_model* m3 = nullptr;
    CHECK(fgresq_open((dir + "/bundle").c_str(), &o, &m3) == FGRESQ_OK);
    std::vector<float> s3(cases.size());
    CHECK(fgresq_score(m3, images.data(), images.size(), s3.data()) == FGRESQ_OK);
    for (size_t i = 0; i < cases.size(); ++i) CHECK(std::fabs(s3[i] - scores[i]) <= 1e-5);
    fgresq_close(m3);
  }

  // Ranking: same order and tiers; scores within 1e-4, win rates and strengths (both fits converge to their
  // tolerance) within 1e-6.
  const size_t n = cases.size();
  std::vector<int32_t> order(n), tier(n);
  std::vector<float> rscores(n);
  std::vector<double> win(n);
  CHECK(fgresq_rank(m, images.data(), n, order.data(), rscores.data(), win.data(), tier.data()) == FGRESQ_OK);
  std::vector<float> feats(n * size_t(fgresq_feature_size(m))), fscores(n);
  CHECK(fgresq_encode(m, images.data(), n, feats.data(), fscores.data()) == FGRESQ_OK);
  std::vector<int32_t> order2(n), tier2(n);
  std::vector<double> win2(n), strength(n);
  CHECK(fgresq_rank_features(m, feats.data(), fscores.data(), n, order2.data(), win2.data(), tier2.data(),
                             strength.data()) == FGRESQ_OK);
  CHECK(order2 == order);
  CHECK(tier2 == tier);
  const auto expected = testing::read_tsv(dir + "/rank.tsv");
  CHECK(expected.size() == n);
  double max_win = 0.0, max_strength = 0.0;
  for (size_t k = 0; k < n && k < expected.size(); ++k) {
    const int idx = std::stoi(expected[k][1]);
    CHECK_MSG(order[k] == idx, "rank %zu: C++ has input %d, Python %d", k + 1, order[k], idx);
    const double w = std::stod(expected[k][3]), s = std::stod(expected[k][5]);
    const int ti = std::stoi(expected[k][4]);
    max_win = std::max(max_win, std::fabs(win[idx] - w));
    max_strength = std::max(max_strength, std::fabs(strength[idx] - s));
    CHECK_MSG(std::fabs(win[idx] - w) <= 1e-6, "input %d: win rate %.12g, Python %.12g", idx, win[idx], w);
    CHECK_MSG(std::fabs(strength[idx] - s) <= 1e-6, "input %d: strength %.12g, Python %.12g", idx, strength[idx], s);
    CHECK_MSG(tier[idx] == ti, "input %d: tier %d, Python %d", idx, tier[idx], ti);
    CHECK(std::fabs(double(rscores[idx]) - std::stod(expected[k][2])) <= 1e-4);
  }

  // A larger ranking from features alone (Python's Scorer.rank_features on the same float32 features): the
  // Newton fits agree within 1e-6.
  double max_strength_n = 0.0, max_win_n = 0.0;
  size_t n_big = 0;
  {
    const size_t f = size_t(fgresq_feature_size(m));
    const auto bf = testing::read_f32(dir + "/rank_features/feats.f32");
    const auto bs = testing::read_f32(dir + "/rank_features/scores.f32");
    const auto want = testing::read_tsv(dir + "/rank_features/rank.tsv");
    n_big = bs.size();
    CHECK(n_big >= 100 && bf.size() == n_big * f && want.size() == n_big);
    std::vector<int32_t> o(n_big), t(n_big);
    std::vector<double> w(n_big), st(n_big);
    CHECK(fgresq_rank_features(m, bf.data(), bs.data(), n_big, o.data(), w.data(), t.data(), st.data()) == FGRESQ_OK);
    size_t order_diff = 0, tier_diff = 0;
    for (size_t k = 0; k < n_big && k < want.size(); ++k) {
      const size_t idx = size_t(std::stoi(want[k][1]));
      order_diff += size_t(o[k]) != idx;
      tier_diff += t[idx] != std::stoi(want[k][4]);
      max_win_n = std::max(max_win_n, std::fabs(w[idx] - std::stod(want[k][3])));
      max_strength_n = std::max(max_strength_n, std::fabs(st[idx] - std::stod(want[k][5])));
    }
    CHECK_MSG(order_diff == 0 && tier_diff == 0, "n = %zu: %zu ranks and %zu tiers differ from Python", n_big,
              order_diff, tier_diff);
    CHECK_MSG(max_strength_n <= 1e-6, "n = %zu: max |dstrength| = %.3g", n_big, max_strength_n);
    CHECK_MSG(max_win_n <= 1e-6, "n = %zu: max |dwin_rate| = %.3g", n_big, max_win_n);
  }

  // A single image: no others to win against, so no win rate (NaN, as the Python SDK), tier 1, strength 0.
  {
    int32_t o = -1, t = -1;
    float sc = -1;
    double w = 0.0, st = 1.0;
    CHECK(fgresq_rank(m, &images[0], 1, &o, &sc, &w, &t) == FGRESQ_OK);
    CHECK(o == 0 && t == 1 && std::isnan(w) && std::fabs(sc - scores[0]) <= 1e-5);
    w = 0.0;
    CHECK(fgresq_rank_features(m, feats.data(), fscores.data(), 1, &o, &w, &t, &st) == FGRESQ_OK);
    CHECK(o == 0 && t == 1 && std::isnan(w) && st == 0.0);
  }

  // Comparison: symmetrised (default) and raw (the head on (a, b) only), against Scorer.compare(raw=...).
  double max_cmp = 0.0, max_raw = 0.0;
  for (const char* kind : {"compare", "compare_raw"}) {
    const bool raw = std::string(kind) == "compare_raw";
    for (const auto& row : testing::read_tsv(dir + "/" + kind + ".tsv")) {
      const int a = std::stoi(row[0]), b = std::stoi(row[1]);
      double p[3];
      CHECK((raw ? fgresq_compare_raw(m, &images[a], &images[b], p) : fgresq_compare(m, &images[a], &images[b], p)) ==
            FGRESQ_OK);
      for (int r = 0; r < 3; ++r) {
        const double d = std::fabs(p[r] - std::stod(row[2 + r]));
        double& worst = raw ? max_raw : max_cmp;
        worst = std::max(worst, d);
        CHECK_MSG(d <= 1e-4, "%s(%d, %d)[%d] = %.8f, Python %s", kind, a, b, r, p[r], row[2 + r].c_str());
      }
      CHECK(std::fabs(p[0] + p[1] + p[2] - 1.0) < 1e-12);
    }
  }

  // Order-symmetrised, as Scorer.compare: swapping the images swaps p_first and p_second exactly, and an image
  // against itself is a tie with the verdict "similar".
  {
    const size_t f = size_t(fgresq_feature_size(m));
    double ab[3], ba[3], aa[3];
    CHECK(fgresq_compare_features(m, &feats[0], &feats[f], ab) == FGRESQ_OK);
    CHECK(fgresq_compare_features(m, &feats[f], &feats[0], ba) == FGRESQ_OK);
    CHECK(ab[0] == ba[1] && ab[1] == ba[0] && ab[2] == ba[2]);
    CHECK(fgresq_compare_features(m, &feats[2 * f], &feats[2 * f], aa) == FGRESQ_OK);
    CHECK(aa[0] == aa[1]);
    double p01[3];
    CHECK(fgresq_compare(m, &images[0], &images[1], p01) == FGRESQ_OK);
    for (int r = 0; r < 3; ++r) CHECK(std::fabs(p01[r] - ab[r]) <= 1e-6);
    // Raw: the forward order only; the symmetrised answer is the mean of the two raw orders.
    double rab[3], rba[3], raa[3];
    CHECK(fgresq_compare_features_raw(m, &feats[0], &feats[f], rab) == FGRESQ_OK);
    CHECK(fgresq_compare_features_raw(m, &feats[f], &feats[0], rba) == FGRESQ_OK);
    CHECK(std::fabs(ab[0] - 0.5 * (rab[0] + rba[1])) <= 1e-15 && std::fabs(ab[1] - 0.5 * (rab[1] + rba[0])) <= 1e-15 &&
          std::fabs(ab[2] - 0.5 * (rab[2] + rba[2])) <= 1e-15);
    CHECK(fgresq_compare_features_raw(m, &feats[2 * f], &feats[2 * f], raa) == FGRESQ_OK);
    CHECK(std::fabs(raa[0] + raa[1] + raa[2] - 1.0) < 1e-12);
    CHECK(fgresq_compare_features_raw(m, nullptr, &feats[0], raa) == FGRESQ_INVALID_ARGUMENT);
    CHECK(fgresq_compare_raw(m, &images[0], nullptr, raa) == FGRESQ_INVALID_ARGUMENT);
  }

  // The C++ wrapper gives the same answers.
  try {
    fgresq::Model model(dir + "/bundle");
    auto ranked = model.rank(images);
    for (size_t k = 0; k < n; ++k) CHECK(ranked[k].index == order[k]);
    CHECK(std::fabs(model.score(images[0]) - scores[0]) <= 1e-5);
  } catch (const fgresq::Error& e) {
    std::fprintf(stderr, "fgresq::Error: %s\n", e.what());
    CHECK(false);
  }

  std::printf("parity: %zu images, max |dscore| = %.3g, max preprocessing d (0-1 pixel scale) = %.3g "
              "(normalised: %.3g, %zu/%zu values bit-identical), max |dwin_rate| = %.3g, max |dstrength| = %.3g, "
              "max |dprob| = %.3g (raw %.3g); rank_features n = %zu: max |dstrength| = %.3g, max |dwin_rate| = %.3g\n",
              n, max_score, max_pre, max_norm, exact, total, max_win, max_strength, max_cmp, max_raw, n_big,
              max_strength_n, max_win_n);
  fgresq_close(m);
  return testing::finish("test_parity");
}
