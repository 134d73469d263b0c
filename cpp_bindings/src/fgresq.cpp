// The C ABI: every entry point catches everything and turns it into a status + thread-local message.
#include "fgresq.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "backend.hpp"
#include "bundle.hpp"
#include "error.hpp"
#include "npz.hpp"
#include "preprocess.hpp"
#include "ranking.hpp"

using fgresq::detail::Error;

struct fgresq_model {
  fgresq::detail::BundleInfo info;
  fgresq::detail::CompareHead head;
  std::unique_ptr<fgresq::detail::Encoder> encoder;
  size_t batch_size = 16;
};

namespace {

thread_local std::string g_last_error;

template <class F>
fgresq_status guarded(F&& body) noexcept {
  try {
    g_last_error.clear();
    body();
    return FGRESQ_OK;
  } catch (const Error& e) {
    try { g_last_error = e.what(); } catch (...) {}
    return e.status();
  } catch (const std::bad_alloc&) {
    try { g_last_error = "out of memory"; } catch (...) {}
    return FGRESQ_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    try { g_last_error = std::string("internal error: ") + e.what(); } catch (...) {}
    return FGRESQ_INTERNAL;
  } catch (...) {
    try { g_last_error = "internal error: unknown exception"; } catch (...) {}
    return FGRESQ_INTERNAL;
  }
}

[[noreturn]] void invalid(const std::string& msg) { throw Error(FGRESQ_INVALID_ARGUMENT, msg); }

void need(const void* p, const char* what) {
  if (!p) invalid(std::string(what) + " is NULL");
}

// `bytes` are heads.npz as read (and verified) by load_bundle; `path` names it in messages.
fgresq::detail::CompareHead load_head(const std::vector<uint8_t>& bytes, const std::string& path) {
  auto arrays = fgresq::detail::parse_npz(bytes, path);
  auto w = arrays.find("compare_weight");
  auto b = arrays.find("compare_bias");
  if (w == arrays.end() || b == arrays.end())
    throw Error(FGRESQ_CORRUPTED, path + ": no 'compare_weight' / 'compare_bias' arrays");
  if (w->second.shape.size() != 2 || w->second.shape[0] != 3 || w->second.shape[1] <= 0 || w->second.shape[1] % 2)
    throw Error(FGRESQ_CORRUPTED, path + ": 'compare_weight' must have shape [3, 2F]");
  if (b->second.shape.size() != 1 || b->second.shape[0] != 3)
    throw Error(FGRESQ_CORRUPTED, path + ": 'compare_bias' must have shape [3]");
  fgresq::detail::CompareHead h;
  h.feature_size = int(w->second.shape[1] / 2);
  h.weight.assign(w->second.data.begin(), w->second.data.end());
  for (int r = 0; r < 3; ++r) h.bias[r] = b->second.data[size_t(r)];
  return h;
}

// A bundle with a naturalness term scores each image as the Python Scorer does: its encoder score fused with
// ln d, the NIQE-style distance of the very tensor the encoder read. Features are never touched.
void fuse_scores(const fgresq::detail::niqe::Term& term, const float* x, size_t b, int size, float* scores) {
  const size_t per = 3 * size_t(size) * size_t(size);
  for (size_t k = 0; k < b; ++k)
    scores[k] = static_cast<float>(term.fuse(scores[k], term.log_distance(x + k * per, size)));
}

// Preprocess + encode images[0..n) in batches of model->batch_size; scores with the bundle's naturalness
// term when it has one (only computed when scores are asked for: compare needs features alone).
void encode_images(const fgresq_model* m, const fgresq_image* images, size_t n, float* features, float* scores,
                   const char* label = "image") {
  const int s = m->info.pre.size;
  const size_t per = 3 * size_t(s) * size_t(s);
  const size_t f = size_t(m->head.feature_size);
  std::vector<fgresq::detail::ImageView> views;
  views.reserve(n);
  for (size_t i = 0; i < n; ++i)  // validate everything before spending time on any of it
    views.push_back(fgresq::detail::check_image(&images[i], std::string(label) + " " + std::to_string(i)));
  std::vector<float> x;
  std::vector<float> feat_buf, score_buf;
  for (size_t start = 0; start < n; start += m->batch_size) {
    const size_t b = std::min(m->batch_size, n - start);
    x.resize(b * per);
    for (size_t k = 0; k < b; ++k)
      fgresq::detail::preprocess(views[start + k], m->info.pre, &x[k * per]);
    feat_buf.resize(b * f);
    score_buf.resize(b);
    m->encoder->encode(x.data(), b, feat_buf.data(), score_buf.data());
    if (scores && m->info.naturalness) fuse_scores(*m->info.naturalness, x.data(), b, s, score_buf.data());
    if (features) std::memcpy(features + start * f, feat_buf.data(), b * f * sizeof(float));
    if (scores) std::memcpy(scores + start, score_buf.data(), b * sizeof(float));
  }
}

// Scorer.compare: the head on (a, b) and on (b, a), order-symmetrised (fgresq_sdk.verdict.symmetrise); with
// raw, the head on (a, b) only (Scorer.compare(raw=True), the authors' predict_pair).
void compare_pair(const fgresq::detail::CompareHead& head, const float* fa, const float* fb, bool raw, double out[3]) {
  double a_first[3], a_second[3], b_first[3], b_second[3], fwd[3], bwd[3];
  head.terms(fa, a_first, a_second);
  head.terms(fb, b_first, b_second);
  head.probs(a_first, b_second, raw ? out : fwd);
  if (raw) return;
  head.probs(b_first, a_second, bwd);
  fgresq::detail::symmetrise(fwd, bwd, out);
}

fgresq_status compare_features(fgresq_model* model, const float* features_a, const float* features_b, bool raw,
                               double probs_out[3]) {
  return guarded([&] {
    need(model, "model");
    need(features_a, "features_a");
    need(features_b, "features_b");
    need(probs_out, "probs_out");
    compare_pair(model->head, features_a, features_b, raw, probs_out);
  });
}

fgresq_status compare_images(fgresq_model* model, const fgresq_image* a, const fgresq_image* b, bool raw,
                             double probs_out[3]) {
  return guarded([&] {
    need(model, "model");
    need(a, "image a");
    need(b, "image b");
    need(probs_out, "probs_out");
    fgresq::detail::check_image(a, "image a");
    fgresq::detail::check_image(b, "image b");
    const fgresq_image pair[2] = {*a, *b};
    const size_t f = size_t(model->head.feature_size);
    std::vector<float> q(2 * f);
    encode_images(model, pair, 2, q.data(), nullptr);
    compare_pair(model->head, q.data(), q.data() + f, raw, probs_out);
  });
}

}  // namespace

