// fgresq-cli: score, compare and rank images with an FGResQ bundle from C++ (example of the C API).
//
//   fgresq-cli score FILES... --model BUNDLE [--format json|csv] [--batch-size N] [--threads N]
//   fgresq-cli compare A B --model BUNDLE [--raw] [--format json|csv]
//   fgresq-cli rank DIR --model BUNDLE [--recursive] [--group-by none|parent] [--top K] [--format json|csv]
//   fgresq-cli info --model BUNDLE
//
// Output follows the Python CLI (`fgresq-sdk ... --format json`): the same keys, paths printed the same
// way, machine-readable output on stdout, one "error: PATH: reason" line per failed input on stderr.
// Exit codes: 0 all inputs succeeded, 1 some inputs failed, 2 usage error or unusable model.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fgresq.h"
#include "image_io.hpp"

namespace {

constexpr size_t kMaxRankGroup = 8192;
const std::set<std::string> kImageSuffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif",
                                              ".tiff", ".gif", ".ppm", ".pgm"};

// ---- printing -------------------------------------------------------------------------------------------

// Python's bytes.decode("utf-8", "backslashreplace"): invalid bytes become \xNN.
std::string display(const std::string& raw) {
  std::string out;
  const auto* s = reinterpret_cast<const unsigned char*>(raw.data());
  const size_t n = raw.size();
  for (size_t i = 0; i < n;) {
    unsigned c = s[i];
    size_t len = 0;
    unsigned cp = 0, min = 0;
    if (c < 0x80) len = 1, cp = c;
    else if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07, min = 0x10000;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) ok = false;
      else cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (ok && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (ok) {
      out.append(raw, i, len);
      i += len;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
      ++i;
    }
  }
  return out;
}

// Control characters escaped so that one message stays on one line (output.one_line).
std::string one_line(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

// Python's repr(float): shortest round-trip digits, exponent form below 1e-4 and from 1e16.
std::string py_float(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char ch : mant)
    if (ch != '.') digits += ch;
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  } else if (exp < 0) {
    out = "0." + std::string(size_t(-exp - 1), '0') + digits;
  } else {
    const size_t point = size_t(exp) + 1;
    if (digits.size() <= point) out = digits + std::string(point - digits.size(), '0') + ".0";
    else out = digits.substr(0, point) + "." + digits.substr(point);
  }
  return neg ? "-" + out : out;
}

// json.dumps(..., ensure_ascii=True) string literal.
std::string json_str(const std::string& s) {
  std::string out = "\"";
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    unsigned c = p[i];
    unsigned cp = c;
    size_t len = 1;
    if (c >= 0xF0) len = 4, cp = c & 0x07;
    else if (c >= 0xE0) len = 3, cp = c & 0x0F;
    else if (c >= 0xC0) len = 2, cp = c & 0x1F;
    if (i + len > s.size()) len = 1, cp = c;  // cannot happen for display() output
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[i + k] & 0x3F);
    i += len;
    char buf[16];
    switch (cp) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (cp >= 0x20 && cp < 0x7f) {
      out += char(cp);
    } else if (cp >= 0x10000) {
      cp -= 0x10000;
      std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      out += buf;
    } else {
      std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      out += buf;
    }
  }
  return out + "\"";
}

// A JSON value rendered like json.dumps(indent=2).
struct J {
  enum Kind { Str, Num, Int, Arr, Obj, Null } kind = Obj;
  std::string s;
  double d = 0;
  long long i = 0;
  std::vector<J> arr;
  std::vector<std::pair<std::string, J>> obj;
  static J str(const std::string& v) { J j; j.kind = Str; j.s = v; return j; }
  static J num(double v) { J j; j.kind = Num; j.d = v; return j; }
  static J integer(long long v) { J j; j.kind = Int; j.i = v; return j; }
  static J array() { J j; j.kind = Arr; return j; }
  static J object() { return J(); }
  static J null() { J j; j.kind = Null; return j; }
  static J num_or_null(double v) { return std::isnan(v) ? null() : num(v); }  // json.dumps(None) for a missing value
  J& add(const std::string& k, J v) { obj.emplace_back(k, std::move(v)); return *this; }
  void render(std::string& out, int indent) const {
    const std::string pad(size_t(indent + 2), ' '), close(size_t(indent), ' ');
    switch (kind) {
      case Str: out += json_str(s); return;
      case Num: out += py_float(d); return;
      case Int: out += std::to_string(i); return;
      case Null: out += "null"; return;
      case Arr:
        if (arr.empty()) { out += "[]"; return; }
        out += "[\n";
        for (size_t k = 0; k < arr.size(); ++k) {
          out += pad;
          arr[k].render(out, indent + 2);
          out += k + 1 < arr.size() ? ",\n" : "\n";
        }
        out += close + "]";
        return;
      case Obj:
        if (obj.empty()) { out += "{}"; return; }
        out += "{\n";
        for (size_t k = 0; k < obj.size(); ++k) {
          out += pad + json_str(obj[k].first) + ": ";
          obj[k].second.render(out, indent + 2);
          out += k + 1 < obj.size() ? ",\n" : "\n";
        }
        out += close + "}";
        return;
    }
  }
};

