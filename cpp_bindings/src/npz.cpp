#include "npz.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "error.hpp"

namespace fgresq::detail {
namespace {

uint16_t u16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
uint32_t u32(const uint8_t* p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24); }
uint64_t u64(const uint8_t* p) { return uint64_t(u32(p)) | (uint64_t(u32(p + 4)) << 32); }

[[noreturn]] void corrupt(const std::string& where, const std::string& what) {
  throw Error(FGRESQ_CORRUPTED, where + ": " + what);
}
[[noreturn]] void unsupported(const std::string& where, const std::string& what) {
  throw Error(FGRESQ_UNSUPPORTED, where + ": " + what);
}

// Value of `key` in a numpy header dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3, 8), }
std::string header_field(const std::string& h, const std::string& key, const std::string& where) {
  std::string pat = "'" + key + "'";
  size_t k = h.find(pat);
  if (k == std::string::npos) corrupt(where, "npy header has no '" + key + "'");
  k = h.find(':', k + pat.size());
  if (k == std::string::npos) corrupt(where, "malformed npy header");
  ++k;
  while (k < h.size() && h[k] == ' ') ++k;
  if (k >= h.size()) corrupt(where, "malformed npy header");
  size_t end;
  if (h[k] == '\'') {
    end = h.find('\'', k + 1);
    if (end == std::string::npos) corrupt(where, "malformed npy header");
    return h.substr(k + 1, end - k - 1);
  }
  if (h[k] == '(') {
    end = h.find(')', k);
    if (end == std::string::npos) corrupt(where, "malformed npy header");
    return h.substr(k, end - k + 1);
  }
  end = h.find_first_of(",}", k);
  if (end == std::string::npos) corrupt(where, "malformed npy header");
  return h.substr(k, end - k);
}

uint32_t crc_table_entry(uint32_t c) {
  for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
  return c;
}

}  // namespace

uint32_t crc32(const uint8_t* p, size_t n) {
  static uint32_t table[256];
  static const bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) table[i] = crc_table_entry(i);
    return true;
  }();
  (void)init;
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

NpyArray parse_npy(const uint8_t* p, size_t n, const std::string& where) {
  static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (n < 10 || std::memcmp(p, magic, 6) != 0) corrupt(where, "not a .npy array (bad magic)");
  int major = p[6];
  size_t hlen, hstart;
  if (major == 1) {
    hlen = u16(p + 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) corrupt(where, "truncated .npy header");
    hlen = u32(p + 8);
    hstart = 12;
  } else {
    unsupported(where, ".npy format version " + std::to_string(major) + " is not supported (1, 2 or 3)");
  }
  if (hstart + hlen > n) corrupt(where, "truncated .npy header");
  std::string h(reinterpret_cast<const char*>(p + hstart), hlen);
  std::string descr = header_field(h, "descr", where);
  if (descr != "<f4")
    unsupported(where, "dtype '" + descr + "' is not supported (expected little-endian float32 '<f4')");
  std::string fortran = header_field(h, "fortran_order", where);
  if (fortran != "False") unsupported(where, "Fortran-ordered arrays are not supported");
  std::string shape_s = header_field(h, "shape", where);
  NpyArray a;
  uint64_t count = 1;
  for (size_t k = 1; k + 1 < shape_s.size();) {
    while (k < shape_s.size() && (shape_s[k] == ' ' || shape_s[k] == ',')) ++k;
    if (k + 1 >= shape_s.size()) break;
    if (shape_s[k] < '0' || shape_s[k] > '9') corrupt(where, "malformed shape " + shape_s);
    uint64_t d = 0;
    while (k < shape_s.size() && shape_s[k] >= '0' && shape_s[k] <= '9') {
      d = d * 10 + uint64_t(shape_s[k] - '0');
      if (d > (uint64_t(1) << 40)) corrupt(where, "implausible shape " + shape_s);
      ++k;
    }
    a.shape.push_back(int64_t(d));
    count *= d;
    if (count > (uint64_t(1) << 40)) corrupt(where, "implausible shape " + shape_s);
  }
  size_t data_off = hstart + hlen;
  if (n - data_off != count * 4)
    corrupt(where, "array data is " + std::to_string(n - data_off) + " bytes, shape " + shape_s + " needs " +
                       std::to_string(count * 4));
  a.data.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t bits = u32(p + data_off + 4 * i);
    std::memcpy(&a.data[i], &bits, 4);
  }
  return a;
}

