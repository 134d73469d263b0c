// Error paths: every failure is a status + a one-line message naming the file or image at fault.
#include <cctype>
#include <filesystem>
#include <thread>
#include <vector>

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

static void write_text(const fs::path& p, const std::string& text) {
  testing::write_bytes(p.string(), text.data(), text.size());
}

// model.json text with `from` replaced by `to` (its first occurrence at or after `after`; a CHECK if absent).
static std::string replaced(std::string text, const std::string& from, const std::string& to,
                            const std::string& after = "") {
  size_t start = after.empty() ? 0 : text.find(after);
  size_t k = start == std::string::npos ? std::string::npos : text.find(from, start);
  CHECK_MSG(k != std::string::npos, "model.json has no '%s' after '%s'", from.c_str(), after.c_str());
  if (k != std::string::npos) text.replace(k, from.size(), to);
  return text;
}

// model.json text with the value of files[role][key] (one line, as json.dumps(indent=2) writes it) set to
// `value` (JSON text).
static std::string with_field(const std::string& text, const std::string& role, const std::string& key,
                              const std::string& value) {
  size_t files = text.find("\"files\": {");
  size_t entry = files == std::string::npos ? files : text.find("\"" + role + "\": {", files);
  size_t k = entry == std::string::npos ? entry : text.find("\"" + key + "\": ", entry);
  CHECK_MSG(k != std::string::npos, "model.json has no files['%s']['%s']", role.c_str(), key.c_str());
  if (k == std::string::npos) return text;
  k += key.size() + 4;
  size_t end = text.find_first_of(",\n", k);
  std::string out = text;
  out.replace(k, end - k, value);
  return out;
}

// model.json text with `keys` (JSON members, comma-separated) added to the top-level "preprocess" object.
static std::string with_pre(const std::string& text, const std::string& keys) {
  return replaced(text, "\"size\": 224,", "\"size\": 224, " + keys + ",", "\n  \"preprocess\"");
}

// A fresh copy of the bundle in work/<name> whose model.json is `manifest`.
static fs::path variant(const fs::path& bundle, const fs::path& work, const std::string& name,
                        const std::string& manifest) {
  fs::path b = copy_bundle(bundle, work / name);
  write_text(b / "model.json", manifest);
  return b;
}