void emit_json(const J& j) {
  std::string out;
  j.render(out, 0);
  out += "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

// csv.writer: quote fields holding a comma, quote or line break; floats with 6 decimals, a missing value (NaN)
// as an empty field (output.emit_csv).
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}
std::string csv_float(double v) {
  if (std::isnan(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", v);
  return buf;
}
void emit_csv(const std::vector<std::vector<std::string>>& rows) {
  for (const auto& row : rows) {
    std::string line;
    for (size_t k = 0; k < row.size(); ++k) line += (k ? "," : "") + csv_field(row[k]);
    line += "\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
  }
  std::fflush(stdout);
}

struct InputError {
  std::string path, error;
};

void report_errors(const std::vector<InputError>& errors) {
  for (const auto& e : errors) std::fprintf(stderr, "error: %s: %s\n", one_line(e.path).c_str(), one_line(e.error).c_str());
}

J errors_json(const std::vector<InputError>& errors) {
  J arr = J::array();
  for (const auto& e : errors) arr.arr.push_back(J::object().add("path", J::str(e.path)).add("error", J::str(e.error)));
  return arr;
}

[[noreturn]] void fail(const std::string& msg, int code = 2) {
  std::fprintf(stderr, "error: %s\n", one_line(msg).c_str());
  std::exit(code);
}

// ---- paths and folder walking (as fgresq_sdk.scorer.collect_images) ---------------------------------------

// str(pathlib.Path(p)): no empty or "." components, no trailing slash; "." for nothing.
std::string path_norm(const std::string& p) {
  if (p.empty()) return ".";
  const bool abs = p[0] == '/';
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    std::string part = p.substr(i, j - i);
    if (!part.empty() && part != ".") parts.push_back(part);
    i = j + 1;
  }
  std::string out = abs ? "/" : "";
  for (size_t k = 0; k < parts.size(); ++k) out += (k ? "/" : "") + parts[k];
  return out.empty() ? "." : out;
}

std::string path_join(const std::string& dir, const std::string& name) {
  if (dir == ".") return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

std::string parent_of(const std::string& p) {
  size_t k = p.rfind('/');
  if (k == std::string::npos) return ".";
  return k == 0 ? "/" : p.substr(0, k);
}

bool is_image_name(const std::string& name) {
  size_t dot = name.rfind('.');
  if (dot == std::string::npos || dot == 0) return false;
  std::string suf = name.substr(dot);
  for (char& c : suf) c = char(std::tolower(static_cast<unsigned char>(c)));
  return kImageSuffixes.count(suf) > 0;
}

struct Walk {
  bool recursive;
  std::vector<std::string> files;
  std::vector<InputError> problems;
  std::set<std::pair<dev_t, ino_t>> seen;

  void walk(const std::string& d, std::set<std::pair<dev_t, ino_t>> ancestors) {
    struct stat st;
    if (::stat(d.c_str(), &st) != 0) {
      problems.push_back({display(d), std::string("cannot read directory (") + std::strerror(errno) + ")"});
      return;
    }
    const auto key = std::make_pair(st.st_dev, st.st_ino);
    if (seen.count(key)) {
      problems.push_back({display(d), std::string(ancestors.count(key) ? "symlink loop" : "same folder as one already visited") +
                                          ", skipped"});
      return;
    }
    seen.insert(key);
    DIR* dir = ::opendir(d.c_str());
    if (!dir) {
      problems.push_back({display(d), std::string("cannot list directory (") + std::strerror(errno) + ")"});
      return;
    }
    std::vector<std::string> names;
    while (dirent* e = ::readdir(dir)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(dir);
    std::sort(names.begin(), names.end());  // byte order, like sorting by os.fsencode(name)
    ancestors.insert(key);
    for (const auto& n : names) {
      const std::string p = path_join(d, n);
      struct stat target, link;
      const bool resolves = ::stat(p.c_str(), &target) == 0;
      if (resolves && S_ISDIR(target.st_mode)) {
        if (recursive) walk(p, ancestors);
      } else if (is_image_name(n)) {
        if (!resolves && ::lstat(p.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
          problems.push_back({display(p), "broken symlink"});
          continue;
        }
        files.push_back(p);
      }
    }
  }
};

// ---- options ----------------------------------------------------------------------------------------------

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::string model;
  std::string format = "json";
  std::string group_by = "none";
  int batch_size = 16;
  int threads = 0;
  int top = 0;
  bool recursive = false;
  bool raw = false;
};

[[noreturn]] void usage(const std::string& why = "") {
  if (!why.empty()) std::fprintf(stderr, "error: %s\n", why.c_str());
  std::fprintf(stderr,
               "usage: fgresq-cli score FILES... --model BUNDLE [--format json|csv] [--batch-size N] [--threads N]\n"
               "       fgresq-cli compare A B --model BUNDLE [--raw] [--format json|csv]\n"
               "       fgresq-cli rank DIR --model BUNDLE [--recursive] [--group-by none|parent] [--top K]\n"
               "                  [--format json|csv] [--batch-size N] [--threads N]\n"
               "       fgresq-cli info --model BUNDLE\n");
  std::exit(2);
}

int to_int(const std::string& opt, const std::string& v, int min) {
  int x = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), x);
  if (r.ec != std::errc() || r.ptr != v.data() + v.size() || x < min)
    usage("invalid value for " + opt + ": '" + v + "' (an integer >= " + std::to_string(min) + ")");
  return x;
}

Args parse_args(int argc, char** argv) {
  if (argc < 2) usage();
  Args a;
  a.command = argv[1];
  if (a.command == "-h" || a.command == "--help") usage();
  bool only_positional = false;
  for (int i = 2; i < argc; ++i) {
    std::string s = argv[i];
    if (only_positional || s.empty() || s[0] != '-' || s == "-") {
      a.positional.push_back(s);
      continue;
    }
    if (s == "--") {
      only_positional = true;
      continue;
    }
    std::string value;
    bool has_value = false;
    if (size_t eq = s.find('='); s.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = s.substr(eq + 1);
      s = s.substr(0, eq);
      has_value = true;
    }
    auto next = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) usage("option " + s + " needs a value");
      return argv[++i];
    };
    if (s == "--model" || s == "-m") a.model = next();
    else if (s == "--format" || s == "-f") a.format = next();
    else if (s == "--batch-size" || s == "-b") a.batch_size = to_int(s, next(), 1);
    else if (s == "--threads") a.threads = to_int(s, next(), 0);
    else if (s == "--top") a.top = to_int(s, next(), 1);
    else if (s == "--group-by") a.group_by = next();
    else if (s == "--recursive" || s == "-r") a.recursive = true;
    else if (s == "--raw" && a.command == "compare" && !has_value) a.raw = true;
    else if (s == "--help" || s == "-h") usage();
    else usage("no such option: " + s);
  }
  if (a.format != "json" && a.format != "csv") usage("--format must be json or csv");
  if (a.group_by != "none" && a.group_by != "parent") usage("--group-by must be none or parent");
  if (a.model.empty()) usage("--model BUNDLE is required (this example has no embedded model)");
  return a;
}

