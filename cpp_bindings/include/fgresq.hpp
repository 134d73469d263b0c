// fgresq.hpp: a thin C++17 RAII wrapper over the C API in fgresq.h. Header-only; link libfgresq.
// Errors become fgresq::Error exceptions on the caller's side (the library itself never throws across
// its C ABI). A Model may be shared between threads (const methods call the thread-safe C functions).
#pragma once

#include <array>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fgresq.h"

namespace fgresq {

class Error : public std::runtime_error {
 public:
  Error(fgresq_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  fgresq_status status() const noexcept { return status_; }

 private:
  fgresq_status status_;
};

inline void check(fgresq_status status) {
  if (status != FGRESQ_OK) {
    const char* msg = fgresq_last_error();
    throw Error(status, std::string(fgresq_status_string(status)) + ": " + (msg && *msg ? msg : "(no message)"));
  }
}

// A view of caller-owned pixels (nothing is copied).
inline fgresq_image image_view(const uint8_t* data, int width, int height, int channels, int stride_bytes = 0) {
  return fgresq_image{data, width, height, stride_bytes, channels};
}

struct Options {
  fgresq_backend backend = FGRESQ_BACKEND_ONNXRUNTIME;
  int threads = 0;
  int batch_size = 0;
  bool verify = true;
};

struct Comparison {
  double p_first_better = 0, p_second_better = 0, p_similar = 0;
  bool raw = false;  // true: the single forward order (a, b), as the authors' predict_pair
};

struct RankEntry {
  int index = 0;  // into the images passed to rank()
  float score = 0;
  double win_rate = 0;  // NaN when only one image was ranked
  double strength = 0;
  int tier = 0;
};

class Model {
 public:
  explicit Model(const std::string& bundle_dir, const Options& options = {}) {
    fgresq_options o;
    fgresq_options_init(&o);
    o.backend = options.backend;
    o.threads = options.threads;
    o.batch_size = options.batch_size;
    o.verify = options.verify ? 1 : 0;
    fgresq_model* m = nullptr;
    check(fgresq_open(bundle_dir.c_str(), &o, &m));
    handle_.reset(m);
  }

  fgresq_model* get() const noexcept { return handle_.get(); }
  std::string name() const { return fgresq_model_name(handle_.get()); }
  int input_size() const { return fgresq_input_size(handle_.get()); }
  int feature_size() const { return fgresq_feature_size(handle_.get()); }
  int batch_size() const { return fgresq_batch_size(handle_.get()); }

  std::vector<float> score(const std::vector<fgresq_image>& images) const {
    std::vector<float> out(images.size());
    check(fgresq_score(handle_.get(), images.data(), images.size(), out.data()));
    return out;
  }
  float score(const fgresq_image& image) const { return score(std::vector<fgresq_image>{image})[0]; }

  // Order-symmetrised by default (compare(b, a) mirrors compare(a, b)); raw: the head on (a, b) only, as the
  // authors' predict_pair (Python: Scorer.compare(a, b, raw=True)).
  Comparison compare(const fgresq_image& a, const fgresq_image& b, bool raw = false) const {
    double p[3];
    check(raw ? fgresq_compare_raw(handle_.get(), &a, &b, p) : fgresq_compare(handle_.get(), &a, &b, p));
    return Comparison{p[0], p[1], p[2], raw};
  }

  // compare() on encoded images (feature_size() floats each, from encode()).
  Comparison compare_features(const float* features_a, const float* features_b, bool raw = false) const {
    double p[3];
    check(raw ? fgresq_compare_features_raw(handle_.get(), features_a, features_b, p)
              : fgresq_compare_features(handle_.get(), features_a, features_b, p));
    return Comparison{p[0], p[1], p[2], raw};
  }

  // Features (n × feature_size()) and scores, for rank_features()/compare_features() later.
  void encode(const std::vector<fgresq_image>& images, std::vector<float>& features, std::vector<float>& scores) const {
    features.resize(images.size() * size_t(feature_size()));
    scores.resize(images.size());
    check(fgresq_encode(handle_.get(), images.data(), images.size(), features.data(), scores.data()));
  }

  // Best first.
  std::vector<RankEntry> rank_features(const std::vector<float>& features, const std::vector<float>& scores) const {
    const size_t n = scores.size();
    if (features.size() != n * size_t(feature_size()))
      throw Error(FGRESQ_INVALID_ARGUMENT, "invalid argument: features and scores sizes disagree");
    std::vector<int32_t> order(n), tier(n);
    std::vector<double> win(n), strength(n);
    check(fgresq_rank_features(handle_.get(), features.data(), scores.data(), n, order.data(), win.data(),
                               tier.data(), strength.data()));
    std::vector<RankEntry> out;
    out.reserve(n);
    for (int32_t i : order) out.push_back(RankEntry{i, scores[size_t(i)], win[size_t(i)], strength[size_t(i)], tier[size_t(i)]});
    return out;
  }

  std::vector<RankEntry> rank(const std::vector<fgresq_image>& images) const {
    std::vector<float> features, scores;
    encode(images, features, scores);
    return rank_features(features, scores);
  }

  // The normalised model input, float32 [3, S, S].
  std::vector<float> preprocess(const fgresq_image& image) const {
    const size_t s = size_t(input_size());
    std::vector<float> out(3 * s * s);
    check(fgresq_preprocess(handle_.get(), &image, out.data(), out.size()));
    return out;
  }

 private:
  struct Closer {
    void operator()(fgresq_model* m) const noexcept { fgresq_close(m); }
  };
  std::unique_ptr<fgresq_model, Closer> handle_;
};

}  // namespace fgresq
