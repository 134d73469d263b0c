// Unit tests of the internals that need no model: SHA-256, JSON, .npz/.npy reader, resampling (Pillow and
// OpenCV), center crop, ranking, the NIQE-style distance and the naturalness term.
//
//   test_units                 the unit tests
//   test_units TESTDATA_DIR    the NIQE parity instead (ctest `niqe_parity`): distances and ln d against
//                              fgresq_sdk/niqe.py on make_test_data.py's lumas and model inputs
#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>

#include "bundle.hpp"
#include "error.hpp"
#include "json.hpp"
#include "niqe.hpp"
#include "npz.hpp"
#include "preprocess.hpp"
#include "ranking.hpp"
#include "sha256.hpp"
#include "testing.hpp"

using namespace fgresq::detail;

template <class F>
static fgresq_status status_of(F&& f, std::string* msg = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (msg) *msg = e.what();
    return e.status();
  }
  return FGRESQ_OK;
}

static void test_sha256() {
  CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char* two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(sha256_hex(two, std::strlen(two)) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // One million 'a', fed in uneven pieces (exercises the block buffer).
  Sha256 h;
  std::string chunk(777, 'a');
  size_t left = 1000000;
  while (left) {
    size_t k = std::min(left, chunk.size());
    h.update(chunk.data(), k);
    left -= k;
  }
  CHECK(h.hexdigest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Lengths around the padding boundary.
  std::string s55(55, 'x'), s56(56, 'x'), s64(64, 'x');
  CHECK(sha256_hex(s55.data(), 55) == "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072");
  CHECK(sha256_hex(s56.data(), 56) != sha256_hex(s55.data(), 55));
  CHECK(sha256_hex(s64.data(), 64) == "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c");
  CHECK(status_of([] { sha256_file("/nonexistent/file"); }) == FGRESQ_NOT_FOUND);
}

static void test_json() {
  Json j = parse_json(R"({"a": [1, -2.5e3, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}})");
  CHECK(j.is_object());
  CHECK(j.get("a")->array.size() == 5);
  CHECK(j.get("a")->array[1].number == -2500.0);
  CHECK(j.get("a")->array[2].boolean);
  CHECK(j.get("s")->string == "x\"\\/\n\xC3\xA9\xF0\x9F\x98\x80");
  CHECK(j.get("o")->is_object() && j.get("o")->object.empty());
  CHECK(j.get("missing") == nullptr);
  CHECK(parse_json("0.48145466").number == 0.48145466);
  // Integers as Python's json reads them: no fraction, no exponent, not a bool.
  CHECK(parse_json("1").is_integer() && parse_json("-0").is_integer() && parse_json("12345678901").is_integer());
  CHECK(!parse_json("1.0").is_integer() && !parse_json("1e0").is_integer() && !parse_json("1E+2").is_integer());
  CHECK(!parse_json("true").is_integer() && !parse_json("\"1\"").is_integer() && parse_json("true").is_bool());
  // A repeated key keeps its first position and its last value (Python's dict).
  Json d = parse_json(R"({"a": 1, "b": 2, "a": 3})");
  CHECK(d.object.size() == 2 && d.object[0].first == "a" && d.object[1].first == "b");
  CHECK(d.get("a")->number == 3.0);
  for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "01", "1.", "\"abc", "tru", "{} x", "\"\\q\""}) {
    bool threw = false;
    try {
      parse_json(bad);
    } catch (const JsonError&) {
      threw = true;
    }
    CHECK_MSG(threw, "accepted invalid JSON: %s", bad);
  }
}

static std::vector<uint8_t> npy(const std::string& descr, const std::string& shape, const std::vector<float>& v,
                                int major = 1) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t pre = major == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64) h += ' ';
  h += '\n';
  std::vector<uint8_t> b = {0x93, 'N', 'U', 'M', 'P', 'Y', uint8_t(major), 0};
  if (major == 1) {
    b.push_back(uint8_t(h.size() & 0xFF));
    b.push_back(uint8_t(h.size() >> 8));
  } else {
    for (int k = 0; k < 4; ++k) b.push_back(uint8_t(h.size() >> (8 * k)));
  }
  b.insert(b.end(), h.begin(), h.end());
  const uint8_t* p = reinterpret_cast<const uint8_t*>(v.data());
  b.insert(b.end(), p, p + v.size() * 4);
  return b;
}

static void put16(std::vector<uint8_t>& b, uint16_t v) { b.push_back(uint8_t(v)); b.push_back(uint8_t(v >> 8)); }
static void put32(std::vector<uint8_t>& b, uint32_t v) { for (int k = 0; k < 4; ++k) b.push_back(uint8_t(v >> (8 * k))); }

// A stored zip with one member, as Python's zipfile writes it.
static std::vector<uint8_t> zip1(const std::string& name, const std::vector<uint8_t>& data, uint16_t method = 0) {
  std::vector<uint8_t> z;
  uint32_t crc = crc32(data.data(), data.size());
  put32(z, 0x04034b50); put16(z, 20); put16(z, 0); put16(z, method); put16(z, 0); put16(z, 0x21);
  put32(z, crc); put32(z, uint32_t(data.size())); put32(z, uint32_t(data.size()));
  put16(z, uint16_t(name.size())); put16(z, 0);
  z.insert(z.end(), name.begin(), name.end());
  z.insert(z.end(), data.begin(), data.end());
  uint32_t cd = uint32_t(z.size());
  put32(z, 0x02014b50); put16(z, 20); put16(z, 20); put16(z, 0); put16(z, method); put16(z, 0); put16(z, 0x21);
  put32(z, crc); put32(z, uint32_t(data.size())); put32(z, uint32_t(data.size()));
  put16(z, uint16_t(name.size())); put16(z, 0); put16(z, 0); put16(z, 0); put16(z, 0); put32(z, 0); put32(z, 0);
  z.insert(z.end(), name.begin(), name.end());
  uint32_t cd_size = uint32_t(z.size()) - cd;
  put32(z, 0x06054b50); put16(z, 0); put16(z, 0); put16(z, 1); put16(z, 1); put32(z, cd_size); put32(z, cd); put16(z, 0);
  return z;
}