fgresq_model* open_model(const Args& a) {
  fgresq_options o;
  fgresq_options_init(&o);
  o.batch_size = a.batch_size;
  o.threads = a.threads;
  fgresq_model* m = nullptr;
  if (fgresq_open(a.model.c_str(), &o, &m) != FGRESQ_OK) fail(fgresq_last_error());
  return m;
}

struct Encoded {
  size_t index;
  float score;
  std::vector<float> features;
};

// Decode and encode paths batch by batch (one batch of pixels alive at a time); failures become errors.
std::vector<Encoded> encode_paths(fgresq_model* m, const std::vector<std::string>& paths, size_t batch,
                                  std::vector<InputError>& errors) {
  const size_t f = size_t(fgresq_feature_size(m));
  std::vector<Encoded> ok;
  std::vector<DecodedImage> decoded;
  std::vector<size_t> idx;
  auto flush = [&] {
    if (decoded.empty()) return;
    std::vector<fgresq_image> imgs;
    for (const auto& d : decoded) imgs.push_back(fgresq_image{d.pixels.data(), d.width, d.height, 0, d.channels});
    std::vector<float> feats(imgs.size() * f), scores(imgs.size());
    if (fgresq_encode(m, imgs.data(), imgs.size(), feats.data(), scores.data()) != FGRESQ_OK)
      fail(fgresq_last_error());
    for (size_t k = 0; k < imgs.size(); ++k)
      ok.push_back(Encoded{idx[k], scores[k], std::vector<float>(feats.begin() + long(k * f), feats.begin() + long((k + 1) * f))});
    decoded.clear();
    idx.clear();
  };
  for (size_t i = 0; i < paths.size(); ++i) {
    DecodedImage img;
    std::string why;
    if (decode_image_file(paths[i], img, why)) {
      decoded.push_back(std::move(img));
      idx.push_back(i);
      if (decoded.size() == batch) flush();
    } else {
      flush();  // keep results in input order
      errors.push_back({display(paths[i]), why});
    }
  }
  flush();
  std::sort(ok.begin(), ok.end(), [](const Encoded& x, const Encoded& y) { return x.index < y.index; });
  return ok;
}

