// SHA-256 (FIPS 180-4), written for fgresq: bundle files are verified against model.json before use.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace fgresq::detail {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t len);
  // Lower-case hex digest; the object must not be updated afterwards.
  std::string hexdigest();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const void* data, size_t len);
// Hex digest of a file's contents; throws fgresq::detail::Error (NOT_FOUND) if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace fgresq::detail