static void test_npz() {
  std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  for (int major : {1, 2}) {
    auto b = npy("<f4", "(2, 3)", v, major);
    NpyArray a = parse_npy(b.data(), b.size(), "t");
    CHECK(a.shape == (std::vector<int64_t>{2, 3}));
    CHECK(a.data == v);
  }
  auto scalar_like = npy("<f4", "(3,)", {1, 2, 3});
  CHECK(parse_npy(scalar_like.data(), scalar_like.size(), "t").shape == std::vector<int64_t>{3});
  auto f64 = npy("<f8", "(3,)", {1, 2, 3, 4, 5, 6});
  std::string msg;
  CHECK(status_of([&] { parse_npy(f64.data(), f64.size(), "heads.npz (x.npy)"); }, &msg) == FGRESQ_UNSUPPORTED);
  CHECK(msg.find("'<f8'") != std::string::npos);
  auto big_endian = npy(">f4", "(6,)", v);
  CHECK(status_of([&] { parse_npy(big_endian.data(), big_endian.size(), "t"); }) == FGRESQ_UNSUPPORTED);
  auto short_data = npy("<f4", "(7,)", v);
  CHECK(status_of([&] { parse_npy(short_data.data(), short_data.size(), "t"); }) == FGRESQ_CORRUPTED);

  auto z = zip1("w.npy", npy("<f4", "(2, 3)", v));
  auto arrays = parse_npz(z, "heads.npz");
  CHECK(arrays.size() == 1 && arrays.count("w") == 1 && arrays["w"].data == v);
  auto deflated = zip1("w.npy", npy("<f4", "(2, 3)", v), 8);
  CHECK(status_of([&] { parse_npz(deflated, "heads.npz"); }, &msg) == FGRESQ_UNSUPPORTED);
  CHECK(msg.find("heads.npz: member 'w.npy' is compressed") == 0);
  auto flipped = z;
  flipped[40] ^= 1;  // inside the member's data
  CHECK(status_of([&] { parse_npz(flipped, "heads.npz"); }, &msg) == FGRESQ_CORRUPTED);
  std::vector<uint8_t> junk(100, 7);
  CHECK(status_of([&] { parse_npz(junk, "heads.npz"); }, &msg) == FGRESQ_CORRUPTED);
  CHECK(msg.find("not a zip archive") != std::string::npos);
  CHECK(status_of([] { read_npz("/nonexistent.npz"); }) == FGRESQ_NOT_FOUND);
}

static void test_resample() {
  // Two pixels 0 and 255 → one: Pillow's fixed-point average rounds to 128.
  uint8_t two[6] = {0, 0, 0, 255, 255, 255};
  uint8_t out[3];
  resize_rgb8(ImageView{two, 2, 1, 6, 3}, 1, 1, out);
  CHECK(out[0] == 128 && out[1] == 128 && out[2] == 128);
  // A constant image stays constant through any resize; gray and RGBA map to RGB.
  std::vector<uint8_t> gray(37 * 11, 77), rgba(13 * 29 * 4);
  for (size_t i = 0; i < rgba.size(); ++i) rgba[i] = (i % 4 == 3) ? uint8_t(i * 31) : uint8_t(10 + i % 4);
  std::vector<uint8_t> o(224 * 224 * 3);
  resize_rgb8(ImageView{gray.data(), 37, 11, 37, 1}, 224, 224, o.data());
  bool constant = true;
  for (uint8_t x : o) constant &= x == 77;
  CHECK(constant);
  resize_rgb8(ImageView{rgba.data(), 13, 29, 13 * 4, 4}, 224, 224, o.data());
  bool mapped = true;
  for (size_t i = 0; i < o.size(); ++i) mapped &= o[i] == uint8_t(10 + i % 3);
  CHECK(mapped);
  // Same size: a plain copy.
  std::vector<uint8_t> src(5 * 4 * 3);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i * 7);
  std::vector<uint8_t> same(src.size());
  resize_rgb8(ImageView{src.data(), 5, 4, 15, 3}, 5, 4, same.data());
  CHECK(same == src);
  // Normalisation in float32: (x/255 − mean)/std.
  const float mean[3] = {0.5f, 0.5f, 0.5f}, stdv[3] = {0.5f, 0.25f, 1.0f};
  uint8_t px[3] = {255, 0, 51};
  float t[3];
  normalize_chw(px, 1, mean, stdv, t);
  CHECK(t[0] == 1.0f && t[1] == -2.0f && t[2] == (51.0f / 255.0f - 0.5f) / 1.0f);
  fgresq_image bad{src.data(), 5, 0, 0, 3};
  std::string msg;
  CHECK(status_of([&] { check_image(&bad, "image 3"); }, &msg) == FGRESQ_INVALID_ARGUMENT);
  CHECK(msg == "image 3: image has zero width or height (5x0)");
}

