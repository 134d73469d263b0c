#include "bundle.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#if !defined(_WIN32)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "error.hpp"
#include "json.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;

namespace fgresq::detail {
namespace {

constexpr const char* kManifest = "model.json";
constexpr const char* kFormat = "fgresq-bundle";
constexpr int kVersion = 1;
constexpr int kMaxInputSize = 8192;
const char* const kRequiredRoles[] = {"encoder", "heads"};
constexpr const char* kEllipsis = "\xE2\x80\xA6";

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

// Python's str(Path(x)): no trailing separator (except for "/"), "." for an empty path. Control characters
// (a manifest path may hold a newline) are written as \xNN, so every message stays one line.
std::string display(const fs::path& p) {
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  if (s.empty()) return ".";
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

[[noreturn]] void corrupt(const std::string& msg) { throw Error(FGRESQ_CORRUPTED, msg); }

// ---------------------------------------------------------------- manifest values inside messages
// Messages quote manifest values the way the Python SDK does (repr() for paths, json.dumps() for
// format_version), with control characters always escaped so a message stays one line, and long values cut.

constexpr size_t kMaxShown = 200;

// Python's repr() of a str (ASCII control characters escaped; other bytes kept as they are).
std::string py_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  const size_t n = std::min(s.size(), kMaxShown);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\' || c == static_cast<unsigned char>(q)) {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  if (s.size() > n) out += kEllipsis;
  return out + q;
}

// A role name in a message: as written, control characters escaped.
std::string role_text(const std::string& role) {
  const std::string r = py_repr(role);
  return "'" + r.substr(1, r.size() - 2) + "'";
}

// Python's repr() of a float: shortest round-trip digits, exponent form below 1e-4 and from 1e16 on.
std::string py_float(double d) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  if (res.ec != std::errc()) return "?";
  const std::string sci(buf, res.ptr);  // -d.ddde+XX
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::atoi(sci.c_str() + e + 1);
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  } else if (exp < 0) {
    out = "0." + std::string(size_t(-exp - 1), '0') + digits;
  } else {
    if (digits.size() <= size_t(exp) + 1) digits += std::string(size_t(exp) + 1 - digits.size(), '0');
    out = digits.substr(0, size_t(exp) + 1) + "." + (digits.size() > size_t(exp) + 1 ? digits.substr(size_t(exp) + 1) : "0");
  }
  return neg ? "-" + out : out;
}

// Python's json.dumps() of a value (ensure_ascii: non-ASCII as \uXXXX), cut after kMaxShown characters.
void dumps(const Json& v, std::string& out) {
  if (out.size() > kMaxShown) return;
  switch (v.type) {
    case Json::Type::Null: out += "null"; return;
    case Json::Type::Bool: out += v.boolean ? "true" : "false"; return;
    case Json::Type::Number:
      if (v.integer) out += v.string == "-0" ? "0" : v.string;
      else out += py_float(v.number);
      return;
    case Json::Type::String: {
      out += '"';
      const std::string& s = v.string;
      for (size_t i = 0; i < s.size() && out.size() <= kMaxShown; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        char buf[16];
        if (c == '"' || c == '\\') {
          out += '\\';
          out += char(c);
        } else if (c == '\n') {
          out += "\\n";
        } else if (c == '\r') {
          out += "\\r";
        } else if (c == '\t') {
          out += "\\t";
        } else if (c == '\b') {
          out += "\\b";
        } else if (c == '\f') {
          out += "\\f";
        } else if (c < 0x20 || c == 0x7F) {
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else if (c < 0x80) {
          out += char(c);
        } else {  // UTF-8 sequence -> \uXXXX (surrogate pairs above the BMP)
          unsigned cp = 0;
          int more = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
          cp = c & (0x3F >> more);
          for (int k = 0; k < more && i + 1 < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[++i]) & 0x3F);
          if (cp >= 0x10000) {
            cp -= 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
          } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", cp);
          }
          out += buf;
        }
      }
      out += '"';
      return;
    }
    case Json::Type::Array:
      out += '[';
      for (size_t k = 0; k < v.array.size(); ++k) {
        if (k) out += ", ";
        dumps(v.array[k], out);
        if (out.size() > kMaxShown) return;
      }
      out += ']';
      return;
    case Json::Type::Object:
      out += '{';
      for (size_t k = 0; k < v.object.size(); ++k) {
        if (k) out += ", ";
        Json key;
        key.type = Json::Type::String;
        key.string = v.object[k].first;
        dumps(key, out);
        out += ": ";
        dumps(v.object[k].second, out);
        if (out.size() > kMaxShown) return;
      }
      out += '}';
      return;
  }
}

