// Reader for the .npz that np.savez writes: a zip of stored (uncompressed) .npy members.
// Only what heads.npz needs: zip method 0 (stored), .npy format v1-v3, dtype '<f4', C order.
// Anything else is refused with an Error naming the file and member.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fgresq::detail {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // row-major
};

// Parse one .npy blob; `where` names it in messages.
NpyArray parse_npy(const uint8_t* p, size_t n, const std::string& where);
// Members of an .npz held in memory, keyed by name without ".npy".
std::map<std::string, NpyArray> parse_npz(const std::vector<uint8_t>& bytes, const std::string& where);
std::map<std::string, NpyArray> read_npz(const std::string& path);

uint32_t crc32(const uint8_t* p, size_t n);

}  // namespace fgresq::detail