static void test_resample_cv2() {
  // Two pixels 0 and 255 → one: weights 1024/1024, rounded by OpenCV's vector path to 128.
  uint8_t two[6] = {0, 0, 0, 255, 255, 255};
  uint8_t out[3];
  resize_rgb8_cv2(ImageView{two, 2, 1, 6, 3}, 1, 1, out);
  CHECK(out[0] == 128 && out[1] == 128 && out[2] == 128);
  // 5x4 → 3x7 (down in x, up in y), as cv2.resize(a, (3, 7), interpolation=cv2.INTER_LINEAR) gives it
  // (OpenCV 4.10 and 5.0). OpenCV's scalar rounding, (b0*S0 + b1*S1 + 2^21) >> 22, differs in 8 of these.
  const uint8_t a[60] = {139, 74,  229, 241, 169, 65,  6,   160, 149, 106, 38,  175, 188, 205, 175,
                         229, 98,  249, 10,  148, 95,  86,  147, 198, 66,  39,  106, 213, 171, 45,
                         167, 57,  69,  81,  55,  14,  153, 178, 215, 76,  52,  39,  250, 72,  215,
                         50,  161, 223, 112, 172, 161, 233, 38,  17,  89,  1,   221, 6,   242, 127};
  const uint8_t want[63] = {173, 106, 174, 6,   160, 149, 160, 149, 175, 167, 109, 183, 34,  155, 166, 162,
                            141, 136, 157, 114, 196, 80,  148, 194, 164, 128, 73,  147, 85,  124, 120, 163,
                            207, 178, 96,  111, 133, 64,  61,  159, 168, 201, 181, 72,  156, 95,  126, 148,
                            204, 88,  87,  90,  127, 158, 71,  165, 202, 233, 38,  17,  33,  161, 158};
  uint8_t got[63];
  resize_rgb8_cv2(ImageView{a, 5, 4, 15, 3}, 3, 7, got);
  int differ = 0;
  for (int i = 0; i < 63; ++i) differ += got[i] != want[i];
  CHECK_MSG(differ == 0, "%d of 63 values differ from cv2", differ);
  // Constant images stay constant (gray, RGBA with alpha ignored, 1-pixel-wide and -tall), same size copies.
  std::vector<uint8_t> gray(37 * 11, 77), o(256 * 256 * 3);
  for (auto [w, h] : {std::pair{37, 11}, std::pair{1, 11}, std::pair{37, 1}, std::pair{1, 1}}) {
    resize_rgb8_cv2(ImageView{gray.data(), w, h, size_t(w), 1}, 256, 256, o.data());
    bool constant = true;
    for (uint8_t x : o) constant &= x == 77;
    CHECK_MSG(constant, "%dx%d gray", w, h);
  }
  std::vector<uint8_t> rgba(13 * 29 * 4);
  for (size_t i = 0; i < rgba.size(); ++i) rgba[i] = (i % 4 == 3) ? uint8_t(i * 31) : uint8_t(10 + i % 4);
  resize_rgb8_cv2(ImageView{rgba.data(), 13, 29, 13 * 4, 4}, 256, 256, o.data());
  bool mapped = true;
  for (size_t i = 0; i < o.size(); ++i) mapped &= o[i] == uint8_t(10 + i % 3);
  CHECK(mapped);
  std::vector<uint8_t> src(5 * 4 * 3);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i * 7);
  std::vector<uint8_t> same(src.size());
  resize_rgb8_cv2(ImageView{src.data(), 5, 4, 15, 3}, 5, 4, same.data());
  CHECK(same == src);
  // torchvision CenterCrop: int(round((full - crop) / 2)), ties to even.
  CHECK(center_crop_offset(256, 224) == 16);
  CHECK(center_crop_offset(257, 224) == 16);  // 16.5
  CHECK(center_crop_offset(259, 224) == 18);  // 17.5
  CHECK(center_crop_offset(225, 224) == 0);   // 0.5
  CHECK(center_crop_offset(227, 224) == 2);   // 1.5
  CHECK(center_crop_offset(224, 224) == 0);
  // The spec end to end: a 3x3 crop of a 5x4 image resized to 5x4 (no-op) is the centre window.
  PreprocessSpec spec;
  spec.size = 3;
  spec.resize = ResizeMethod::BilinearCv2;
  spec.resize_w = 5;
  spec.resize_h = 4;
  spec.crop = true;
  for (float& m : spec.mean) m = 0.0f;
  for (float& sd : spec.stdv) sd = 1.0f;
  float t[27];
  preprocess(ImageView{src.data(), 5, 4, 15, 3}, spec, t);
  bool window = true;  // left = round(1) = 1, top = round(0.5) = 0
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 3; ++x) window &= t[c * 9 + y * 3 + x] == float(src[size_t(y * 5 + x + 1) * 3 + c]) / 255.0f;
  CHECK(window);
}