std::map<std::string, NpyArray> parse_npz(const std::vector<uint8_t>& b, const std::string& where) {
  const size_t n = b.size();
  if (n < 22) corrupt(where, "not a zip archive (too short)");
  // End of central directory: scan back over a possible archive comment.
  size_t eocd = std::string::npos;
  size_t lowest = n >= 22 + 65535 ? n - 22 - 65535 : 0;
  for (size_t k = n - 22 + 1; k-- > lowest;) {
    if (u32(&b[k]) == 0x06054b50) {
      eocd = k;
      break;
    }
  }
  if (eocd == std::string::npos) corrupt(where, "not a zip archive (no end-of-central-directory record)");
  uint64_t entries = u16(&b[eocd + 10]);
  uint64_t cd_size = u32(&b[eocd + 12]);
  uint64_t cd_off = u32(&b[eocd + 16]);
  if ((entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) && eocd >= 20 &&
      u32(&b[eocd - 20]) == 0x07064b50) {
    uint64_t z64 = u64(&b[eocd - 20 + 8]);
    if (z64 + 56 > n || u32(&b[z64]) != 0x06064b50) corrupt(where, "bad zip64 end-of-central-directory record");
    entries = u64(&b[z64 + 32]);
    cd_size = u64(&b[z64 + 40]);
    cd_off = u64(&b[z64 + 48]);
  }
  if (cd_off > n || cd_size > n - cd_off) corrupt(where, "central directory lies outside the file");
  std::map<std::string, NpyArray> out;
  size_t k = size_t(cd_off);
  for (uint64_t e = 0; e < entries; ++e) {
    if (k + 46 > n || u32(&b[k]) != 0x02014b50) corrupt(where, "bad central directory entry");
    uint16_t flags = u16(&b[k + 8]);
    uint16_t method = u16(&b[k + 10]);
    uint32_t crc = u32(&b[k + 16]);
    uint64_t csize = u32(&b[k + 20]);
    uint64_t usize = u32(&b[k + 24]);
    uint16_t name_len = u16(&b[k + 28]);
    uint16_t extra_len = u16(&b[k + 30]);
    uint16_t comment_len = u16(&b[k + 32]);
    uint64_t local = u32(&b[k + 42]);
    if (k + 46 + name_len + extra_len + comment_len > n) corrupt(where, "bad central directory entry");
    std::string name(reinterpret_cast<const char*>(&b[k + 46]), name_len);
    // zip64 extended information: the 64-bit values of the fields saturated at 0xFFFFFFFF, in this order.
    for (size_t x = k + 46 + name_len; x + 4 <= k + 46 + name_len + extra_len;) {
      uint16_t id = u16(&b[x]), len = u16(&b[x + 2]);
      size_t f = x + 4, fend = x + 4 + len;
      if (fend > k + 46 + name_len + extra_len) break;
      if (id == 0x0001) {
        if (usize == 0xFFFFFFFFu && f + 8 <= fend) { usize = u64(&b[f]); f += 8; }
        if (csize == 0xFFFFFFFFu && f + 8 <= fend) { csize = u64(&b[f]); f += 8; }
        if (local == 0xFFFFFFFFu && f + 8 <= fend) { local = u64(&b[f]); f += 8; }
      }
      x = fend;
    }
    k += 46 + name_len + extra_len + comment_len;
    std::string member = where + ": member '" + name + "'";
    if (flags & 1) unsupported(where, "member '" + name + "' is encrypted");
    if (method != 0)
      unsupported(where, "member '" + name + "' is compressed (zip method " + std::to_string(method) +
                             "); only stored members are supported (save with np.savez, not np.savez_compressed)");
    if (csize != usize) corrupt(where, "member '" + name + "': stored sizes disagree");
    if (local + 30 > n || u32(&b[local]) != 0x04034b50) corrupt(where, "member '" + name + "': bad local header");
    uint64_t data = local + 30 + u16(&b[local + 26]) + u16(&b[local + 28]);
    if (data > n || usize > n - data) corrupt(where, "member '" + name + "' is truncated");
    if (crc32(&b[data], size_t(usize)) != crc) corrupt(where, "member '" + name + "' fails its CRC-32 check");
    std::string key = name;
    if (key.size() > 4 && key.compare(key.size() - 4, 4, ".npy") == 0) key.resize(key.size() - 4);
    out[key] = parse_npy(&b[data], size_t(usize), where + " (" + name + ")");
  }
  return out;
}

std::map<std::string, NpyArray> read_npz(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(FGRESQ_NOT_FOUND, path + ": cannot open (" + std::strerror(errno) + ")");
  std::vector<uint8_t> bytes;
  uint8_t buf[65536];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + got);
  bool bad = std::ferror(f) != 0;
  std::fclose(f);
  if (bad) throw Error(FGRESQ_CORRUPTED, path + ": read error");
  return parse_npz(bytes, path);
}

}  // namespace fgresq::detail
