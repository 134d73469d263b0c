// Release parity: the C++ library on a bundle imported from a checkpoint in the authors' released FGResQ.pth
// format (`fgresq-sdk import-official`, defaults = the current release) against the independent reference of
// tests/official_format.py (OpenCV preprocessing + a forward written with transformers' modules), on PNG photos.
// Scores and the raw comparison (the release's predict_pair) within 1e-4; the symmetrised default as well.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "fgresq.hpp"
#include "test_common.hpp"

static constexpr double kTol = 1e-4;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: test_release TESTDATA_DIR\n");
    return 2;
  }
  const std::string dir = std::string(argv[1]) + "/release";
  if (std::ifstream why{dir + "/why.txt"}) {  // make_test_data.py could not build the data: say why
    std::stringstream ss;
    ss << why.rdbuf();
    std::fprintf(stderr, "test_release: %s", ss.str().c_str());
    return 1;
  }
  const auto cases = load_cases(dir);
  const auto images = images_of(cases);
  CHECK(cases.size() >= 6);
  fgresq_model* m = open_or_die(dir + "/bundle");
  const size_t n = cases.size(), f = size_t(fgresq_feature_size(m));

  // Scores: sigmoid(0.3·head) of the cv2-resized, center-cropped photos.
  std::vector<float> scores;
  const double max_score = check_scores(m, cases, scores, kTol, "reference");
  double lo = 1.0, hi = 0.0;
  for (const auto& c : cases) {
    lo = std::min(lo, c.expected_score);
    hi = std::max(hi, c.expected_score);
  }
  CHECK_MSG(hi - lo > 5e-3, "reference scores %.6f..%.6f are too alike to prove anything", lo, hi);

  // Control: the same graphs behind the legacy squash spec (resize 224 with antialiasing, no crop) are
  // measurably off the reference, so the 1e-4 above does tell the release preprocessing apart.
  double squash_off = 0.0;
  {
    fgresq_model* sq = open_or_die(dir + "/bundle_squash");
    std::vector<float> s2(n);
    CHECK(fgresq_score(sq, images.data(), n, s2.data()) == FGRESQ_OK);
    for (size_t i = 0; i < n; ++i) squash_off = std::max(squash_off, std::fabs(double(s2[i]) - cases[i].expected_score));
    CHECK_MSG(squash_off > 1e-3, "the squash spec is within %.3g of the reference: the test proves little", squash_off);
    fgresq_close(sq);
  }

  std::vector<float> feats(n * f), fscores(n);
  CHECK(fgresq_encode(m, images.data(), n, feats.data(), fscores.data()) == FGRESQ_OK);

  // Raw compare = predict_pair (softmax of the head on [q_a, q_b], first/second/similar order).
  double max_raw = 0.0, max_sym = 0.0, raw_vs_sym = 0.0;
  const auto raw_rows = testing::read_tsv(dir + "/compare_raw.tsv");
  const auto sym_rows = testing::read_tsv(dir + "/compare.tsv");
  CHECK(!raw_rows.empty() && raw_rows.size() == sym_rows.size());
  for (size_t k = 0; k < raw_rows.size() && k < sym_rows.size(); ++k) {
    const size_t a = size_t(std::stoi(raw_rows[k][0])), b = size_t(std::stoi(raw_rows[k][1]));
    double raw[3], sym[3], raw_f[3];
    CHECK(fgresq_compare_raw(m, &images[a], &images[b], raw) == FGRESQ_OK);
    CHECK(fgresq_compare(m, &images[a], &images[b], sym) == FGRESQ_OK);
    CHECK(fgresq_compare_features_raw(m, &feats[a * f], &feats[b * f], raw_f) == FGRESQ_OK);
    for (int r = 0; r < 3; ++r) {
      const double dr = std::fabs(raw[r] - std::stod(raw_rows[k][2 + size_t(r)]));
      const double ds = std::fabs(sym[r] - std::stod(sym_rows[k][2 + size_t(r)]));
      max_raw = std::max(max_raw, dr);
      max_sym = std::max(max_sym, ds);
      raw_vs_sym = std::max(raw_vs_sym, std::fabs(raw[r] - sym[r]));
      CHECK_MSG(dr <= kTol, "compare_raw(%zu, %zu)[%d] = %.8f, reference %s", a, b, r, raw[r], raw_rows[k][2 + size_t(r)].c_str());
      CHECK_MSG(ds <= kTol, "compare(%zu, %zu)[%d] = %.8f, reference %s", a, b, r, sym[r], sym_rows[k][2 + size_t(r)].c_str());
      CHECK(std::fabs(raw_f[r] - raw[r]) <= 1e-6);
    }
  }
  // The two answers differ on this head (else the raw check would not tell them apart).
  CHECK_MSG(raw_vs_sym > 1e-3, "raw and symmetrised compare agree within %.3g: the test proves nothing", raw_vs_sym);

  // The C++ wrapper's raw flag reaches the same function.
  try {
    fgresq::Model model(dir + "/bundle");
    const auto c = model.compare(images[0], images[1], true);
    double p[3];
    CHECK(fgresq_compare_raw(m, &images[0], &images[1], p) == FGRESQ_OK);
    CHECK(c.raw && std::fabs(c.p_first_better - p[0]) <= 1e-6 && std::fabs(c.p_similar - p[2]) <= 1e-6);
    const auto cf = model.compare_features(&feats[0], &feats[f], true);
    CHECK(cf.raw && std::fabs(cf.p_second_better - p[1]) <= 1e-6);
  } catch (const fgresq::Error& e) {
    std::fprintf(stderr, "fgresq::Error: %s\n", e.what());
    CHECK(false);
  }

  std::printf("release: %zu PNG photos vs the reference forward: max |dscore| = %.3g (scores %.4f..%.4f), "
              "max |dprob| raw = %.3g, symmetrised = %.3g (controls: raw vs symmetrised differ by up to %.3g, the "
              "squash spec's scores by %.3g)\n",
              n, max_score, lo, hi, max_raw, max_sym, raw_vs_sym, squash_off);
  fgresq_close(m);
  return testing::finish("test_release");
}