static void test_ranking() {
  CHECK(bradley_terry({0.5}, 1) == std::vector<double>{0.0});
  CHECK(fit_bradley_terry({}).theta.empty() && fit_bradley_terry({}).converged);
  {
    bool threw = false;
    try {
      fit_bradley_terry({1.0, 0.0}, 0.0);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    CHECK(threw);
  }
  // Two items, i beats j with preference 0.8: strengths are symmetric around zero and ordered.
  std::vector<double> pref = {0.5, 0.8, 0.2, 0.5};
  auto th = bradley_terry(pref, 2);
  CHECK(th[0] > 0 && std::fabs(th[0] + th[1]) < 1e-12);
  // Identical features: equal strengths, ties broken by score, then input order; one tier.
  CompareHead h;
  h.feature_size = 2;
  h.weight = {1, 0, 0, 1, /*row 2*/ 0, 1, 1, 0, /*row 3*/ 0, 0, 0, 0};
  h.bias[2] = 5.0;  // "similar" dominates
  std::vector<float> f = {0.1f, 0.2f, 0.1f, 0.2f, 0.1f, 0.2f};
  std::vector<float> scores = {0.3f, 0.9f, 0.3f};
  RankResult r = rank_features(h, f.data(), scores.data(), 3);
  CHECK((r.order == std::vector<int32_t>{1, 0, 2}));
  CHECK((r.tier == std::vector<int32_t>{1, 1, 1}));
  for (double w : r.win_rate) CHECK(std::fabs(w - 0.5) < 1e-12);
  CHECK(r.converged);
  // A single image: nothing to win against, so no win rate (NaN, as the Python SDK); strength 0, tier 1.
  RankResult one = rank_features(h, f.data(), scores.data(), 1);
  CHECK(one.order == std::vector<int32_t>{0} && one.tier == std::vector<int32_t>{1});
  CHECK(one.win_rate.size() == 1 && std::isnan(one.win_rate[0]));
  CHECK(one.strength == std::vector<double>{0.0} && one.converged);
  CHECK(rank_features(h, f.data(), scores.data(), 0).order.empty());
  double p[3], a[3], b[3];
  h.terms(f.data(), a, b);
  h.probs(a, b, p);
  CHECK(std::fabs(p[0] + p[1] + p[2] - 1.0) < 1e-15);
  // The verdict rule (fgresq_sdk.verdict) and the order symmetrisation.
  const double first[3] = {0.6, 0.3, 0.1}, coin[3] = {0.45, 0.44, 0.11}, sim[3] = {0.3, 0.3, 0.4};
  CHECK(verdict(first) == 0 && verdict(coin) == 2 && verdict(sim) == 2);
  const double second[3] = {0.2, 0.5, 0.3};
  CHECK(verdict(second) == 1);
  double s[3];
  symmetrise(first, second, s);  // first = ½(0.6 + 0.5), second = ½(0.3 + 0.2), similar = ½(0.1 + 0.3)
  CHECK(std::fabs(s[0] - 0.55) < 1e-15 && std::fabs(s[1] - 0.25) < 1e-15 && std::fabs(s[2] - 0.2) < 1e-15);
}

// Max |∂ℓ/∂θ| at θ + s, the prior's common shift s put back: the fit returns θ centred (mean zero), but it
// maximised ℓ before centring, so the optimality condition holds at θ + s for one s. s is recovered from the
// shift-invariant part: σ(θ_i + s) = (wins_i + prior − Σ_j σ(θ_i − θ_j)) / (2·prior) for every i.
static double optimality_gap(const std::vector<double>& theta, const std::vector<double>& wins, double* shift_spread) {
  const size_t n = theta.size();
  const double prior = kPriorGames;
  std::vector<double> expected(n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      if (j != i) expected[i] += 1.0 / (1.0 + std::exp(theta[j] - theta[i]));
  double lo = 1e300, hi = -1e300, mean = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double rate = (wins[i] + prior - expected[i]) / (2.0 * prior);
    const double s = std::log(rate) - std::log1p(-rate) - theta[i];
    lo = std::min(lo, s);
    hi = std::max(hi, s);
    mean += s / double(n);
  }
  *shift_spread = hi - lo;
  double worst = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double g = wins[i] + prior - expected[i] - 2.0 * prior / (1.0 + std::exp(-(theta[i] + mean)));
    worst = std::max(worst, std::fabs(g));
  }
  return worst;
}

// The Newton fit converges, at a size where the old MM loop (~N·log(1/tol) iterations) never met its tolerance.
static void test_ranking_large() {
  const size_t n = 2000;
  const int fs = 8;
  std::mt19937 rng(12345);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  CompareHead h;
  h.feature_size = fs;
  h.weight.resize(3 * 2 * fs);
  for (double& w : h.weight) w = 1.5 * u(rng);
  for (double& b : h.bias) b = 0.5 * u(rng);
  std::vector<float> feats(n * fs), scores(n);
  for (float& x : feats) x = float(u(rng));
  for (float& x : scores) x = float(0.5 + 0.5 * u(rng));

  const PairTerms pairs(h, feats.data(), n);
  const std::vector<double> wins = soft_wins(pairs);
  // Soft wins from the factors = from the exact softmax per pair (spot check of a block).
  for (size_t i = 0; i < 40; ++i) {
    double w = 0.0;
    for (size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      double ij[3], ji[3];
      pairs.probs(i, j, ij);
      pairs.probs(j, i, ji);
      w += 0.5 * ((ij[0] + 0.5 * ij[2]) + 1.0 - (ji[0] + 0.5 * ji[2]));
    }
    CHECK_MSG(std::fabs(w - wins[i]) < 1e-9, "soft wins of %zu: %.15g vs %.15g", i, wins[i], w);
  }
  double total = 0.0;
  for (double w : wins) total += w;
  CHECK(std::fabs(total - double(n) * double(n - 1) / 2.0) < 1e-6);  // every pair plays one game

  const BTFit fit = fit_bradley_terry(wins);
  CHECK_MSG(fit.converged, "the fit did not converge in %d Newton steps", fit.iterations);
  CHECK(fit.iterations >= 1 && fit.iterations < kMaxNewton);
  double mean = 0.0, spread_theta = 0.0;
  for (double t : fit.theta) {
    mean += t;
    spread_theta = std::max(spread_theta, std::fabs(t));
  }
  CHECK(std::fabs(mean) < 1e-9 * double(n));
  CHECK(spread_theta > 0.1);  // a non-trivial problem
  double shift_spread = 0.0;
  const double gap = optimality_gap(fit.theta, wins, &shift_spread);
  CHECK_MSG(gap < 1e-6 && shift_spread < 1e-6, "not at the optimum: max |grad| %.3g, shift spread %.3g", gap,
            shift_spread);

  const RankResult r = rank_features(h, feats.data(), scores.data(), n);
  CHECK(r.converged && r.strength == fit.theta);
  for (size_t k = 1; k < n; ++k) CHECK(r.strength[size_t(r.order[k - 1])] >= r.strength[size_t(r.order[k])]);
  std::printf("ranking: n = %zu, %d Newton steps, max |grad| at the optimum %.3g, strengths in [%.3f, %.3f]\n",
              n, fit.iterations, gap, *std::min_element(fit.theta.begin(), fit.theta.end()),
              *std::max_element(fit.theta.begin(), fit.theta.end()));

  // One item beats all others with certainty: the prior keeps its strength finite and the fit converges.
  const size_t m = 50;
  std::vector<double> pref(m * m, 0.5);
  for (size_t j = 1; j < m; ++j) {
    pref[j] = 1.0;
    pref[j * m] = 0.0;
  }
  std::vector<double> w(m, 0.0);
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < m; ++j)
      if (j != i) w[i] += pref[i * m + j];
  const BTFit dom = fit_bradley_terry(w);
  CHECK(dom.converged && std::isfinite(dom.theta[0]) && dom.theta[0] > dom.theta[1] + 3.0);
  CHECK(optimality_gap(dom.theta, w, &shift_spread) < 1e-9 && shift_spread < 1e-9);
  CHECK(bradley_terry(pref, m) == dom.theta);
}