std::string json_text(const Json* v) {
  if (!v) return "null";  // Python: manifest.get("format_version") is None
  std::string out;
  dumps(*v, out);
  if (out.size() > kMaxShown) {
    out.resize(kMaxShown);
    out += kEllipsis;
  }
  return out;
}

// ---------------------------------------------------------------- the schema

// A manifest path must name a file below the bundle folder, spelled portably ('/' separators only).
void check_relative_path(const std::string& where, const Json* rel) {
  if (!rel || !rel->is_string() || rel->string.empty()) corrupt(where + " has no 'path' string");
  const std::string& p = rel->string;
  const bool drive = p.size() >= 2 && p[1] == ':' && ((p[0] >= 'A' && p[0] <= 'Z') || (p[0] >= 'a' && p[0] <= 'z'));
  if (p.find('\\') != std::string::npos || p.find('\0') != std::string::npos || p[0] == '/' || drive)
    corrupt(where + " path " + py_repr(p) + " is not a relative path inside the bundle");
  size_t start = 0;
  for (;;) {
    const size_t end = p.find('/', start);
    const std::string part = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part.empty() || part == "." || part == "..")
      corrupt(where + " path " + py_repr(p) + " leaves the bundle or has empty/'.'/'..' parts");
    if (end == std::string::npos) return;
    start = end + 1;
  }
}

bool is_sha256_hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

struct Entry {
  std::string role;
  std::string rel;     // validated relative path
  std::string sha256;  // 64 lowercase hex
};

// One "files" entry: its shape and its path's spelling (the filesystem is looked at later).
Entry check_entry(const std::string& role, const Json& e, const std::string& ms) {
  const std::string where = ms + ": file entry " + role_text(role);
  if (!e.is_object()) corrupt(where + " is not an object");
  check_relative_path(where, e.get("path"));
  const Json* sha = e.get("sha256");
  if (!sha || !sha->is_string() || !is_sha256_hex(sha->string))
    corrupt(where + " has no valid sha256 (64 lowercase hex digits)");
  if (const Json* b = e.get("bytes"); b && !(b->is_integer() && b->number >= 0))
    corrupt(where + " has a 'bytes' that is not a non-negative integer");
  return Entry{role, e.get("path")->string, sha->string};
}

void read_triple(const Json* v, float out[3], const std::string& ms, const char* key) {
  if (!v || v->is_null()) return;  // Python: pre.get(key) is None
  const std::string msg = ms + ": preprocess." + key + " must be a list of 3 numbers";
  if (!v->is_array() || v->array.size() != 3) corrupt(msg);
  for (int c = 0; c < 3; ++c)
    if (!v->array[c].is_number()) corrupt(msg);
  for (int c = 0; c < 3; ++c) {
    out[c] = static_cast<float>(v->array[c].number);
    if (!std::isfinite(out[c])) corrupt(msg + " (" + py_float(v->array[c].number) + " is out of float32 range)");
  }
}

// preprocess.<key>.size: [width, height], two positive integers (at most kMaxInputSize: UNSUPPORTED above).
void read_size_pair(const Json* v, const std::string& ms, const std::string& key, int out[2]) {
  bool ok = v && v->is_array() && v->array.size() == 2;
  for (size_t k = 0; ok && k < 2; ++k) ok = v->array[k].is_integer() && v->array[k].number >= 1;
  if (!ok) corrupt(ms + ": preprocess." + key + " must be [width, height], two positive integers (got " + json_text(v) + ")");
  for (size_t k = 0; k < 2; ++k)
    if (v->array[k].number > kMaxInputSize)
      throw Error(FGRESQ_UNSUPPORTED, ms + ": preprocess." + key + " " + json_text(v) +
                                          " is larger than this library supports (" + std::to_string(kMaxInputSize) + ")");
  out[0] = int(v->array[0].number);
  out[1] = int(v->array[1].number);
}