extern "C" {

const char* fgresq_version(void) {
#define FGRESQ_STR2(x) #x
#define FGRESQ_STR(x) FGRESQ_STR2(x)
  return FGRESQ_STR(FGRESQ_VERSION_MAJOR) "." FGRESQ_STR(FGRESQ_VERSION_MINOR) "." FGRESQ_STR(FGRESQ_VERSION_PATCH);
}

const char* fgresq_status_string(fgresq_status status) {
  switch (status) {
    case FGRESQ_OK: return "ok";
    case FGRESQ_INVALID_ARGUMENT: return "invalid argument";
    case FGRESQ_NOT_FOUND: return "not found";
    case FGRESQ_CORRUPTED: return "corrupted";
    case FGRESQ_UNSUPPORTED: return "unsupported";
    case FGRESQ_RUNTIME: return "runtime error";
    case FGRESQ_OUT_OF_MEMORY: return "out of memory";
    case FGRESQ_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* fgresq_last_error(void) { return g_last_error.c_str(); }

int fgresq_backend_available(fgresq_backend backend) {
  return backend == FGRESQ_BACKEND_ONNXRUNTIME ? 1 : 0;
}

void fgresq_options_init(fgresq_options* options) {
  if (!options) return;
  std::memset(options, 0, sizeof *options);
  options->struct_size = sizeof *options;
  options->backend = FGRESQ_BACKEND_ONNXRUNTIME;
  options->verify = 1;
}

fgresq_status fgresq_open(const char* bundle_dir, const fgresq_options* options, fgresq_model** model_out) {
  return guarded([&] {
    need(model_out, "model_out");
    *model_out = nullptr;
    need(bundle_dir, "bundle_dir");
    fgresq_options o;
    fgresq_options_init(&o);
    if (options) {
      if (options->struct_size < sizeof(uint32_t) + 4 * sizeof(int32_t) || options->struct_size > 4096)
        invalid("options->struct_size is " + std::to_string(options->struct_size) +
                " (call fgresq_options_init first)");
      std::memcpy(&o, options, std::min<size_t>(options->struct_size, sizeof o));
      o.struct_size = sizeof o;
    }
    if (o.backend == FGRESQ_BACKEND_TENSORRT)
      throw Error(FGRESQ_UNSUPPORTED, "the TensorRT backend is not built into this library "
                                      "(fgresq_backend_available() tells which backends are)");
    if (o.backend != FGRESQ_BACKEND_ONNXRUNTIME) invalid("unknown backend " + std::to_string(o.backend));
    if (o.threads < 0) invalid("options->threads must be >= 0");
    if (o.batch_size < 0) invalid("options->batch_size must be >= 0");
    auto m = std::make_unique<fgresq_model>();
    // The bundle's files are read once: the bytes that were hashed are the bytes that get parsed.
    fgresq::detail::LoadedBundle bundle = fgresq::detail::load_bundle(bundle_dir, o.verify != 0);
    m->info = bundle.info;
    m->head = load_head(bundle.heads_bytes, m->info.heads_path);
    std::vector<uint8_t>().swap(bundle.heads_bytes);
    if (m->info.feature_dim > 0 && 3 * m->info.feature_dim != m->head.feature_size)
      throw Error(FGRESQ_CORRUPTED, m->info.heads_path + ": compare head expects " +
                                        std::to_string(m->head.feature_size) + " features per image, model.json says 3x" +
                                        std::to_string(m->info.feature_dim));
    // 0: the Python SDK's default (fgresq_sdk/scorer.py default_batch_size; this library runs on the CPU): 2 for
    // conv-stats towers, whose full-resolution maps stay in cache at 2 images and not at 16, else 16
    m->batch_size = o.batch_size > 0 ? size_t(o.batch_size) : (m->info.conv_stats ? 2 : 16);
    fgresq::detail::EncoderOptions eo;
    eo.threads = o.threads;
    eo.input_size = m->info.pre.size;
    eo.feature_size = m->head.feature_size;
    m->encoder = fgresq::detail::make_onnxruntime_encoder(bundle.encoder_bytes, m->info.encoder_path, eo);
    std::vector<uint8_t>().swap(bundle.encoder_bytes);  // ORT keeps its own copy of the graph
    int sf = m->encoder->static_feature_size();
    if (sf > 0 && sf != m->head.feature_size)
      throw Error(FGRESQ_CORRUPTED, m->info.encoder_path + ": encoder gives " + std::to_string(sf) +
                                        " features per image, heads.npz expects " +
                                        std::to_string(m->head.feature_size));
    *model_out = m.release();
  });
}

void fgresq_close(fgresq_model* model) { delete model; }

int32_t fgresq_input_size(const fgresq_model* model) { return model ? model->info.pre.size : 0; }

int32_t fgresq_feature_size(const fgresq_model* model) { return model ? model->head.feature_size : 0; }

const char* fgresq_model_name(const fgresq_model* model) { return model ? model->info.name.c_str() : ""; }

int32_t fgresq_batch_size(const fgresq_model* model) { return model ? int32_t(model->batch_size) : 0; }

fgresq_status fgresq_encode(fgresq_model* model, const fgresq_image* images, size_t n, float* features_out,
                            float* scores_out) {
  return guarded([&] {
    need(model, "model");
    if (n == 0) return;
    need(images, "images");
    encode_images(model, images, n, features_out, scores_out);
  });
}

fgresq_status fgresq_score(fgresq_model* model, const fgresq_image* images, size_t n, float* scores_out) {
  return guarded([&] {
    need(model, "model");
    if (n == 0) return;
    need(images, "images");
    need(scores_out, "scores_out");
    encode_images(model, images, n, nullptr, scores_out);
  });
}

fgresq_status fgresq_compare_features(fgresq_model* model, const float* features_a, const float* features_b,
                                      double probs_out[3]) {
  return compare_features(model, features_a, features_b, false, probs_out);
}

fgresq_status fgresq_compare_features_raw(fgresq_model* model, const float* features_a, const float* features_b,
                                          double probs_out[3]) {
  return compare_features(model, features_a, features_b, true, probs_out);
}

fgresq_status fgresq_compare(fgresq_model* model, const fgresq_image* a, const fgresq_image* b,
                             double probs_out[3]) {
  return compare_images(model, a, b, false, probs_out);
}

fgresq_status fgresq_compare_raw(fgresq_model* model, const fgresq_image* a, const fgresq_image* b,
                                 double probs_out[3]) {
  return compare_images(model, a, b, true, probs_out);
}

fgresq_status fgresq_rank_features(fgresq_model* model, const float* features, const float* scores, size_t n,
                                   int32_t* order_out, double* win_rate_out, int32_t* tier_out,
                                   double* strength_out) {
  return guarded([&] {
    need(model, "model");
    if (n == 0) return;
    need(features, "features");
    need(scores, "scores");
    need(order_out, "order_out");
    if (n > size_t(INT32_MAX)) invalid("too many images");
    auto r = fgresq::detail::rank_features(model->head, features, scores, n);
    std::memcpy(order_out, r.order.data(), n * sizeof(int32_t));
    if (win_rate_out) std::memcpy(win_rate_out, r.win_rate.data(), n * sizeof(double));
    if (tier_out) std::memcpy(tier_out, r.tier.data(), n * sizeof(int32_t));
    if (strength_out) std::memcpy(strength_out, r.strength.data(), n * sizeof(double));
  });
}

fgresq_status fgresq_rank(fgresq_model* model, const fgresq_image* images, size_t n, int32_t* order_out,
                          float* scores_out, double* win_rate_out, int32_t* tier_out) {
  return guarded([&] {
    need(model, "model");
    if (n == 0) return;
    need(images, "images");
    need(order_out, "order_out");
    if (n > size_t(INT32_MAX)) invalid("too many images");
    const size_t f = size_t(model->head.feature_size);
    std::vector<float> q(n * f), s(n);
    encode_images(model, images, n, q.data(), s.data());
    auto r = fgresq::detail::rank_features(model->head, q.data(), s.data(), n);
    std::memcpy(order_out, r.order.data(), n * sizeof(int32_t));
    if (scores_out) std::memcpy(scores_out, s.data(), n * sizeof(float));
    if (win_rate_out) std::memcpy(win_rate_out, r.win_rate.data(), n * sizeof(double));
    if (tier_out) std::memcpy(tier_out, r.tier.data(), n * sizeof(int32_t));
  });
}

fgresq_status fgresq_preprocess(const fgresq_model* model, const fgresq_image* image, float* out, size_t out_len) {
  return guarded([&] {
    need(model, "model");
    need(out, "out");
    const int s = model->info.pre.size;
    const size_t need_len = 3 * size_t(s) * size_t(s);
    if (out_len < need_len)
      invalid("out_len " + std::to_string(out_len) + " is smaller than 3x" + std::to_string(s) + "x" +
              std::to_string(s) + " = " + std::to_string(need_len));
    auto view = fgresq::detail::check_image(image, "image");
    fgresq::detail::preprocess(view, model->info.pre, out);
  });
}

}  // extern "C"