// ---------------------------------------------------------------- NIQE (fgresq_sdk/niqe.py)

// A pristine JSON file with `n` features: mean zeros, covariance diag * identity (+ `asym` at [0][1] only).
static std::string pristine_text(int n, double diag, double asym = 0.0, const std::string& extra = "") {
  std::string mean, cov;
  for (int i = 0; i < n; ++i) {
    mean += std::string(i ? ", " : "") + "0.0";
    std::string row;
    for (int j = 0; j < n; ++j) {
      const double v = i == j ? diag : (i == 0 && j == 1 ? asym : 0.0);
      row += std::string(j ? ", " : "") + std::to_string(v);
    }
    cov += std::string(i ? ", " : "") + "[" + row + "]";
  }
  return "{\"format\": \"fgresq-niqe-pristine/1\", " + extra + "\"mean\": [" + mean + "], \"cov\": [" + cov + "]}";
}

static std::string replaced_first(std::string s, const std::string& from, const std::string& to) {
  const size_t k = s.find(from);
  CHECK(k != std::string::npos);
  if (k != std::string::npos) s.replace(k, from.size(), to);
  return s;
}

static niqe::Pristine pristine_of(const std::string& text, std::string* msg = nullptr, fgresq_status* st = nullptr) {
  niqe::Pristine p;
  const fgresq_status s = status_of([&] {
    p = niqe::parse_pristine(reinterpret_cast<const uint8_t*>(text.data()), text.size(), "dir/niqe-pristine.json");
  }, msg);
  if (st) *st = s;
  return p;
}

