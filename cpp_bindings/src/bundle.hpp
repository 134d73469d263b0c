// Bundle folders as written by fgresq_sdk.bundle: model.json + the files it lists, each with its sha256.
#pragma once
#include <string>

namespace fgresq::detail {

struct BundleInfo {
  std::string root;
  std::string name;
  std::string precision;
  std::string encoder_path;
  std::string heads_path;
  std::string compare_head_path;  // empty if the bundle has none
  int input_size = 224;
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  float stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  int feature_dim = -1;  // manifest "feature_dim" (D), -1 if absent
};

// Mirrors fgresq_sdk.bundle.load_bundle: same checks, same order, same messages. Every listed file must
// exist; with verify, each one's sha256 must match (the optional checkpoint included, as in Python).
BundleInfo load_bundle(const std::string& path, bool verify);

}  // namespace fgresq::detail
