// C API vs the Python SDK on the same pixels: preprocessing, scores, comparison and ranking.
#include <algorithm>
#include <cmath>
#include <map>

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
  std::vector<float> scores;
  const double max_score = check_scores(m, cases, scores, 1e-4);
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
  const Ranked ranked = rank_images(m, images);
  const auto& order = ranked.order;
  const RankDiff rank_diff = check_ranking("parity", ranked, testing::read_tsv(dir + "/rank.tsv"), 1e-6);
  std::vector<float> feats(n * size_t(fgresq_feature_size(m))), fscores(n);
  CHECK(fgresq_encode(m, images.data(), n, feats.data(), fscores.data()) == FGRESQ_OK);

  // A larger ranking from features alone (Python's Scorer.rank_features on the same float32 features): the
  // Newton fits agree within 1e-6.
  RankDiff big_diff;
  size_t n_big = 0;
  {
    const size_t f = size_t(fgresq_feature_size(m));
    const auto bf = testing::read_f32(dir + "/rank_features/feats.f32");
    const auto bs = testing::read_f32(dir + "/rank_features/scores.f32");
    n_big = bs.size();
    CHECK(n_big >= 100 && bf.size() == n_big * f);
    Ranked big{std::vector<int32_t>(n_big), std::vector<int32_t>(n_big), bs, std::vector<double>(n_big),
               std::vector<double>(n_big)};
    CHECK(fgresq_rank_features(m, bf.data(), bs.data(), n_big, big.order.data(), big.win.data(), big.tier.data(),
                               big.strength.data()) == FGRESQ_OK);
    big_diff = check_ranking("rank_features n = " + std::to_string(n_big), big,
                             testing::read_tsv(dir + "/rank_features/rank.tsv"), 1e-6);
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
  const double max_cmp = check_compare(m, images, dir + "/compare.tsv", false);
  const double max_raw = check_compare(m, images, dir + "/compare_raw.tsv", true);

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

  // The naturalness term (bundle_niqe: the same graphs plus model.json "naturalness"): every score path gives
  // Python's fused scores; the features, and so compare, stay the encoder's.
  double max_fused = 0.0, min_moved = 1.0;
  size_t n_fused = 0;
  {
    const auto ncases = load_cases(dir + "/niqe");
    const auto nimages = images_of(ncases);
    n_fused = ncases.size();
    fgresq_model* mn = open_or_die(dir + "/bundle_niqe");
    std::vector<float> fused;
    max_fused = check_scores(mn, ncases, fused, 1e-5, "Python (naturalness term)");
    // The bundle without the term still gives the encoder's scores, visibly different from the fused ones.
    std::vector<float> plain(n_fused);
    CHECK(fgresq_score(m, nimages.data(), n_fused, plain.data()) == FGRESQ_OK);
    for (size_t i = 0; i < cases.size() && i < n_fused; ++i) {
      CHECK_MSG(std::fabs(plain[i] - scores[i]) <= 1e-6, "%s: plain bundle %.8f vs %.8f", cases[i].name.c_str(),
                plain[i], scores[i]);
      min_moved = std::min(min_moved, double(std::fabs(fused[i] - plain[i])));
    }
    CHECK_MSG(min_moved > 1e-2, "the term moves a score by only %.3g", min_moved);
    // fgresq_encode: the same features as the plain bundle, bit for bit, and the fused scores.
    const size_t f = size_t(fgresq_feature_size(mn));
    std::vector<float> qf(n_fused * f), qp(n_fused * f), sf(n_fused);
    CHECK(fgresq_encode(mn, nimages.data(), n_fused, qf.data(), sf.data()) == FGRESQ_OK);
    CHECK(fgresq_encode(m, nimages.data(), n_fused, qp.data(), nullptr) == FGRESQ_OK);
    CHECK(qf == qp);
    for (size_t i = 0; i < n_fused; ++i) CHECK(std::fabs(sf[i] - fused[i]) <= 1e-6);
    // fgresq_rank reports (and ranks with) the fused scores; compare is unchanged.
    const Ranked rn = rank_images(mn, nimages);
    for (size_t i = 0; i < n_fused; ++i) CHECK(std::fabs(rn.scores[i] - fused[i]) <= 1e-6);
    double pf[3], pp[3];
    CHECK(fgresq_compare(mn, &nimages[0], &nimages[1], pf) == FGRESQ_OK);
    CHECK(fgresq_compare(m, &nimages[0], &nimages[1], pp) == FGRESQ_OK);
    CHECK(pf[0] == pp[0] && pf[1] == pp[1] && pf[2] == pp[2]);
    // One at a time and in batches of 3: the term is per image.
    fgresq_options o;
    fgresq_options_init(&o);
    o.batch_size = 3;
    fgresq_model* m3 = nullptr;
    CHECK(fgresq_open((dir + "/bundle_niqe").c_str(), &o, &m3) == FGRESQ_OK);
    std::vector<float> s3(n_fused);
    CHECK(fgresq_score(m3, nimages.data(), n_fused, s3.data()) == FGRESQ_OK);
    for (size_t i = 0; i < n_fused; ++i) {
      float s1 = -1;
      CHECK(fgresq_score(mn, &nimages[i], 1, &s1) == FGRESQ_OK);
      CHECK_MSG(std::fabs(s1 - fused[i]) <= 1e-6 && std::fabs(s3[i] - fused[i]) <= 1e-6, "%s: single %.8f, batch of 3 "
                "%.8f, batched %.8f", ncases[i].name.c_str(), s1, s3[i], fused[i]);
    }
    fgresq_close(m3);
    fgresq_close(mn);
  }

  std::printf("parity: %zu images, max |dscore| = %.3g, max preprocessing d (0-1 pixel scale) = %.3g "
              "(normalised: %.3g, %zu/%zu values bit-identical), max |dwin_rate| = %.3g, max |dstrength| = %.3g, "
              "max |dprob| = %.3g (raw %.3g); rank_features n = %zu: max |dstrength| = %.3g, max |dwin_rate| = %.3g\n",
              n, max_score, max_pre, max_norm, exact, total, rank_diff.win, rank_diff.strength, max_cmp, max_raw, n_big,
              big_diff.strength, big_diff.win);
  std::printf("parity: naturalness term, %zu images: max |dscore| = %.3g vs Python (scores moved by >= %.3g)\n",
              n_fused, max_fused, min_moved);
  CHECK(fgresq_batch_size(m) == 16);  // ViT towers: the Python SDK's 16
  fgresq_close(m);

  // The embedded default (conv-stats towers): the default batch is the Python SDK's (2 on a CPU), an explicit
  // one wins, the scores match Python's, and the batch changes them only by float noise.
  {
    std::map<std::string, double> py;
    long py_batch = -1;
    for (const auto& row : testing::read_tsv(dir + "/default_scores.tsv")) {
      if (row.at(0) == "batch_size") py_batch = std::stol(row.at(1));
      else py[row.at(0)] = std::stod(row.at(1));
    }
    CHECK(py_batch == 2);
    fgresq_model* md = open_or_die(dir + "/bundle_default");
    CHECK(fgresq_batch_size(md) == py_batch);
    fgresq_options o16;
    fgresq_options_init(&o16);
    o16.batch_size = 16;
    fgresq_model* m16 = nullptr;
    CHECK(fgresq_open((dir + "/bundle_default").c_str(), &o16, &m16) == FGRESQ_OK);
    CHECK(fgresq_batch_size(m16) == 16);
    std::vector<float> s2(n, -1.0f), s16(n, -1.0f);
    CHECK(fgresq_score(md, images.data(), n, s2.data()) == FGRESQ_OK);
    CHECK(fgresq_score(m16, images.data(), n, s16.data()) == FGRESQ_OK);
    double worst_py = 0.0, worst_batch = 0.0;
    for (size_t i = 0; i < n; ++i) {
      CHECK_MSG(py.count(cases[i].name) == 1, "%s: no Python score for the default model", cases[i].name.c_str());
      worst_py = std::max(worst_py, std::fabs(s2[i] - py[cases[i].name]));
      worst_batch = std::max(worst_batch, double(std::fabs(s2[i] - s16[i])));
    }
    CHECK_MSG(worst_py <= 1e-4, "default model: max |dscore| vs Python %.3g", worst_py);
    CHECK_MSG(worst_batch <= 1e-5, "default model: max |dscore| batch 2 vs 16 %.3g", worst_batch);
    std::printf("parity: embedded default, %zu images at batch %d: max |dscore| = %.3g vs Python, %.3g vs batch 16\n",
                n, fgresq_batch_size(md), worst_py, worst_batch);
    fgresq_close(m16);
    fgresq_close(md);
  }
  return testing::finish("test_parity");
}