// A smooth, textured test luma (no flat patch): a sum of sines plus a fixed pseudo-random grain.
static niqe::Plane texture(int rows, int cols, unsigned seed = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> grain(-8.0, 8.0);
  niqe::Plane p(rows, cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      p.at(r, c) = 128.0 + 60.0 * std::sin(0.11 * r) * std::cos(0.07 * c) + 20.0 * std::sin(0.5 * (r + c)) + grain(rng);
  return p;
}

static void test_niqe_sums_and_blur() {
  // numpy's pairwise summation: exact on integers, and as accurate as a long double sum on noise.
  std::vector<double> ints(4096);
  std::iota(ints.begin(), ints.end(), 1.0);
  CHECK(niqe::pairwise_sum(ints.data(), ints.size()) == 4096.0 * 4097.0 / 2.0);
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (size_t n : {size_t(1), size_t(7), size_t(8), size_t(127), size_t(129), size_t(3969), size_t(4096)}) {
    std::vector<double> x(n);
    long double ref = 0;
    for (double& v : x) {
      v = normal(rng);
      ref += v;
    }
    CHECK_MSG(std::fabs(niqe::pairwise_sum(x.data(), n) - double(ref)) < 1e-12, "pairwise_sum n = %zu", n);
  }
  CHECK(niqe::pairwise_sum(nullptr, 0) == 0.0);
  // The blur keeps a constant (its taps sum to 1) and spreads an impulse into the separable 7x7 kernel.
  niqe::Plane flat(9, 11);
  std::fill(flat.v.begin(), flat.v.end(), 200.0);
  for (double v : niqe::gaussian_blur(flat).v) CHECK(std::fabs(v - 200.0) < 1e-12);
  niqe::Plane impulse(15, 15);
  impulse.at(7, 7) = 1.0;
  const niqe::Plane k = niqe::gaussian_blur(impulse);
  double total = 0.0;
  for (double v : k.v) total += v;
  CHECK(std::fabs(total - 1.0) < 1e-15);
  CHECK(k.at(7, 3) == 0.0 && k.at(3, 7) == 0.0 && k.at(7, 4) > 0.0);  // radius 3
  CHECK(std::fabs(k.at(6, 8) - k.at(8, 6)) < 1e-18 && std::fabs(k.at(6, 7) - k.at(7, 6)) < 1e-18);
  // k(7, 7) = centre tap², k(7, 8) = centre · next tap: their ratio is the Gaussian's at one pixel, sigma 7/6.
  CHECK(std::fabs(k.at(7, 8) / k.at(7, 7) - std::exp(-0.5 / ((7.0 / 6.0) * (7.0 / 6.0)))) < 1e-12);
  // Edge-replicated borders: a step at the first column is still a step after blurring a 1-pixel-tall image.
  niqe::Plane row(1, 8);
  for (int c = 0; c < 8; ++c) row.at(0, c) = c < 4 ? 0.0 : 10.0;
  const niqe::Plane b = niqe::gaussian_blur(row);
  CHECK(b.at(0, 0) == 0.0 && std::fabs(b.at(0, 7) - 10.0) < 1e-12 && std::fabs(b.at(0, 3) + b.at(0, 4) - 10.0) < 1e-12);
  // MSCN of a constant is zero (up to the taps' rounding).
  for (double v : niqe::mscn(flat).v) CHECK(std::fabs(v) < 1e-9);
}

static void test_niqe_fits() {
  // The moment ratio of a Gaussian is pi/2 (shape 2), of a Laplacian 2 (shape 1).
  CHECK(std::fabs(niqe::nearest_shape(3.14159265358979323846 / 2.0) - 2.0) < 1e-9);
  CHECK(std::fabs(niqe::nearest_shape(2.0) - 1.0) < 1e-9);
  // Outside the grid: below its smallest ratio the largest shape; inf / NaN / a huge ratio land on idx - 1 of
  // numpy's clipped index, i.e. 0.201 (not 0.2), exactly as fgresq_sdk/niqe.py's expression.
  CHECK(std::fabs(niqe::nearest_shape(0.0) - 9.999) < 1e-9);
  CHECK(std::fabs(niqe::nearest_shape(std::numeric_limits<double>::infinity()) - 0.201) < 1e-12);
  CHECK(std::fabs(niqe::nearest_shape(std::numeric_limits<double>::quiet_NaN()) - 0.201) < 1e-12);
  CHECK(std::fabs(niqe::nearest_shape(1e300) - 0.201) < 1e-12);
  // Fits on samples: Gaussian → shape ~2, Laplacian → ~1; the AGGD of a symmetric law has mean ~0, lvar ~ rvar.
  std::mt19937 rng(11);
  std::normal_distribution<double> normal(0.0, 3.0);
  std::exponential_distribution<double> expo(1.0);
  const size_t n = 200000;
  std::vector<double> g(n), l(n);
  for (size_t i = 0; i < n; ++i) {
    g[i] = normal(rng);
    l[i] = (i % 2 ? 1.0 : -1.0) * expo(rng);
  }
  const niqe::Ggd gg = niqe::ggd_fit(g.data(), n);
  CHECK_MSG(std::fabs(gg.shape - 2.0) < 0.05 && std::fabs(gg.var - 9.0) < 0.1, "ggd(normal) = %g, %g", gg.shape, gg.var);
  CHECK_MSG(std::fabs(niqe::ggd_fit(l.data(), n).shape - 1.0) < 0.05, "ggd(laplace)");
  const niqe::Aggd ag = niqe::aggd_fit(g.data(), n);
  CHECK_MSG(std::fabs(ag.shape - 2.0) < 0.05 && std::fabs(ag.mean) < 0.05 && std::fabs(ag.lvar / ag.rvar - 1.0) < 0.03,
            "aggd(normal) = %g, %g, %g, %g", ag.shape, ag.mean, ag.lvar, ag.rvar);
  // A one-sided sample: the AGGD mean follows the heavier side.
  std::vector<double> skew(g);
  for (double& v : skew) v = v > 0 ? 2.0 * v : v;
  CHECK(niqe::aggd_fit(skew.data(), n).mean > 0.5);
  // All zeros: no moments, ratios inf, variances 0 (no division by a zero count).
  std::vector<double> zeros(100, 0.0);
  const niqe::Ggd gz = niqe::ggd_fit(zeros.data(), zeros.size());
  const niqe::Aggd az = niqe::aggd_fit(zeros.data(), zeros.size());
  CHECK(gz.var == 0.0 && std::fabs(gz.shape - 0.201) < 1e-12);
  CHECK(az.lvar == 0.0 && az.rvar == 0.0 && az.mean == 0.0 && std::fabs(az.shape - 0.201) < 1e-12);
}

static void test_niqe_distance() {
  // Patch grid: whole 64-px patches from the top-left; a flat image has only NaN rows; too small is refused.
  size_t rows = 0;
  const std::vector<double> f = niqe::features(texture(130, 200), niqe::kPatch, &rows);
  CHECK(rows == 6 && f.size() == 6 * size_t(niqe::kFeatures));
  CHECK(std::all_of(f.begin(), f.end(), [](double v) { return std::isfinite(v); }));
  niqe::Plane flat(128, 128);
  std::fill(flat.v.begin(), flat.v.end(), 77.0);
  const std::vector<double> ff = niqe::features(flat, niqe::kPatch, &rows);
  CHECK(rows == 4 && std::all_of(ff.begin(), ff.end(), [](double v) { return std::isnan(v); }));
  std::string msg;
  CHECK(status_of([] { size_t r; niqe::features(niqe::Plane(63, 100), niqe::kPatch, &r); }, &msg) == FGRESQ_UNSUPPORTED);
  CHECK_MSG(msg == "NIQE needs a luma of at least 64x64 pixels, got shape (63, 100)", "%s", msg.c_str());

  // Distances against a pristine N(0, 4 I): an all-flat image is exactly FLAT_DISTANCE; a single kept patch has
  // no covariance of its own, so the pool is 2 I and d = |f| / sqrt(2).
  const niqe::Pristine p = pristine_of(pristine_text(niqe::kFeatures, 4.0));
  CHECK(niqe::distance(p, flat) == niqe::kFlatDistance);
  const niqe::Plane one = texture(64, 64, 5);
  const std::vector<double> f1 = niqe::features(one, niqe::kPatch, &rows);
  CHECK(rows == 1);
  double norm2 = 0.0;
  for (double v : f1) norm2 += v * v;
  const double d1 = niqe::distance(p, one);
  CHECK_MSG(std::fabs(d1 - std::sqrt(norm2 / 2.0)) < 1e-12 * d1, "single patch: %.17g vs %.17g", d1,
            std::sqrt(norm2 / 2.0));
  // Half of the patches flat: they are left out, and the rest still gives a finite distance.
  niqe::Plane part = texture(128, 256, 7);
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c < 128; ++c) part.at(r, c) = 90.0;
  const double dp = niqe::distance(p, part), dt = niqe::distance(p, texture(128, 128, 7));
  CHECK(std::isfinite(dp) && dp > 0.0 && dp < niqe::kFlatDistance && std::isfinite(dt));
  // A pristine far from everything: the distance is capped at FLAT_DISTANCE.
  niqe::Pristine far = p;
  std::fill(far.mean.begin(), far.mean.end(), 1e9);
  CHECK(niqe::distance(far, texture(128, 128)) == niqe::kFlatDistance);
}