// preprocess.<key> = {"method": one of `known`, "size": [width, height]}: true with `method` (its index in
// `known`) and `size` set, false when the key is absent (or null).
bool read_step(const Json* pre, const char* key, const std::vector<const char*>& known, const std::string& ms,
               int& method, int size[2]) {
  const Json* step = pre->get(key);
  if (!step || step->is_null()) return false;
  const std::string k = key;
  if (!step->is_object())
    corrupt(ms + ": preprocess." + k + " must be an object {\"method\": ..., \"size\": [width, height]} (got " +
            json_text(step) + ")");
  const Json* m = step->get("method");
  if (!m || !m->is_string()) corrupt(ms + ": preprocess." + k + ".method must be a string (got " + json_text(m) + ")");
  method = -1;
  std::string names;
  for (size_t i = 0; i < known.size(); ++i) {
    if (m->string == known[i]) method = int(i);
    names += (i ? ", " : "") + std::string(known[i]);
  }
  if (method < 0)
    throw Error(FGRESQ_UNSUPPORTED, ms + ": preprocess." + k + ".method " + json_text(m) +
                                        " is unknown to this SDK (known: " + names + ")");
  read_size_pair(step->get("size"), ms, k + ".size", size);
  return true;
}

std::string pair_text(const int v[2]) { return "[" + std::to_string(v[0]) + ", " + std::to_string(v[1]) + "]"; }

// docs/preprocess-spec.md: resize (optional), crop (optional, needs a resize it fits in), size×size result.
void read_preprocess(const Json& pre, const std::string& ms, PreprocessSpec& spec) {
  int resize_method = 0, crop_method = 0, rsize[2] = {0, 0}, csize[2] = {0, 0};
  const bool resize = read_step(&pre, "resize", {"bilinear-antialias", "bilinear-cv2"}, ms, resize_method, rsize);
  const bool crop = read_step(&pre, "crop", {"center"}, ms, crop_method, csize);
  const int s = spec.size;
  const int want[2] = {s, s};
  if (!resize && !crop) {  // the legacy form: {"size": S, "interpolation": "bilinear", "antialias": true}
    spec.resize = ResizeMethod::BilinearAntialias;
    spec.resize_w = spec.resize_h = s;
    spec.crop = false;
    return;
  }
  if (!resize) corrupt(ms + ": preprocess.crop needs a preprocess.resize (the crop must fit inside the resized image)");
  spec.resize = resize_method == 1 ? ResizeMethod::BilinearCv2 : ResizeMethod::BilinearAntialias;
  spec.resize_w = rsize[0];
  spec.resize_h = rsize[1];
  spec.crop = crop;
  if (crop) {
    if (csize[0] > rsize[0] || csize[1] > rsize[1])
      corrupt(ms + ": preprocess.crop.size " + pair_text(csize) + " does not fit inside preprocess.resize.size " +
              pair_text(rsize));
    if (csize[0] != s || csize[1] != s)
      corrupt(ms + ": preprocess.crop.size " + pair_text(csize) + " must be " + pair_text(want) + " (preprocess.size)");
  } else if (rsize[0] != s || rsize[1] != s) {
    corrupt(ms + ": preprocess.resize.size " + pair_text(rsize) + " must be " + pair_text(want) +
            " (preprocess.size, when there is no crop)");
  }
}

// ---------------------------------------------------------------- the naturalness term

constexpr const char* kNaturalness = "naturalness";
constexpr const char* kNaturalnessMethod = "niqe-log-distance";