// ---- commands ---------------------------------------------------------------------------------------------

int cmd_score(const Args& a) {
  if (a.positional.empty()) usage("score needs at least one image");
  fgresq_model* m = open_model(a);
  std::vector<InputError> errors;
  auto ok = encode_paths(m, a.positional, size_t(a.batch_size), errors);
  if (a.format == "json") {
    J results = J::array();
    for (const auto& e : ok)
      results.arr.push_back(J::object().add("path", J::str(display(a.positional[e.index]))).add("score", J::num(e.score)));
    emit_json(J::object().add("results", results).add("errors", errors_json(errors)));
  } else {
    std::vector<std::vector<std::string>> rows = {{"path", "score"}};
    for (const auto& e : ok) rows.push_back({display(a.positional[e.index]), csv_float(e.score)});
    emit_csv(rows);
  }
  report_errors(errors);
  fgresq_close(m);
  return errors.empty() ? 0 : 1;
}

int cmd_compare(const Args& a) {
  if (a.positional.size() != 2) usage("compare needs exactly two images");
  fgresq_model* m = open_model(a);
  DecodedImage img[2];
  for (int k = 0; k < 2; ++k) {
    std::string why;
    if (!decode_image_file(a.positional[size_t(k)], img[k], why)) {
      report_errors({{display(a.positional[size_t(k)]), why}});
      return 1;
    }
  }
  fgresq_image x{img[0].pixels.data(), img[0].width, img[0].height, 0, img[0].channels};
  fgresq_image y{img[1].pixels.data(), img[1].width, img[1].height, 0, img[1].channels};
  // Default: both orders averaged (swapping the images swaps the answer); --raw: the head on (A, B) only,
  // exactly as the authors' predict_pair (the Python CLI's `compare --raw`).
  double p[3];
  if ((a.raw ? fgresq_compare_raw(m, &x, &y, p) : fgresq_compare(m, &x, &y, p)) != FGRESQ_OK)
    fail(fgresq_last_error());
  static const char* verdicts[3] = {"first", "second", "similar"};
  // fgresq_sdk.verdict: "similar" when it is the most likely outcome or neither image is preferred by 0.02.
  const int best = (p[2] >= std::max(p[0], p[1]) || std::fabs(p[0] - p[1]) < 0.02) ? 2 : p[0] > p[1] ? 0 : 1;
  const std::string pa = display(a.positional[0]), pb = display(a.positional[1]);
  if (a.format == "json") {
    emit_json(J::object().add("a", J::str(pa)).add("b", J::str(pb)).add("p_first_better", J::num(p[0]))
                  .add("p_second_better", J::num(p[1])).add("p_similar", J::num(p[2])).add("verdict", J::str(verdicts[best])));
  } else {
    emit_csv({{"a", "b", "p_first_better", "p_second_better", "p_similar", "verdict"},
              {pa, pb, csv_float(p[0]), csv_float(p[1]), csv_float(p[2]), verdicts[best]}});
  }
  fgresq_close(m);
  return 0;
}