static void test_niqe_pristine_rules() {
  // fgresq_sdk.niqe.Pristine.from_dict: the rules and the wording, "<where>: ..." on one line.
  const std::string w = "dir/niqe-pristine.json: ";
  struct Bad {
    std::string text, msg;
  };
  std::string sym = pristine_text(niqe::kFeatures, 1.0);
  const std::vector<Bad> bad = {
      {"{\"format\": ", "not valid JSON ("},
      {"[1, 2]", "not a fgresq-niqe-pristine/1 file"},
      {"{\"format\": \"fgresq-niqe-pristine/2\", \"mean\": [], \"cov\": []}", "not a fgresq-niqe-pristine/1 file"},
      {"{\"format\": \"fgresq-niqe-pristine/1\", \"cov\": []}", "mean/cov are not numbers"},
      {"{\"format\": \"fgresq-niqe-pristine/1\", \"mean\": [\"a\"], \"cov\": []}", "mean/cov are not numbers"},
      {"{\"format\": \"fgresq-niqe-pristine/1\", \"mean\": [], \"cov\": [[1, 2], [3]]}", "mean/cov are not numbers"},
      {"{\"format\": \"fgresq-niqe-pristine/1\", \"mean\": {}, \"cov\": []}", "mean/cov are not numbers"},
      {pristine_text(35, 1.0), "needs a 36-feature mean and covariance with 64-px patches"},
      {pristine_text(niqe::kFeatures, 1.0, 0.0, "\"patch\": 32, "), "needs a 36-feature mean and covariance with 64-px patches"},
      {pristine_text(niqe::kFeatures, 1.0, 0.0, "\"patch\": true, "), "needs a 36-feature mean and covariance"},
      {"{\"format\": \"fgresq-niqe-pristine/1\", \"mean\": 1.0, \"cov\": []}", "needs a 36-feature mean"},
      {pristine_text(niqe::kFeatures, 1.0, 0.5), "covariance is not a finite symmetric matrix"},
      {replaced_first(sym, "0.0", "null"), "mean/cov are not finite"},  // numpy: None -> nan
      {pristine_text(niqe::kFeatures, 0.0), "covariance is not positive definite"},
      {pristine_text(niqe::kFeatures, -1.0), "covariance is not positive definite"},
  };
  for (const Bad& b : bad) {
    std::string msg;
    fgresq_status st;
    pristine_of(b.text, &msg, &st);
    CHECK_MSG(st == FGRESQ_CORRUPTED && msg.rfind(w + b.msg, 0) == 0 && msg.find('\n') == std::string::npos,
              "%s: got '%s'", b.msg.c_str(), msg.c_str());
  }
  // Accepted: patch 64 or 64.0 (Python compares with ==), extra keys, a difference np.allclose tolerates.
  for (const std::string& ok : {pristine_text(niqe::kFeatures, 1.0, 0.0, "\"patch\": 64.0, \"n_images\": 3, "),
                                pristine_text(niqe::kFeatures, 1.0, 1e-9)}) {
    fgresq_status st;
    std::string msg;
    const niqe::Pristine p = pristine_of(ok, &msg, &st);
    CHECK_MSG(st == FGRESQ_OK && p.mean.size() == 36 && p.cov.size() == 36 * 36 && p.patch == 64, "%s", msg.c_str());
  }
}