// fgresq_sdk.naturalness.validate_section, same order and wording ("upgrade fgresq", as the format check says
// for this library). Returns the term without its pristine model (read with the other files) and fills
// `role` with the pristine file's role. An unknown method string is UNSUPPORTED, like an unknown preprocess
// method: the bundle is newer than this library.
niqe::Term check_naturalness(const Json& m, const Json& sec, const std::string& ms, std::string& role) {
  const std::string n = kNaturalness;
  if (!sec.is_object()) corrupt(ms + ": '" + n + "' is not an object");
  const Json* method = sec.get("method");
  if (!method || !method->is_string() || method->string != kNaturalnessMethod)
    throw Error(method && method->is_string() ? FGRESQ_UNSUPPORTED : FGRESQ_CORRUPTED,
                ms + ": " + n + ".method must be '" + kNaturalnessMethod + "' (got " + json_text(method) +
                    "); upgrade fgresq if the bundle is newer");
  const Json* pristine = sec.get("pristine");
  if (!pristine || !pristine->is_string() || !m.get("files")->get(pristine->string))
    corrupt(ms + ": " + n + ".pristine must name a file listed in 'files' (got " + json_text(pristine) + ")");
  role = pristine->string;
  for (const char* key : {"weight", "scale", "offset"}) {
    const Json* v = sec.get(key);  // _finite: int or float, never a bool (JSON numbers here are finite)
    if (!v || !v->is_number() || !std::isfinite(v->number))
      corrupt(ms + ": " + n + "." + key + " must be a finite number");
  }
  niqe::Term term;
  term.weight = sec.get("weight")->number;
  term.scale = sec.get("scale")->number;
  term.offset = sec.get("offset")->number;
  if (term.weight < 0 || term.scale <= 0) corrupt(ms + ": " + n + " needs weight \xE2\x89\xA5 0 and scale > 0");
  return term;
}

// The preprocess mean/std as the JSON doubles (the term undoes the normalisation in float64, as
// luma_of_view does with the manifest's numbers); the defaults where the manifest has none.
void read_norm(const Json& pre, niqe::Term& term) {
  const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, stdv[3] = {0.26862954, 0.26130258, 0.27577711};
  for (int c = 0; c < 3; ++c) {
    term.mean[c] = mean[c];
    term.stdv[c] = stdv[c];
  }
  const Json* m = pre.get("mean");
  const Json* s = pre.get("std");
  for (size_t c = 0; c < 3; ++c) {  // read_triple validated both when present (3 numbers)
    if (m && m->is_array() && m->array.size() == 3) term.mean[c] = m->array[c].number;
    if (s && s->is_array() && s->array.size() == 3) term.stdv[c] = s->array[c].number;
  }
}

// ---------------------------------------------------------------- the files on disk

// `inner` (resolved) is `root` (resolved) or lies below it, component by component (os.path.commonpath).
bool within(const fs::path& root, const fs::path& inner) {
  auto f = inner.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++f) {
    if (r->empty()) continue;  // a trailing separator
    if (f == inner.end() || *f != *r) return false;
  }
  return true;
}

// Symlinks resolved, like os.path.realpath (not strict): a dangling symlink still shows where it points.
fs::path realpath(const fs::path& p) {
  std::error_code ec;
  fs::path real = fs::canonical(p, ec);
  if (!ec) return real;
  fs::path cur = p;
  for (int hops = 0; hops < 40; ++hops) {
    std::error_code e2;
    if (!fs::is_symlink(fs::symlink_status(cur, e2)) || e2) break;
    fs::path target = fs::read_symlink(cur, e2);
    if (e2) break;
    cur = target.is_absolute() ? target : cur.parent_path() / target;
  }
  real = fs::weakly_canonical(cur, ec);
  return ec ? fs::absolute(cur, ec).lexically_normal() : real;
}

std::string listed_as(const Entry& e) { return std::string(": file listed in ") + kManifest + " as " + role_text(e.role); }

// The resolved path of a listed file, checked like Bundle.path(): inside the bundle, then present.
fs::path resolve_entry(const Entry& e, const fs::path& root, const fs::path& real_root) {
  const fs::path p = root / e.rel;
  const std::string ps = display(p);
  const fs::path real = realpath(p);
  if (!within(real_root, real)) corrupt(ps + listed_as(e) + " resolves outside the bundle folder (refused)");
  if (!path_is_file(real)) throw Error(FGRESQ_NOT_FOUND, ps + listed_as(e) + " is missing");
  return real;
}