static const fgresq_options& noverify_defaults() {
  static fgresq_options o = [] {
    fgresq_options x;
    fgresq_options_init(&x);
    x.verify = 0;
    return x;
  }();
  return o;
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
  // ---- Hostile or broken manifests: each is refused with one line naming model.json or the file.
  {
    const std::string text = read_text(bundle / "model.json");
    const std::string heads_sha = [&] {
      size_t k = text.find("\"sha256\": \"", text.find("\"heads\": {"));
      return k == std::string::npos ? std::string() : text.substr(k + 11, 64);
    }();
    CHECK(heads_sha.size() == 64);
    // A byte-identical copy of heads.npz outside the bundle: its sha256 matches, so only the path rules
    // can refuse it.
    const fs::path outside = work / "outside.npz";
    fs::copy_file(bundle / "heads.npz", outside, fs::copy_options::overwrite_existing);
    const std::string abs_outside = fs::absolute(outside).string();
    struct ManifestCase {
      const char* name;
      std::string manifest;
      fgresq_status status;
      std::string part;
      const fgresq_options* options;
    };
    const std::string ms = "/model.json: ";
    const std::vector<ManifestCase> cases = {
        // Paths that leave the bundle, or are not plain relative '/' paths.
        {"dotdot", with_field(text, "heads", "path", "\"../outside.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path '../outside.npz' leaves the bundle", nullptr},
        {"dotdot_inner", with_field(text, "heads", "path", "\"sub/../heads.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path 'sub/../heads.npz' leaves the bundle or has empty/'.'/'..' parts", nullptr},
        {"dot", with_field(text, "heads", "path", "\"./heads.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path './heads.npz' leaves the bundle or has empty/'.'/'..' parts", nullptr},
        {"empty_component", with_field(text, "heads", "path", "\"sub//heads.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path 'sub//heads.npz' leaves the bundle or has empty/'.'/'..' parts", nullptr},
        {"absolute", with_field(text, "heads", "path", "\"" + abs_outside + "\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path '" + abs_outside + "' is not a relative path inside the bundle", nullptr},
        {"drive", with_field(text, "heads", "path", "\"C:heads.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path 'C:heads.npz' is not a relative path inside the bundle", nullptr},
        {"backslash", with_field(text, "heads", "path", "\"sub\\\\heads.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path 'sub\\\\heads.npz' is not a relative path inside the bundle", nullptr},
        {"nul", with_field(text, "heads", "path", "\"heads.npz\\u0000.txt\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path 'heads.npz\\x00.txt' is not a relative path inside the bundle", nullptr},
        {"newline", with_field(text, "heads", "path", "\"../x\\ny.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' path '../x\\ny.npz' leaves the bundle", nullptr},
        {"newline_missing", with_field(text, "heads", "path", "\"x\\ny.npz\""), FGRESQ_NOT_FOUND,
         "/x\\x0ay.npz: file listed in model.json as 'heads' is missing", nullptr},
        // The checkpoint is never opened, but its entry obeys the same rules.
        {"checkpoint_dotdot", with_field(text, "checkpoint", "path", "\"../outside.npz\""), FGRESQ_CORRUPTED,
         ms + "file entry 'checkpoint' path '../outside.npz' leaves the bundle", nullptr},
        // format_version: the JSON integer 1 only.
        {"version_float", replaced(text, "\"format_version\": 1", "\"format_version\": 1.5"), FGRESQ_CORRUPTED,
         ms + "format_version must be an integer (got 1.5)", nullptr},
        {"version_float_one", replaced(text, "\"format_version\": 1", "\"format_version\": 1.0"), FGRESQ_CORRUPTED,
         ms + "format_version must be an integer (got 1.0)", nullptr},
        {"version_string", replaced(text, "\"format_version\": 1", "\"format_version\": \"1\""), FGRESQ_CORRUPTED,
         ms + "format_version must be an integer (got \"1\")", nullptr},
        {"version_bool", replaced(text, "\"format_version\": 1", "\"format_version\": true"), FGRESQ_CORRUPTED,
         ms + "format_version must be an integer (got true)", nullptr},
        {"version_missing", replaced(text, "\"format_version\": 1", "\"format_versio\": 1"), FGRESQ_CORRUPTED,
         ms + "format_version must be an integer (got null)", nullptr},
        {"version_zero", replaced(text, "\"format_version\": 1", "\"format_version\": 0"), FGRESQ_CORRUPTED,
         ms + "unknown format_version 0 (this SDK reads v1)", nullptr},
        {"version_2", replaced(text, "\"format_version\": 1", "\"format_version\": 2"), FGRESQ_UNSUPPORTED,
         ms + "bundle format v2 is newer than this SDK supports (v1)", nullptr},
        // The files table and its entries.
        {"entry_not_object", replaced(text, "\"heads\": {", "\"heads\": \"heads.npz\", \"heads_was\": {", "\"files\""),
         FGRESQ_CORRUPTED, ms + "file entry 'heads' is not an object", nullptr},
        {"path_not_string", with_field(text, "heads", "path", "5"), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' has no 'path' string", nullptr},
        {"path_empty", with_field(text, "heads", "path", "\"\""), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' has no 'path' string", nullptr},
        {"sha256_upper", with_field(text, "heads", "sha256", "\"" + [&] {
           std::string u = heads_sha;
           for (char& c : u) c = char(std::toupper(static_cast<unsigned char>(c)));
           return u;
         }() + "\""),
         FGRESQ_CORRUPTED, ms + "file entry 'heads' has no valid sha256 (64 lowercase hex digits)", nullptr},
        // Shape is checked even with verify off (the hash itself is not).
        {"sha256_number", with_field(text, "checkpoint", "sha256", "123"), FGRESQ_CORRUPTED,
         ms + "file entry 'checkpoint' has no valid sha256", &noverify_defaults()},
        {"sha256_short", with_field(text, "encoder", "sha256", "\"abc\""), FGRESQ_CORRUPTED,
         ms + "file entry 'encoder' has no valid sha256", &noverify_defaults()},
        {"bytes_negative", with_field(text, "heads", "bytes", "-1"), FGRESQ_CORRUPTED,
         ms + "file entry 'heads' has a 'bytes' that is not a non-negative integer", nullptr},
        // A repeated key: the last value counts, as in Python's json (the first one is harmless here).
        {"duplicate_key", replaced(text, "\"path\": \"heads.npz\"", "\"path\": \"heads.npz\", \"path\": \"../outside.npz\""),
         FGRESQ_CORRUPTED, ms + "file entry 'heads' path '../outside.npz' leaves the bundle", nullptr},
        {"missing_role", replaced(text, "\"encoder\": {", "\"encoder_was\": {", "\"files\""), FGRESQ_CORRUPTED,
         ms + "manifest lists no 'encoder' file", nullptr},
        {"files_not_object", replaced(text, "\"files\": {", "\"files\": [], \"files_was\": {"), FGRESQ_CORRUPTED,
         ms + "manifest has no 'files' table", nullptr},
        {"config_not_object", replaced(text, "\"config\": {", "\"config\": [], \"config_was\": {"),
         FGRESQ_CORRUPTED, ms + "manifest has no 'config' object", nullptr},
        {"size_float", replaced(text, "\"size\": 224", "\"size\": 224.0", "\n  \"preprocess\""),
         FGRESQ_CORRUPTED, ms + "preprocess.size must be a positive integer", nullptr},
        {"std_negative", replaced(text, "0.26862954", "-0.26862954", "\n  \"preprocess\""), FGRESQ_CORRUPTED,
         ms + "preprocess.std must be positive", nullptr},
        {"precision_number", replaced(text, "\"precision\": \"fp32\"", "\"precision\": 32"), FGRESQ_CORRUPTED,
         ms + "precision must be a string", nullptr},
        // The preprocess spec (docs/preprocess-spec.md): unknown methods are UNSUPPORTED, bad shapes CORRUPTED.
        {"resize_lanczos", with_pre(text, R"("resize": {"method": "lanczos", "size": [224, 224]})"), FGRESQ_UNSUPPORTED,
         ms + "preprocess.resize.method \"lanczos\" is unknown to this SDK (known: bilinear-antialias, bilinear-cv2)",
         nullptr},
        {"crop_random", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [256, 256]}, "crop": {"method": "random", "size": [224, 224]})"),
         FGRESQ_UNSUPPORTED, ms + "preprocess.crop.method \"random\" is unknown to this SDK (known: center)", nullptr},
        {"crop_too_large", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [256, 200]}, "crop": {"method": "center", "size": [224, 224]})"),
         FGRESQ_CORRUPTED, ms + "preprocess.crop.size [224, 224] does not fit inside preprocess.resize.size [256, 200]",
         nullptr},
        {"crop_not_size", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [256, 256]}, "crop": {"method": "center", "size": [200, 224]})"),
         FGRESQ_CORRUPTED, ms + "preprocess.crop.size [200, 224] must be [224, 224] (preprocess.size)", nullptr},
        {"crop_without_resize", with_pre(text, R"("crop": {"method": "center", "size": [224, 224]})"), FGRESQ_CORRUPTED,
         ms + "preprocess.crop needs a preprocess.resize", nullptr},
        {"resize_not_size", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [256, 256]})"),
         FGRESQ_CORRUPTED, ms + "preprocess.resize.size [256, 256] must be [224, 224] (preprocess.size, when there is no crop)",
         nullptr},
        {"resize_not_object", with_pre(text, R"("resize": "bilinear-cv2")"), FGRESQ_CORRUPTED,
         ms + "preprocess.resize must be an object {\"method\": ..., \"size\": [width, height]} (got \"bilinear-cv2\")",
         nullptr},
        {"resize_method_missing", with_pre(text, R"("resize": {"size": [224, 224]})"), FGRESQ_CORRUPTED,
         ms + "preprocess.resize.method must be a string (got null)", nullptr},
        {"resize_size_float", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [224.0, 224]})"),
         FGRESQ_CORRUPTED, ms + "preprocess.resize.size must be [width, height], two positive integers (got [224.0, 224])",
         nullptr},
        {"resize_size_bool", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [224, true]})"),
         FGRESQ_CORRUPTED, ms + "preprocess.resize.size must be [width, height], two positive integers (got [224, true])",
         nullptr},
        {"resize_method_number", with_pre(text, R"("resize": {"method": 3, "size": [224, 224]})"), FGRESQ_CORRUPTED,
         ms + "preprocess.resize.method must be a string (got 3)", nullptr},
        {"resize_size_one", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [224]})"), FGRESQ_CORRUPTED,
         ms + "preprocess.resize.size must be [width, height], two positive integers", nullptr},
        {"resize_size_zero", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [0, 224]})"),
         FGRESQ_CORRUPTED, ms + "preprocess.resize.size must be [width, height], two positive integers", nullptr},
        {"crop_size_missing", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [256, 256]}, "crop": {"method": "center"})"),
         FGRESQ_CORRUPTED, ms + "preprocess.crop.size must be [width, height], two positive integers (got null)", nullptr},
        {"resize_huge", with_pre(text, R"("resize": {"method": "bilinear-cv2", "size": [100000, 256]})"),
         FGRESQ_UNSUPPORTED, ms + "preprocess.resize.size [100000, 256] is larger than this library supports (8192)",
         nullptr},
        {"resize_method_newline", with_pre(text, R"("resize": {"method": "lan\nczos", "size": [224, 224]})"),
         FGRESQ_UNSUPPORTED, ms + "preprocess.resize.method \"lan\\nczos\" is unknown", nullptr},
    };
    for (const ManifestCase& c : cases) {
      fs::path b = variant(bundle, work, c.name, c.manifest);
      fs::create_directories(b / "sub");
      m = nullptr;
      fgresq_status st = fgresq_open(b.string().c_str(), c.options, &m);
      std::string msg = fgresq_last_error();
      CHECK_MSG(st == c.status, "%s: fgresq_open returned %s (%s)", c.name, fgresq_status_string(st), msg.c_str());
      CHECK_MSG(contains(msg, c.part), "%s: message '%s' lacks '%s'", c.name, msg.c_str(), c.part.c_str());
      CHECK_MSG(msg.find('\n') == std::string::npos, "%s: message is not one line", c.name);
      CHECK(m == nullptr);
      fgresq_close(m);
      fs::remove_all(b);
    }
  }
  // ---- The naturalness term (bundle_niqe): its section is checked like validate_section (same wording; the
  // C++ says "upgrade fgresq"), its pristine file like any read file (sha256) and like Pristine.from_dict.
  {
    const fs::path nbundle = dir / "bundle_niqe";
    const std::string text = read_text(nbundle / "model.json");
    const std::string ms = "/model.json: ";
    const std::string sec = "\n  \"naturalness\"";  // replacements inside the section only
    const std::string weights = "naturalness needs weight \xE2\x89\xA5 0 and scale > 0";
    struct NiqeCase {
      const char* name;
      std::string manifest;
      fgresq_status status;
      std::string part;
    };
    const std::vector<NiqeCase> cases = {
        {"niqe_not_object", replaced(text, "\"naturalness\": {", "\"naturalness\": [1], \"naturalness_was\": {"),
         FGRESQ_CORRUPTED, ms + "'naturalness' is not an object"},
        {"niqe_method_unknown", replaced(text, "\"niqe-log-distance\"", "\"brisque\"", sec), FGRESQ_UNSUPPORTED,
         ms + "naturalness.method must be 'niqe-log-distance' (got \"brisque\"); upgrade fgresq if the bundle is newer"},
        {"niqe_method_number", replaced(text, "\"niqe-log-distance\"", "2", sec), FGRESQ_CORRUPTED,
         ms + "naturalness.method must be 'niqe-log-distance' (got 2)"},
        {"niqe_method_missing", replaced(text, "\"method\": ", "\"method_was\": ", sec), FGRESQ_CORRUPTED,
         ms + "naturalness.method must be 'niqe-log-distance' (got null)"},
        {"niqe_role_unlisted", replaced(text, "\"pristine\": \"niqe_pristine\"", "\"pristine\": \"niqe_model\"", sec),
         FGRESQ_CORRUPTED, ms + "naturalness.pristine must name a file listed in 'files' (got \"niqe_model\")"},
        {"niqe_role_list", replaced(text, "\"pristine\": \"niqe_pristine\"", "\"pristine\": [\"niqe_pristine\", true]", sec),
         FGRESQ_CORRUPTED, ms + "naturalness.pristine must name a file listed in 'files' (got [\"niqe_pristine\", true])"},
        {"niqe_weight_bool", replaced(text, "\"weight\": 1.3", "\"weight\": true", sec), FGRESQ_CORRUPTED,
         ms + "naturalness.weight must be a finite number"},
        {"niqe_weight_string", replaced(text, "\"weight\": 1.3", "\"weight\": \"1.3\"", sec), FGRESQ_CORRUPTED,
         ms + "naturalness.weight must be a finite number"},
        {"niqe_offset_missing", replaced(text, "\"offset\": ", "\"offset_was\": ", sec), FGRESQ_CORRUPTED,
         ms + "naturalness.offset must be a finite number"},
        // Python reads 1e999 as inf ("must be a finite number"); this library's JSON reader refuses the number.
        {"niqe_weight_overflow", replaced(text, "\"weight\": 1.3", "\"weight\": 1e999", sec), FGRESQ_CORRUPTED,
         ms + "manifest is not valid JSON (number out of range"},
        {"niqe_weight_negative", replaced(text, "\"weight\": 1.3", "\"weight\": -1.3", sec), FGRESQ_CORRUPTED, ms + weights},
        {"niqe_scale_zero", replaced(text, "\"scale\": 0.5", "\"scale\": 0", sec), FGRESQ_CORRUPTED, ms + weights},
        {"niqe_scale_negative", replaced(text, "\"scale\": 0.5", "\"scale\": -0.5", sec), FGRESQ_CORRUPTED, ms + weights},
        // NIQE reads 64-px patches of the model's input: a smaller input is refused at load, as in Python.
        {"niqe_input_small", replaced(text, "\"size\": 224", "\"size\": 32", "\n  \"preprocess\""), FGRESQ_CORRUPTED,
         ms + "naturalness needs a model input of at least 64 px (preprocess size 32)"},
        // A listed role that is no pristine model: read (and hashed) like any file, then refused as one.
        {"niqe_role_heads", replaced(text, "\"pristine\": \"niqe_pristine\"", "\"pristine\": \"heads\"", sec),
         FGRESQ_CORRUPTED, "/heads.npz: not valid JSON ("},
    };
    for (const NiqeCase& c : cases) {
      fs::path b = variant(nbundle, work, c.name, c.manifest);
      m = nullptr;
      fgresq_status st = fgresq_open(b.string().c_str(), nullptr, &m);
      std::string msg = fgresq_last_error();
      CHECK_MSG(st == c.status, "%s: fgresq_open returned %s (%s)", c.name, fgresq_status_string(st), msg.c_str());
      CHECK_MSG(contains(msg, c.part), "%s: message '%s' lacks '%s'", c.name, msg.c_str(), c.part.c_str());
      CHECK_MSG(msg.find('\n') == std::string::npos, "%s: message is not one line", c.name);
      CHECK(m == nullptr);
      fs::remove_all(b);
    }
    // Extra keys in the section (the fit's record) and weight 0 are fine.
    {
      std::string ok = replaced(text, "\"weight\": 1.3", "\"weight\": 0, \"fit\": {\"k\": 0.5}", sec);
      fs::path b = variant(nbundle, work, "niqe_fit_key", ok);
      CHECK_MSG(fgresq_open(b.string().c_str(), nullptr, &m) == FGRESQ_OK, "extra key: %s", fgresq_last_error());
      fgresq_close(m);
      m = nullptr;
    }
    // The pristine file: tampered (sha256), missing, and with verify off its content rules.
    const std::string pf = "niqe-pristine.json";
    fs::path b = copy_bundle(nbundle, work / "niqe_pristine");
    flip_byte(b / pf, 200);
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED,
                  pf + ": sha256 mismatch (file is corrupted or was replaced; expected");
    CHECK(m == nullptr);
    fs::remove(b / pf);
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_NOT_FOUND,
                  pf + ": file listed in model.json as 'niqe_pristine' is missing");
    // Pristine files with a 36-feature mean and a covariance c·I (+ one asymmetric entry), as text.
    auto pristine = [](double diag, double asym, const std::string& format) {
      std::string mean, cov;
      for (int i = 0; i < 36; ++i) {
        mean += std::string(i ? ", " : "") + "0.5";
        cov += std::string(i ? ", " : "") + "[";
        for (int j = 0; j < 36; ++j)
          cov += std::string(j ? ", " : "") + std::to_string(i == j ? diag : (i == 0 && j == 1 ? asym : 0.0));
        cov += "]";
      }
      return "{\"format\": \"" + format + "\", \"patch\": 64, \"mean\": [" + mean + "], \"cov\": [" + cov + "]}";
    };
    const std::string fmt = "fgresq-niqe-pristine/1";
    const std::vector<std::pair<std::string, std::string>> contents = {
        {pristine(0.0, 0.0, fmt), pf + ": covariance is not positive definite"},
        {pristine(1.0, 0.5, fmt), pf + ": covariance is not a finite symmetric matrix"},
        {pristine(1.0, 0.0, "fgresq-niqe-pristine/9"), pf + ": not a fgresq-niqe-pristine/1 file"},
        {replaced(pristine(1.0, 0.0, fmt), "\"patch\": 64", "\"patch\": 96"),
         pf + ": needs a 36-feature mean and covariance with 64-px patches"},
        {replaced(pristine(1.0, 0.0, fmt), "\"mean\": [0.5", "\"mean\": [\"0.5\""), pf + ": mean/cov are not numbers"},
        {"{\"format\": NaN}", pf + ": not valid JSON ("},
    };
    for (const auto& [content, part] : contents) {
      write_text(b / pf, content);
      EXPECT_STATUS(fgresq_open(b.string().c_str(), &noverify_defaults(), &m), FGRESQ_CORRUPTED, part);
      CHECK(m == nullptr);
      CHECK(std::string(fgresq_last_error()).find('\n') == std::string::npos);
    }
    // A valid pristine model of its own opens with verify off (and is refused by its sha256 with verify on).
    write_text(b / pf, pristine(1.0, 0.0, fmt));
    CHECK_MSG(fgresq_open(b.string().c_str(), &noverify_defaults(), &m) == FGRESQ_OK, "own pristine: %s",
              fgresq_last_error());
    fgresq_close(m);
    m = nullptr;
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED, pf + ": sha256 mismatch");
  }
  // A symlink inside the bundle that points outside it is refused; one that stays inside is fine.
  {
    const std::string refused = "heads.npz: file listed in model.json as 'heads' resolves outside the bundle folder (refused)";
    fs::path b = copy_bundle(bundle, work / "symlink_out");
    fs::remove(b / "heads.npz");
    fs::create_symlink(fs::absolute(work / "outside.npz"), b / "heads.npz");
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED, refused);
    CHECK(m == nullptr);
    fs::remove(b / "heads.npz");
    fs::create_symlink("../outside.npz", b / "heads.npz");  // relative target
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED, refused);
    fs::remove(b / "heads.npz");
    fs::create_symlink("../no_such_file.npz", b / "heads.npz");  // dangling, and outside
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED, refused);
    fs::remove(b / "heads.npz");
    fs::create_directories(b / "sub");
    fs::create_directory_symlink(fs::absolute(work), b / "sub" / "up");  // a symlinked folder on the way
    fs::path text = b / "model.json";
    write_text(text, with_field(read_text(text), "heads", "path", "\"sub/up/outside.npz\""));
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED,
                  "sub/up/outside.npz: file listed in model.json as 'heads' resolves outside the bundle folder");
    fs::copy_file(bundle / "model.json", text, fs::copy_options::overwrite_existing);
    fs::copy_file(work / "outside.npz", b / "sub" / "real.npz");
    fs::create_symlink("sub/real.npz", b / "heads.npz");
    CHECK_MSG(fgresq_open(b.string().c_str(), nullptr, &m) == FGRESQ_OK, "symlink inside: %s", fgresq_last_error());
    fgresq_close(m);
    m = nullptr;
    // The bundle folder itself may be a symlink.
    fs::create_directory_symlink(fs::absolute(b), work / "symlinked_bundle");
    CHECK_MSG(fgresq_open((work / "symlinked_bundle").string().c_str(), nullptr, &m) == FGRESQ_OK, "symlinked bundle: %s",
              fgresq_last_error());
    fgresq_close(m);
    m = nullptr;
    // A listed name that is a folder, not a file, is missing (as os.path.isfile says).
    fs::remove(b / "heads.npz");
    fs::create_directories(b / "heads.npz");
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_NOT_FOUND,
                  "heads.npz: file listed in model.json as 'heads' is missing");
  }
  // Only the files this library opens are hashed: a replaced checkpoint (or compare head) does not stop
  // fgresq_open, a wrong sha256 for the encoder does. The checkpoint must still exist.
  {
    fs::path b = copy_bundle(bundle, work / "checkpoint_changed");
    flip_byte(b / "model.safetensors", 100);
    if (fs::exists(b / "compare_head.onnx")) flip_byte(b / "compare_head.onnx", 100);  // bundles may lack one
    CHECK_MSG(fgresq_open(b.string().c_str(), nullptr, &m) == FGRESQ_OK, "changed checkpoint: %s", fgresq_last_error());
    fgresq_close(m);
    m = nullptr;
    const std::string text = read_text(bundle / "model.json");
    const std::string zeros(64, '0');
    write_text(b / "model.json", with_field(text, "checkpoint", "sha256", "\"" + zeros + "\""));
    CHECK_MSG(fgresq_open(b.string().c_str(), nullptr, &m) == FGRESQ_OK, "checkpoint sha256: %s", fgresq_last_error());
    fgresq_close(m);
    m = nullptr;
    write_text(b / "model.json", with_field(text, "encoder", "sha256", "\"" + zeros + "\""));
    EXPECT_STATUS(fgresq_open(b.string().c_str(), nullptr, &m), FGRESQ_CORRUPTED,
                  "encoder.onnx: sha256 mismatch (file is corrupted or was replaced; expected 000000000000");
    CHECK(m == nullptr);
    // verify = 0 skips the hash (the manifest is still validated).
    CHECK_MSG(fgresq_open(b.string().c_str(), &noverify_defaults(), &m) == FGRESQ_OK, "verify=0: %s",
              fgresq_last_error());
    fgresq_close(m);
    m = nullptr;
    fs::remove(b / "model.safetensors");
    EXPECT_STATUS(fgresq_open(b.string().c_str(), &noverify_defaults(), &m), FGRESQ_NOT_FOUND,
                  "model.safetensors: file listed in model.json as 'checkpoint' is missing");
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