static void test_naturalness_term() {
  niqe::Term t;  // weight 0, scale 1, offset 0: the encoder's score back
  for (float s : {0.25f, 0.5f, 0.9f}) CHECK(std::fabs(t.fuse(s, 3.0) - double(s)) < 1e-12);
  CHECK(std::fabs(t.fuse(0.0f, 0.0) - 1e-7) < 1e-18);  // clamped where float32 cannot tell it from 0
  CHECK(std::fabs(t.fuse(1.0f, 0.0) - (1.0 - 1e-7)) < 1e-15);
  CHECK(std::isnan(t.fuse(std::numeric_limits<float>::quiet_NaN(), 0.0)));
  t.weight = 1.3;
  t.scale = 0.5;
  t.offset = 3.0;
  const double s = double(0.2f), z = 0.5 * (std::log(s / (1.0 - s)) - 1.3 * 2.0) + 3.0;
  CHECK(std::fabs(t.fuse(0.2f, 2.0) - 1.0 / (1.0 + std::exp(-z))) < 1e-14);
  CHECK(t.fuse(0.2f, 1.0) > t.fuse(0.2f, 2.0));  // farther from clean photos: lower
  // luma_of_view undoes the normalisation: BT.601 of rgb·255.
  const double mean[3] = {0.5, 0.25, 0.125}, stdv[3] = {0.5, 0.25, 2.0};
  std::vector<float> view(3 * 64 * 64);
  const double rgb[3] = {1.0, 0.5, 0.25};
  for (size_t c = 0; c < 3; ++c)
    for (size_t i = 0; i < 64 * 64; ++i) view[c * 64 * 64 + i] = float((rgb[c] - mean[c]) / stdv[c]);
  const niqe::Plane luma = niqe::luma_of_view(view.data(), 64, mean, stdv);
  CHECK(luma.rows == 64 && luma.cols == 64);
  CHECK(std::fabs(luma.at(10, 20) - 255.0 * (0.299 * 1.0 + 0.587 * 0.5 + 0.114 * 0.25)) < 1e-9);
  // A uniform view is all flat: ln d = ln 1e4.
  t.pristine = pristine_of(pristine_text(niqe::kFeatures, 1.0));
  std::copy(mean, mean + 3, t.mean);
  std::copy(stdv, stdv + 3, t.stdv);
  CHECK(t.log_distance(view.data(), 64) == std::log(niqe::kFlatDistance));
}

// ---------------------------------------------------------------- NIQE parity with the Python SDK

static double rel_diff(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-300); }

static int niqe_parity(const std::string& dir) {
  // The pristine model as the fused bundle ships it, parsed by the C++ reader.
  const auto bytes = testing::read_bytes(dir + "/bundle_niqe/niqe-pristine.json");
  const niqe::Pristine p = niqe::parse_pristine(bytes.data(), bytes.size(), "niqe-pristine.json");
  double worst = 0.0;
  for (const auto& row : testing::read_tsv(dir + "/niqe/distances.tsv")) {
    niqe::Plane luma(std::stoi(row.at(1)), std::stoi(row.at(2)));
    const auto raw = testing::read_bytes(dir + "/niqe/lumas/" + row[0] + ".f64");
    CHECK(raw.size() == luma.v.size() * 8);
    std::memcpy(luma.v.data(), raw.data(), std::min(raw.size(), luma.v.size() * 8));
    const double want = std::stod(row.at(3)), got = niqe::distance(p, luma);
    worst = std::max(worst, rel_diff(got, want));
    CHECK_MSG(rel_diff(got, want) <= 1e-7, "%s: distance %.17g, Python %.17g", row[0].c_str(), got, want);
    if (row[0] == "flat") CHECK_MSG(got == 1e4 && want == 1e4, "flat: %.17g, Python %.17g", got, want);
  }
  // ln d of the model inputs, through the bundle's term (its mean/std): Python's tensors and this library's own.
  LoadedBundle b = load_bundle(dir + "/bundle_niqe", true);
  CHECK(b.info.naturalness.has_value());
  if (!b.info.naturalness) return testing::finish("niqe_parity");
  const niqe::Term& term = *b.info.naturalness;
  CHECK(term.weight == 1.3 && term.scale == 0.5 && term.offset == 3.0 && term.stdv[0] == 0.26862954);
  const int S = b.info.pre.size;
  double worst_logd = 0.0, worst_own = 0.0;
  size_t n = 0;
  std::vector<float> own(3 * size_t(S) * S);
  std::map<std::string, std::vector<std::string>> images;
  for (const auto& row : testing::read_tsv(dir + "/niqe/cases.tsv")) images[row.at(0)] = row;
  for (const auto& row : testing::read_tsv(dir + "/niqe/logd.tsv")) {
    const std::string& name = row.at(0);
    const double want = std::stod(row.at(1));
    const auto x = testing::read_f32(dir + "/niqe/pre/" + name + ".f32");
    CHECK(x.size() == own.size());
    const double got = term.log_distance(x.data(), S);
    worst_logd = std::max(worst_logd, rel_diff(got, want));
    CHECK_MSG(rel_diff(got, want) <= 1e-7, "%s: ln d %.17g, Python %.17g", name.c_str(), got, want);
    if (name.rfind("flat", 0) == 0) CHECK_MSG(got == std::log(1e4) && want == std::log(1e4), "%s: ln d %.17g", name.c_str(), got);
    const auto& c = images.at(name);
    const auto px = testing::read_bytes(dir + "/niqe/images/" + name + ".raw");
    const int w = std::stoi(c.at(1)), h = std::stoi(c.at(2)), ch = std::stoi(c.at(3));
    preprocess(ImageView{px.data(), w, h, size_t(w) * size_t(ch), ch}, b.info.pre, own.data());
    const double from_own = term.log_distance(own.data(), S);
    worst_own = std::max(worst_own, rel_diff(from_own, want));
    CHECK_MSG(rel_diff(from_own, want) <= 1e-7, "%s: ln d of this library's tensor %.17g, Python %.17g", name.c_str(),
              from_own, want);
    ++n;
  }
  CHECK(n >= 10);
  std::printf("niqe parity: max relative |d distance| = %.3g; %zu model inputs: max relative |d ln d| = %.3g "
              "(Python's tensors), %.3g (this library's)\n", worst, n, worst_logd, worst_own);
  return testing::finish("niqe_parity");
}

int main(int argc, char** argv) {
  if (argc >= 2) return niqe_parity(argv[1]);
  test_sha256();
  test_json();
  test_npz();
  test_resample();
  test_resample_cv2();
  test_ranking();
  test_ranking_large();
  test_niqe_sums_and_blur();
  test_niqe_fits();
  test_niqe_distance();
  test_niqe_pristine_rules();
  test_naturalness_term();
  return testing::finish("test_units");
}
