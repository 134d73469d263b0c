// PNG/JPEG decoding for the example CLI (libpng, libjpeg), following what the Python SDK does with PIL:
// 8-bit RGB or gray, alpha dropped (not composited), 16-bit RGB truncated to its high byte, 16-bit gray
// scaled by 1/257, and the EXIF orientation applied.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

struct DecodedImage {
  std::vector<uint8_t> pixels;  // rows packed, width·channels bytes each
  int width = 0;
  int height = 0;
  int channels = 0;  // 1 or 3
};

// On failure returns false and sets `error` to a one-line reason (the caller prefixes the path).
bool decode_image_file(const std::string& path, DecodedImage& out, std::string& error);