int cmd_rank(const Args& a) {
  if (a.positional.size() != 1) usage("rank needs exactly one folder");
  const std::string root = path_norm(a.positional[0]);
  struct stat st;
  if (::stat(root.c_str(), &st) != 0) fail(display(root) + ": no such directory");
  if (!S_ISDIR(st.st_mode)) fail(display(root) + ": not a directory");
  const bool recursive = a.recursive || a.group_by == "parent";
  Walk w{recursive, {}, {}, {}};
  w.walk(root, {});
  std::vector<InputError> errors = w.problems;
  auto emit = [&](const J& groups, const std::vector<std::vector<std::string>>& rows) {
    if (a.format == "json") emit_json(J::object().add("groups", groups).add("errors", errors_json(errors)));
    else emit_csv(rows);
    report_errors(errors);
  };
  std::vector<std::vector<std::string>> rows = {{"group", "rank", "path", "score", "win_rate", "tier"}};
  if (w.files.empty()) {
    errors.push_back({display(root), std::string("no images found") + (recursive ? "" : " (try --recursive)")});
    emit(J::array(), rows);
    return 1;
  }
  // Groups in order of first appearance: the whole folder, or one per parent folder (relative to root).
  std::vector<std::pair<std::string, std::vector<size_t>>> groups;
  std::map<std::string, size_t> where;
  for (size_t i = 0; i < w.files.size(); ++i) {
    std::string key = display(root);
    if (a.group_by == "parent") {
      std::string parent = parent_of(w.files[i]);
      key = parent == root ? "." : display(parent.substr(root == "." ? 0 : root.size() + (root == "/" ? 0 : 1)));
    }
    auto it = where.find(key);
    if (it == where.end()) {
      where[key] = groups.size();
      groups.push_back({key, {}});
      it = where.find(key);
    }
    groups[it->second].second.push_back(i);
  }
  for (const auto& g : groups)
    if (g.second.size() > kMaxRankGroup)
      fail("group " + g.first + " has " + std::to_string(g.second.size()) + " images; all-pairs ranking is limited to " +
           std::to_string(kMaxRankGroup) + " per group (use --group-by parent, or `score` for plain scores)");
  fgresq_model* m = open_model(a);
  auto ok = encode_paths(m, w.files, size_t(a.batch_size), errors);
  std::map<size_t, const Encoded*> by_index;
  for (const auto& e : ok) by_index[e.index] = &e;
  const size_t f = size_t(fgresq_feature_size(m));
  J out_groups = J::array();
  for (const auto& g : groups) {
    std::vector<const Encoded*> encs;
    for (size_t i : g.second)
      if (by_index.count(i)) encs.push_back(by_index[i]);
    if (encs.empty()) continue;
    const size_t n = encs.size();
    std::vector<float> feats(n * f), scores(n);
    for (size_t k = 0; k < n; ++k) {
      std::copy(encs[k]->features.begin(), encs[k]->features.end(), feats.begin() + long(k * f));
      scores[k] = encs[k]->score;
    }
    std::vector<int32_t> order(n), tier(n);
    std::vector<double> win(n), strength(n);
    if (fgresq_rank_features(m, feats.data(), scores.data(), n, order.data(), win.data(), tier.data(),
                             strength.data()) != FGRESQ_OK)
      fail(fgresq_last_error());
    J ranking = J::array();
    const size_t shown = a.top > 0 ? std::min(n, size_t(a.top)) : n;
    for (size_t pos = 0; pos < shown; ++pos) {
      const size_t k = size_t(order[pos]);
      const std::string path = display(w.files[encs[k]->index]);
      ranking.arr.push_back(J::object().add("rank", J::integer(static_cast<long long>(pos + 1))).add("path", J::str(path))
                                .add("score", J::num(scores[k])).add("win_rate", J::num_or_null(win[k]))
                                .add("strength", J::num(strength[k])).add("tier", J::integer(tier[k])));
      rows.push_back({g.first, std::to_string(pos + 1), path, csv_float(scores[k]), csv_float(win[k]), std::to_string(tier[k])});
    }
    out_groups.arr.push_back(J::object().add("name", J::str(g.first)).add("ranking", ranking));
  }
  emit(out_groups, rows);
  fgresq_close(m);
  return errors.empty() ? 0 : 1;
}

int cmd_info(const Args& a) {
  fgresq_model* m = open_model(a);
  emit_json(J::object().add("fgresq", J::str(fgresq_version())).add("model", J::str(fgresq_model_name(m)))
                .add("input_size", J::integer(fgresq_input_size(m))).add("feature_size", J::integer(fgresq_feature_size(m)))
                .add("tensorrt", J::str(fgresq_backend_available(FGRESQ_BACKEND_TENSORRT) ? "available" : "not built")));
  fgresq_close(m);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  if (a.command == "score") return cmd_score(a);
  if (a.command == "compare") return cmd_compare(a);
  if (a.command == "rank") return cmd_rank(a);
  if (a.command == "info") return cmd_info(a);
  usage("unknown command '" + a.command + "'");
}