// Read a resolved bundle file once. The open descriptor itself is checked (a regular file, still inside
// the bundle), so the bytes returned are those of the file the checks were about.
std::vector<uint8_t> read_entry(const Entry& e, const fs::path& real, const fs::path& real_root, const std::string& ps) {
  std::vector<uint8_t> bytes;
#if !defined(_WIN32)
  // O_NOFOLLOW: `real` has no symlink left, so one swapped in since is refused.
  // O_NONBLOCK: a FIFO swapped in must not hang open(); fstat below refuses it.
  int fd;
  do {
    fd = ::open(real.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw Error(FGRESQ_NOT_FOUND, ps + ": cannot read (" + std::strerror(errno) + ")");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) throw Error(FGRESQ_NOT_FOUND, ps + listed_as(e) + " is missing");
#if defined(__linux__)
  {
    // A folder above the file could have been swapped for a symlink since realpath(): ask the kernel
    // where the open file really is.
    char link[4096];
    const std::string proc = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(proc.c_str(), link, sizeof link - 1);
    if (n > 0 && size_t(n) < sizeof link - 1 && link[0] == '/' &&  // else: no /proc, or too long to judge
        !within(real_root, fs::path(std::string(link, size_t(n)))))
      corrupt(ps + listed_as(e) + " resolves outside the bundle folder (refused)");
  }
#endif
  if (st.st_size > 0) bytes.reserve(size_t(st.st_size));
  uint8_t buf[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) corrupt(ps + ": cannot read (" + std::strerror(errno) + ")");
    if (got == 0) break;
    bytes.insert(bytes.end(), buf, buf + got);
  }
#else
  (void)real_root;
  std::ifstream f(real, std::ios::binary);
  if (!f) throw Error(FGRESQ_NOT_FOUND, ps + ": cannot read");
  bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (f.bad()) corrupt(ps + ": cannot read");
#endif
  return bytes;
}

}  // namespace

