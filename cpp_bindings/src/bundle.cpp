#include "bundle.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "error.hpp"
#include "json.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;

namespace fgresq::detail {
namespace {

constexpr const char* kManifest = "model.json";
constexpr const char* kFormat = "fgresq-bundle";
constexpr int kVersion = 1;
const char* const kRequiredRoles[] = {"encoder", "heads"};

bool path_is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}
bool path_is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}
bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// Python's str(Path(x)): no trailing separator (except for "/"), "." for an empty path.
std::string display(const fs::path& p) {
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s.empty() ? "." : s;
}

void read_triple(const Json* v, float out[3], const std::string& where, const char* key) {
  if (!v) return;
  if (!v->is_array() || v->array.size() != 3)
    throw Error(FGRESQ_CORRUPTED, where + ": preprocess '" + key + "' must be a list of 3 numbers");
  for (int c = 0; c < 3; ++c) {
    if (!v->array[c].is_number())
      throw Error(FGRESQ_CORRUPTED, where + ": preprocess '" + key + "' must be a list of 3 numbers");
    out[c] = static_cast<float>(v->array[c].number);
  }
}

}  // namespace

BundleInfo load_bundle(const std::string& path, bool verify) {
  fs::path root(path);
  if (path_is_file(root) && root.filename() == kManifest) root = root.parent_path().empty() ? fs::path(".") : root.parent_path();
  const std::string rs = display(root);
  if (!path_exists(root)) throw Error(FGRESQ_NOT_FOUND, rs + ": model bundle not found");
  if (!path_is_dir(root))
    throw Error(FGRESQ_INVALID_ARGUMENT,
                rs + ": not a model bundle folder (pass the folder that holds " + kManifest + ")");
  const fs::path mpath = root / kManifest;
  const std::string ms = display(mpath);
  if (!path_is_file(mpath)) throw Error(FGRESQ_NOT_FOUND, rs + ": not a model bundle (" + kManifest + " missing)");
  std::string text;
  {
    std::ifstream f(mpath, std::ios::binary);
    if (!f) throw Error(FGRESQ_NOT_FOUND, ms + ": cannot open");
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  }
  Json m;
  try {
    m = parse_json(text);
  } catch (const JsonError& e) {
    throw Error(FGRESQ_CORRUPTED, ms + ": manifest is not valid JSON (" + e.what() + ")");
  }
  const Json* fmt = m.get("format");
  if (!m.is_object() || !fmt || !fmt->is_string() || fmt->string != kFormat)
    throw Error(FGRESQ_CORRUPTED, ms + ": not an fgresq model bundle manifest");
  if (const Json* v = m.get("format_version")) {
    if (v->is_number() && v->number > kVersion) {
      std::ostringstream msg;
      msg << ms << ": bundle format v" << v->number << " is newer than this library supports (v" << kVersion
          << "); upgrade fgresq";
      throw Error(FGRESQ_UNSUPPORTED, msg.str());
    }
  }
  const Json* files = m.get("files");
  if (!files || !files->is_object()) throw Error(FGRESQ_CORRUPTED, ms + ": manifest has no 'files' table");
  for (const char* role : kRequiredRoles)
    if (!files->get(role)) throw Error(FGRESQ_CORRUPTED, ms + ": manifest lists no '" + role + "' file");
  for (const char* key : {"config", "preprocess"})
    if (!m.get(key)) throw Error(FGRESQ_CORRUPTED, ms + ": manifest has no '" + key + "'");

  BundleInfo info;
  info.root = rs;
  for (const auto& [role, entry] : files->object) {
    const Json* rel = entry.get("path");
    if (!rel || !rel->is_string())
      throw Error(FGRESQ_CORRUPTED, ms + ": file entry '" + role + "' has no 'path'");
    const fs::path p = root / rel->string;
    const std::string ps = display(p);
    if (!path_is_file(p))
      throw Error(FGRESQ_NOT_FOUND, ps + ": file listed in " + kManifest + " as '" + role + "' is missing");
    if (verify) {
      const Json* want = entry.get("sha256");
      const std::string expected = want && want->is_string() ? want->string : "None";
      const std::string digest = sha256_file(p.string());
      if (digest != expected)
        throw Error(FGRESQ_CORRUPTED, ps + ": sha256 mismatch (file is corrupted or was replaced; expected " +
                                          expected.substr(0, 12) + "\xE2\x80\xA6, got " + digest.substr(0, 12) +
                                          "\xE2\x80\xA6)");
    }
    if (role == "encoder") info.encoder_path = p.string();
    else if (role == "heads") info.heads_path = p.string();
    else if (role == "compare_head") info.compare_head_path = p.string();
    // "checkpoint" (safetensors) is only for the torch backend and re-export: verified, never loaded.
  }

  const Json* cfg = m.get("config");
  if (const Json* n = m.get("name"); n && n->is_string()) info.name = n->string;
  else if (const Json* cn = cfg->get("name"); cn && cn->is_string()) info.name = cn->string;
  else info.name = "?";
  if (const Json* p = m.get("precision"); p && p->is_string()) info.precision = p->string;
  else info.precision = "fp32";
  if (const Json* fd = m.get("feature_dim"); fd && fd->is_number()) info.feature_dim = int(fd->number);

  const Json* pre = m.get("preprocess");
  if (!pre->is_object()) throw Error(FGRESQ_CORRUPTED, ms + ": 'preprocess' must be an object");
  if (const Json* s = pre->get("size")) {
    if (!s->is_number() || s->number < 1 || s->number > 8192 || s->number != double(int(s->number)))
      throw Error(FGRESQ_CORRUPTED, ms + ": preprocess 'size' must be a positive integer");
    info.input_size = int(s->number);
  }
  read_triple(pre->get("mean"), info.mean, ms, "mean");
  read_triple(pre->get("std"), info.stdv, ms, "std");
  for (int c = 0; c < 3; ++c)
    if (!(info.stdv[c] != 0.0f)) throw Error(FGRESQ_CORRUPTED, ms + ": preprocess 'std' has a zero entry");
  return info;
}

}  // namespace fgresq::detail
