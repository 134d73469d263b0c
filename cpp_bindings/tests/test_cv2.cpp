// The official preprocess spec (docs/preprocess-spec.md: resize bilinear-cv2 256x256, center crop 224) against
// real OpenCV: the uint8 resizes (full image, before the crop) and the tensors, on images of many sizes;
// scores of the bundle that declares the spec; and the explicit legacy spec against the legacy bundle.
// Links the internal static library: the C API plus resize_rgb8_cv2 itself.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "preprocess.hpp"
#include "test_common.hpp"

namespace {

struct Agreement {
  size_t values = 0, identical = 0;
  int max_diff = 0;
  void add(int d) {
    ++values;
    identical += d == 0;
    max_diff = std::max(max_diff, d);
  }
  double percent() const { return values ? 100.0 * double(identical) / double(values) : 0.0; }
};

// Levels behind a normalised value: round((t * std + mean) * 255).
int level_of(float t, float mean, float stdv) { return int(std::lround((double(t) * stdv + mean) * 255.0)); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: test_cv2 TESTDATA_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  const std::string cdir = dir + "/cv2";
  if (!std::ifstream(cdir + "/cases.tsv")) {
    std::fprintf(stderr, "%s/cases.tsv missing: make_test_data.py needs OpenCV for these expectations "
                         "(pip install opencv-python-headless, part of the dev extra)\n", cdir.c_str());
    return 1;
  }
  const auto cases = load_cases(cdir);
  CHECK(cases.size() >= 30);
  std::map<std::string, const Case*> by_name;
  for (const auto& c : cases) by_name[c.name] = &c;

  // (1) uint8 resizes against cv2.resize(INTER_LINEAR), whole images before the crop.
  Agreement resize_all;
  size_t n_resizes = 0;
  for (const auto& row : testing::read_tsv(cdir + "/resize.tsv")) {
    const auto it = by_name.find(row.at(0));
    CHECK_MSG(it != by_name.end(), "resize.tsv names an unknown case %s", row.at(0).c_str());
    if (it == by_name.end()) continue;
    const Case& c = *it->second;
    const int w = std::stoi(row.at(1)), h = std::stoi(row.at(2));
    const auto want = testing::read_bytes(cdir + "/" + c.name + "_" + row.at(1) + "x" + row.at(2) + ".u8");
    CHECK(want.size() == size_t(w) * h * 3);
    std::vector<uint8_t> got(size_t(w) * h * 3);
    fgresq_image img = c.image();
    fgresq::detail::resize_rgb8_cv2(fgresq::detail::check_image(&img, c.name), w, h, got.data());
    Agreement a;
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) a.add(std::abs(int(got[i]) - int(want[i])));
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) resize_all.add(std::abs(int(got[i]) - int(want[i])));
    CHECK_MSG(a.max_diff <= 1, "%s -> %dx%d: differs from cv2 by %d levels", c.name.c_str(), w, h, a.max_diff);
    CHECK_MSG(a.percent() >= 99.0, "%s -> %dx%d: only %.3f%% identical to cv2", c.name.c_str(), w, h, a.percent());
    if (a.identical != a.values)
      std::printf("  %s -> %dx%d: max diff %d, %.4f%% identical\n", c.name.c_str(), w, h, a.max_diff, a.percent());
    // Row padding changes nothing.
    const size_t rowlen = size_t(c.width) * c.channels, stride = rowlen + 5;
    std::vector<uint8_t> padded(stride * c.height, 0xCD);
    for (int y = 0; y < c.height; ++y) std::memcpy(&padded[y * stride], &c.pixels[y * rowlen], rowlen);
    fgresq_image strided{padded.data(), c.width, c.height, int(stride), c.channels};
    std::vector<uint8_t> got2(got.size());
    fgresq::detail::resize_rgb8_cv2(fgresq::detail::check_image(&strided, c.name), w, h, got2.data());
    CHECK_MSG(got2 == got, "%s: stride changes the resize", c.name.c_str());
    ++n_resizes;
  }
  CHECK(resize_all.max_diff <= 1 && resize_all.percent() >= 99.0);

  // (2) The bundle that declares the official spec: tensors and scores.
  fgresq_model* m = open_or_die(dir + "/bundle_official");
  const int S = fgresq_input_size(m);
  CHECK(S == 224);
  const size_t plane = size_t(S) * S;
  static const float kMean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  static const float kStd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  Agreement tensor_levels;
  size_t bit_identical = 0, tensor_values = 0;
  std::vector<float> t(3 * plane);
  for (const auto& c : cases) {
    fgresq_image img = c.image();
    CHECK(fgresq_preprocess(m, &img, t.data(), t.size()) == FGRESQ_OK);
    const auto ref = testing::read_f32(cdir + "/" + c.name + ".f32");
    CHECK(ref.size() == t.size());
    Agreement a;
    for (size_t i = 0; i < t.size() && i < ref.size(); ++i) {
      const int ch = int(i / plane);
      const int d = std::abs(level_of(t[i], kMean[ch], kStd[ch]) - level_of(ref[i], kMean[ch], kStd[ch]));
      a.add(d);
      tensor_levels.add(d);
      bit_identical += t[i] == ref[i];
      ++tensor_values;
    }
    CHECK_MSG(a.max_diff <= 1, "%s: tensor differs from cv2 + crop by %d levels", c.name.c_str(), a.max_diff);
    CHECK_MSG(a.percent() >= 99.0, "%s: tensor only %.3f%% identical", c.name.c_str(), a.percent());
  }
  CHECK(tensor_levels.max_diff <= 1 && tensor_levels.percent() >= 99.0);

  const auto images = images_of(cases);
  std::vector<float> scores(cases.size());
  CHECK(fgresq_score(m, images.data(), images.size(), scores.data()) == FGRESQ_OK);
  double max_score = 0.0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const double d = std::fabs(double(scores[i]) - cases[i].expected_score);
    max_score = std::max(max_score, d);
    CHECK_MSG(d <= 1e-4, "%s: score %.8f, onnxruntime on the cv2 tensor %.8f", cases[i].name.c_str(), scores[i],
              cases[i].expected_score);
  }
  fgresq_close(m);

  // (3) The explicit legacy spec (bilinear-antialias 224x224, no crop) is the legacy form, bit for bit.
  fgresq_model* legacy = open_or_die(dir + "/bundle");
  fgresq_model* squash = open_or_die(dir + "/bundle_squash");
  size_t squash_same = 0;
  const auto parity_cases = load_cases(dir);
  for (const auto& c : parity_cases) {
    fgresq_image img = c.image();
    std::vector<float> a(3 * plane), b(3 * plane);
    CHECK(fgresq_preprocess(legacy, &img, a.data(), a.size()) == FGRESQ_OK);
    CHECK(fgresq_preprocess(squash, &img, b.data(), b.size()) == FGRESQ_OK);
    CHECK_MSG(a == b, "%s: the explicit bilinear-antialias spec differs from the legacy form", c.name.c_str());
    squash_same += a == b;
  }
  fgresq_close(squash);
  fgresq_close(legacy);

  std::printf("cv2: %zu resizes of %zu images (%zu uint8 values): max level diff %d, %.4f%% identical; "
              "official-spec tensors: %zu values, max level diff %d, %.4f%% identical (%zu/%zu bit-identical "
              "floats); max |dscore| = %.3g; squash spec = legacy on %zu/%zu images\n",
              n_resizes, cases.size(), resize_all.values, resize_all.max_diff, resize_all.percent(), tensor_values,
              tensor_levels.max_diff, tensor_levels.percent(), bit_identical, tensor_values, max_score, squash_same,
              parity_cases.size());
  return testing::finish("test_cv2");
}