LoadedBundle load_bundle(const std::string& path, bool verify) {
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
    if (!f) throw Error(FGRESQ_NOT_FOUND, ms + ": cannot read");
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  }
  Json m;
  try {
    m = parse_json(text);
  } catch (const JsonError& e) {
    corrupt(ms + ": manifest is not valid JSON (" + e.what() + ")");
  }

  // ---- the manifest as a whole, in fgresq_sdk.bundle.validate_manifest's order (nothing on disk yet)
  const Json* fmt = m.get("format");
  if (!m.is_object() || !fmt || !fmt->is_string() || fmt->string != kFormat)
    corrupt(ms + ": not an fgresq model bundle manifest");
  const Json* version = m.get("format_version");
  if (!version || !version->is_integer())
    corrupt(ms + ": format_version must be an integer (got " + json_text(version) + ")");
  if (version->number > kVersion)
    throw Error(FGRESQ_UNSUPPORTED, ms + ": bundle format v" + json_text(version) + " is newer than this SDK supports (v" +
                                        std::to_string(kVersion) + "); upgrade fgresq");
  if (version->number != kVersion)
    corrupt(ms + ": unknown format_version " + json_text(version) + " (this SDK reads v" + std::to_string(kVersion) + ")");
  const Json* files = m.get("files");
  if (!files || !files->is_object()) corrupt(ms + ": manifest has no 'files' table");
  for (const char* role : kRequiredRoles)
    if (!files->get(role)) corrupt(ms + ": manifest lists no '" + role + "' file");
  std::vector<Entry> entries;
  for (const auto& [role, entry] : files->object) entries.push_back(check_entry(role, entry, ms));
  for (const char* key : {"config", "preprocess"}) {
    const Json* v = m.get(key);
    if (!v || !v->is_object()) corrupt(ms + ": manifest has no '" + key + "' object");
  }

  LoadedBundle out;
  BundleInfo& info = out.info;
  info.root = rs;
  const Json* pre = m.get("preprocess");
  if (const Json* s = pre->get("size")) {
    if (!s->is_integer() || s->number < 1) corrupt(ms + ": preprocess.size must be a positive integer");
    if (s->number > kMaxInputSize)
      throw Error(FGRESQ_UNSUPPORTED, ms + ": preprocess.size " + json_text(s) + " is larger than this library supports (" +
                                          std::to_string(kMaxInputSize) + ")");
    info.pre.size = int(s->number);
  }
  read_triple(pre->get("mean"), info.pre.mean, ms, "mean");
  read_triple(pre->get("std"), info.pre.stdv, ms, "std");
  for (int c = 0; c < 3; ++c)
    if (!(info.pre.stdv[c] > 0.0f)) corrupt(ms + ": preprocess.std must be positive");
  read_preprocess(*pre, ms, info.pre);
  const Json* precision = m.get("precision");
  if (precision && !precision->is_string()) corrupt(ms + ": precision must be a string");
  std::string pristine_role;  // the naturalness term's pristine file, when the bundle has the term
  if (const Json* nat = m.get(kNaturalness)) {
    info.naturalness = check_naturalness(m, *nat, ms, pristine_role);
    if (info.pre.size < niqe::kPatch)  // refused at load, not at the first image (as validate_section)
      corrupt(ms + ": naturalness needs a model input of at least " + std::to_string(niqe::kPatch) +
              " px (preprocess size " + std::to_string(info.pre.size) + ")");
    read_norm(*pre, *info.naturalness);
  }
  info.precision = precision ? precision->string : "fp32";
  const Json* cfg = m.get("config");
  if (const Json* n = m.get("name"); n && n->is_string()) info.name = n->string;
  else if (const Json* cn = cfg->get("name"); cn && cn->is_string()) info.name = cn->string;
  else info.name = "?";
  // Informational (a cross-check against heads.npz); only a plausible integer is used.
  if (const Json* fd = m.get("feature_dim"); fd && fd->is_integer() && fd->number >= 1 && fd->number <= (1 << 24))
    info.feature_dim = int(fd->number);
  if (const Json* vc = cfg->get("vision_cfg"); vc && vc->is_object())
    if (const Json* kind = vc->get("kind"); kind && kind->is_string()) info.conv_stats = kind->string == "conv-stats";

  // ---- the files: every listed one present inside the bundle; only the two this library uses are read
  std::error_code ec;
  const fs::path real_root = fs::canonical(root, ec);
  if (ec) throw Error(FGRESQ_NOT_FOUND, rs + ": cannot resolve the bundle folder (" + ec.message() + ")");
  std::vector<fs::path> reals;
  for (const Entry& e : entries) reals.push_back(resolve_entry(e, root, real_root));
  std::vector<uint8_t> pristine_bytes;
  std::string pristine_path;
  for (size_t k = 0; k < entries.size(); ++k) {
    const Entry& e = entries[k];
    const bool pristine = !pristine_role.empty() && e.role == pristine_role;
    std::vector<uint8_t>* dst = e.role == "encoder" ? &out.encoder_bytes
                                : e.role == "heads" ? &out.heads_bytes
                                : pristine          ? &pristine_bytes
                                                    : nullptr;
    if (!dst) continue;  // checkpoint, compare_head, engine...: never opened here, so neither read nor hashed
    const std::string ps = display(root / e.rel);
    *dst = read_entry(e, reals[k], real_root, ps);
    if (verify) {
      const std::string digest = sha256_hex(dst->data(), dst->size());
      if (digest != e.sha256)
        corrupt(ps + ": sha256 mismatch (file is corrupted or was replaced; expected " + e.sha256.substr(0, 12) +
                kEllipsis + ", got " + digest.substr(0, 12) + kEllipsis + ")");
    }
    if (e.role == "encoder") info.encoder_path = ps;
    else if (e.role == "heads") info.heads_path = ps;
    if (pristine) pristine_path = ps;
  }
  if (info.naturalness) {
    // A section naming the encoder or the heads as its pristine file gets those bytes (and refuses them).
    const std::vector<uint8_t>& bytes = pristine_role == "encoder" ? out.encoder_bytes
                                        : pristine_role == "heads" ? out.heads_bytes
                                                                   : pristine_bytes;
    niqe::Term& term = *info.naturalness;
    term.pristine_path = pristine_role == "encoder" ? info.encoder_path
                         : pristine_role == "heads" ? info.heads_path
                                                    : pristine_path;
    term.pristine = niqe::parse_pristine(bytes.data(), bytes.size(), term.pristine_path);
  }
  return out;
}

}  // namespace fgresq::detail
