// Error paths: every failure is a status + a one-line message naming the file or image at fault.
#include <filesystem>
#include <thread>

#include "fgresq.hpp"
#include "test_common.hpp"

namespace fs = std::filesystem;

static bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Status and message of one call, checked together.
#define EXPECT_STATUS(call, status, part)                                                             \
  do {                                                                                                \
    fgresq_status st_ = (call);                                                                       \
    std::string msg_ = fgresq_last_error();                                                           \
    CHECK_MSG(st_ == (status), "%s returned %s (%s)", #call, fgresq_status_string(st_), msg_.c_str()); \
    CHECK_MSG(contains(msg_, part), "%s: message '%s' lacks '%s'", #call, msg_.c_str(), std::string(part).c_str()); \
  } while (0)

static fs::path copy_bundle(const fs::path& src, const fs::path& dst) {
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), dst / e.path().filename());
  return dst;
}

static void flip_byte(const fs::path& p, size_t offset) {
  auto b = testing::read_bytes(p.string());
  b.at(offset) ^= 0xFF;
  testing::write_bytes(p.string(), b.data(), b.size());
}

static std::string read_text(const fs::path& p) {
  auto b = testing::read_bytes(p.string());
  return std::string(b.begin(), b.end());
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const fs::path dir = argv[1];
  const fs::path bundle = dir / "bundle";
  const fs::path work = dir / "errors";
  fs::remove_all(work);
  fs::create_directories(work);
  fgresq_model* m = nullptr;

  // Missing bundle → NOT_FOUND naming it.
  const std::string missing = (work / "no_such_bundle").string();
  EXPECT_STATUS(fgresq_open(missing.c_str(), nullptr, &m), FGRESQ_NOT_FOUND, missing + ": model bundle not found");
  CHECK(m == nullptr);
  // A folder without model.json.
  EXPECT_STATUS(fgresq_open(work.string().c_str(), nullptr, &m), FGRESQ_NOT_FOUND, "model.json missing");
  // Null pointers.
  EXPECT_STATUS(fgresq_open(nullptr, nullptr, &m), FGRESQ_INVALID_ARGUMENT, "bundle_dir is NULL");
  EXPECT_STATUS(fgresq_open(bundle.string().c_str(), nullptr, nullptr), FGRESQ_INVALID_ARGUMENT, "model_out is NULL");

  // Corrupted encoder.onnx (one byte flipped in a copy) → CORRUPTED naming the file.
  {
    fs::path b = copy_bundle(bundle, work / "corrupt");
    flip_byte(b / "encoder.onnx", 1000);
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED, "encoder.onnx: sha256 mismatch");
    CHECK(m == nullptr);
  }
  // A listed file missing → NOT_FOUND naming it.
  {
    fs::path b = copy_bundle(bundle, work / "missing_heads");
    fs::remove(b / "heads.npz");
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_NOT_FOUND,
                  "heads.npz: file listed in model.json as 'heads' is missing");
  }
  // Manifest that is not JSON, not ours, or too new.
  {
    fs::path b = copy_bundle(bundle, work / "bad_manifest");
    std::string text = read_text(b / "model.json");
    testing::write_bytes((b / "model.json").string(), text.data(), text.size() / 2);
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED, "manifest is not valid JSON");
    std::string other = "{\"format\": \"something-else\"}";
    testing::write_bytes((b / "model.json").string(), other.data(), other.size());
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED, "not an fgresq model bundle manifest");
    std::string newer = text;
    size_t k = newer.find("\"format_version\": 1");
    CHECK(k != std::string::npos);
    if (k != std::string::npos) newer.replace(k, 19, "\"format_version\": 9");
    testing::write_bytes((b / "model.json").string(), newer.data(), newer.size());
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_UNSUPPORTED, "bundle format v9 is newer");
  }
  // heads.npz saved with np.savez_compressed (verify off, since the manifest's sha256 no longer matches).
  {
    fs::path b = copy_bundle(bundle, work / "compressed_heads");
    fs::copy_file(dir / "heads_compressed.npz", b / "heads.npz", fs::copy_options::overwrite_existing);
    fgresq_options o;
    fgresq_options_init(&o);
    o.verify = 0;
    EXPECT_STATUS(fgresq_open(b.string().c_str(), &o, &m), FGRESQ_UNSUPPORTED, "heads.npz: member");
    CHECK(contains(fgresq_last_error(), "compressed"));
    o.verify = 1;
    EXPECT_STATUS(fgresq_open(b.string().c_str(), &o, &m), FGRESQ_CORRUPTED, "heads.npz: sha256 mismatch");
  }
  // Options: TensorRT is not built in; a garbage struct_size is refused.
  {
    fgresq_options o;
    fgresq_options_init(&o);
    CHECK(fgresq_backend_available(FGRESQ_BACKEND_ONNXRUNTIME) == 1);
    CHECK(fgresq_backend_available(FGRESQ_BACKEND_TENSORRT) == 0);
    o.backend = FGRESQ_BACKEND_TENSORRT;
    EXPECT_STATUS(fgresq_open(bundle.string().c_str(), &o, &m), FGRESQ_UNSUPPORTED, "TensorRT");
    fgresq_options_init(&o);
    o.struct_size = 3;
    EXPECT_STATUS(fgresq_open(bundle.string().c_str(), &o, &m), FGRESQ_INVALID_ARGUMENT, "struct_size");
  }
  // The manifest path itself is accepted, like the Python SDK.
  CHECK(fgresq_open((bundle / "model.json").string().c_str(), nullptr, &m) == FGRESQ_OK);
  CHECK(std::string(fgresq_last_error()).empty());
  fgresq_close(m);

  m = open_or_die(bundle.string());
  std::vector<uint8_t> px(16 * 10 * 3, 128);
  const fgresq_image good{px.data(), 16, 10, 0, 3};
  float score = -1;
  double probs[3];
  int32_t order[2];

  EXPECT_STATUS(fgresq_score(nullptr, &good, 1, &score), FGRESQ_INVALID_ARGUMENT, "model is NULL");
  EXPECT_STATUS(fgresq_score(m, nullptr, 1, &score), FGRESQ_INVALID_ARGUMENT, "images is NULL");
  EXPECT_STATUS(fgresq_score(m, &good, 1, nullptr), FGRESQ_INVALID_ARGUMENT, "scores_out is NULL");
  CHECK(fgresq_score(m, nullptr, 0, nullptr) == FGRESQ_OK);  // nothing to do
  {
    fgresq_image imgs[2] = {good, good};
    imgs[1].width = 0;
    EXPECT_STATUS(fgresq_score(m, imgs, 2, &score), FGRESQ_INVALID_ARGUMENT,
                  "image 1: image has zero width or height (0x10)");
    imgs[1] = good;
    imgs[1].data = nullptr;
    EXPECT_STATUS(fgresq_score(m, imgs, 2, &score), FGRESQ_INVALID_ARGUMENT, "image 1: pixel data pointer is NULL");
    imgs[1] = good;
    imgs[1].channels = 2;
    EXPECT_STATUS(fgresq_score(m, imgs, 2, &score), FGRESQ_INVALID_ARGUMENT, "image 1: 2 channels");
    imgs[1] = good;
    imgs[1].stride_bytes = 20;
    EXPECT_STATUS(fgresq_score(m, imgs, 2, &score), FGRESQ_INVALID_ARGUMENT, "stride_bytes 20 is smaller");
    imgs[0].height = -3;
    EXPECT_STATUS(fgresq_rank(m, imgs, 2, order, nullptr, nullptr, nullptr), FGRESQ_INVALID_ARGUMENT,
                  "image 0: image has zero width or height (16x-3)");
  }
  fgresq_image zero = good;
  zero.height = 0;
  EXPECT_STATUS(fgresq_compare(m, &good, &zero, probs), FGRESQ_INVALID_ARGUMENT, "image b: image has zero width");
  EXPECT_STATUS(fgresq_compare(m, nullptr, &good, probs), FGRESQ_INVALID_ARGUMENT, "image a is NULL");
  EXPECT_STATUS(fgresq_compare(m, &good, &good, nullptr), FGRESQ_INVALID_ARGUMENT, "probs_out is NULL");
  EXPECT_STATUS(fgresq_rank(m, &good, 1, nullptr, nullptr, nullptr, nullptr), FGRESQ_INVALID_ARGUMENT,
                "order_out is NULL");
  std::vector<float> small(10);
  EXPECT_STATUS(fgresq_preprocess(m, &good, small.data(), small.size()), FGRESQ_INVALID_ARGUMENT, "out_len 10");
  EXPECT_STATUS(fgresq_preprocess(m, &zero, nullptr, 0), FGRESQ_INVALID_ARGUMENT, "out is NULL");

  // Success clears the message; messages are per thread.
  CHECK(fgresq_score(m, &good, 1, &score) == FGRESQ_OK);
  CHECK(std::string(fgresq_last_error()).empty());
  CHECK(score > 0.0f && score < 1.0f);
  CHECK(fgresq_score(m, &zero, 1, &score) == FGRESQ_INVALID_ARGUMENT);
  std::string other_thread = "unset";
  std::thread([&] { other_thread = fgresq_last_error(); }).join();
  CHECK(other_thread.empty());
  CHECK(!std::string(fgresq_last_error()).empty());

  // A single image ranks alone; rank of nothing is a no-op.
  CHECK(fgresq_rank(m, &good, 1, order, nullptr, nullptr, nullptr) == FGRESQ_OK);
  CHECK(order[0] == 0);
  CHECK(fgresq_rank(m, nullptr, 0, nullptr, nullptr, nullptr, nullptr) == FGRESQ_OK);

  // The C++ wrapper throws fgresq::Error with the status.
  try {
    fgresq::Model bad(missing);
    CHECK(false);
  } catch (const fgresq::Error& e) {
    CHECK(e.status() == FGRESQ_NOT_FOUND);
    CHECK(contains(e.what(), "model bundle not found"));
  }
  fgresq_close(m);
  fgresq_close(nullptr);
  CHECK(std::string(fgresq_status_string(FGRESQ_CORRUPTED)) == "corrupted");
  fs::remove_all(work);
  return testing::finish("test_errors");
}
