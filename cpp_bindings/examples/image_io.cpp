#include "image_io.hpp"

#include <jpeglib.h>
#include <png.h>
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>

namespace {

constexpr uint64_t kMaxPixels = 2ull * 89478485ull;  // the Python SDK's limit (2× PIL's default)

// ---- EXIF orientation (TIFF IFD0 tag 0x0112) --------------------------------------------------------
int exif_orientation(const uint8_t* p, size_t n) {
  if (n >= 6 && std::memcmp(p, "Exif\0\0", 6) == 0) {
    p += 6;
    n -= 6;
  }
  if (n < 8) return 1;
  bool le;
  if (p[0] == 'I' && p[1] == 'I') le = true;
  else if (p[0] == 'M' && p[1] == 'M') le = false;
  else return 1;
  auto u16 = [&](size_t o) -> unsigned { return le ? p[o] | (p[o + 1] << 8) : (p[o] << 8) | p[o + 1]; };
  auto u32 = [&](size_t o) -> size_t {
    return le ? size_t(p[o]) | (size_t(p[o + 1]) << 8) | (size_t(p[o + 2]) << 16) | (size_t(p[o + 3]) << 24)
              : (size_t(p[o]) << 24) | (size_t(p[o + 1]) << 16) | (size_t(p[o + 2]) << 8) | size_t(p[o + 3]);
  };
  size_t ifd = u32(4);
  if (ifd + 2 > n) return 1;
  unsigned count = u16(ifd);
  for (unsigned k = 0; k < count; ++k) {
    size_t e = ifd + 2 + 12 * size_t(k);
    if (e + 12 > n) break;
    if (u16(e) == 0x0112 && u16(e + 2) == 3) {
      unsigned v = u16(e + 8);
      return v >= 1 && v <= 8 ? int(v) : 1;
    }
  }
  return 1;
}

// PIL's ImageOps.exif_transpose for orientations 2-8.
void apply_orientation(DecodedImage& img, int orientation) {
  if (orientation <= 1 || orientation > 8) return;
  const int W = img.width, H = img.height, C = img.channels;
  const bool swap = orientation >= 5;
  const int ow = swap ? H : W, oh = swap ? W : H;
  std::vector<uint8_t> out(img.pixels.size());
  for (int y = 0; y < oh; ++y) {
    for (int x = 0; x < ow; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = W - 1 - x; sy = y; break;          // FLIP_LEFT_RIGHT
        case 3: sx = W - 1 - x; sy = H - 1 - y; break;  // ROTATE_180
        case 4: sx = x; sy = H - 1 - y; break;          // FLIP_TOP_BOTTOM
        case 5: sx = y; sy = x; break;                  // TRANSPOSE
        case 6: sx = y; sy = H - 1 - x; break;          // ROTATE_270 (clockwise)
        case 7: sx = W - 1 - y; sy = H - 1 - x; break;  // TRANSVERSE
        case 8: sx = W - 1 - y; sy = x; break;          // ROTATE_90 (counter-clockwise)
      }
      std::memcpy(&out[(size_t(y) * ow + x) * C], &img.pixels[(size_t(sy) * W + sx) * C], size_t(C));
    }
  }
  img.pixels.swap(out);
  img.width = ow;
  img.height = oh;
}

bool too_large(uint64_t w, uint64_t h, std::string& error) {
  if (w * h > kMaxPixels) {
    error = "image too large (" + std::to_string(w) + "x" + std::to_string(h) + " pixels > " +
            std::to_string(kMaxPixels) + " limit; possible decompression bomb)";
    return true;
  }
  return false;
}

// ---- PNG ----------------------------------------------------------------------------------------------
struct PngSource {
  const std::vector<uint8_t>* data;
  size_t pos;
};

struct PngErr {
  jmp_buf jmp;
  char msg[256];
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (src->pos + n > src->data->size()) png_error(png, "unexpected end of file");
  std::memcpy(out, src->data->data() + src->pos, n);
  src->pos += n;
}

void png_on_error(png_structp png, png_const_charp msg) {
  auto* e = static_cast<PngErr*>(png_get_error_ptr(png));
  std::snprintf(e->msg, sizeof e->msg, "%s", msg);
  std::longjmp(e->jmp, 1);
}

void png_on_warning(png_structp, png_const_charp) {}

// Non-trivial objects live in the caller (out, rows) so the longjmp skips no destructor.
bool decode_png(const std::vector<uint8_t>& data, DecodedImage& out, std::vector<png_bytep>& rows,
                std::vector<uint16_t>& wide, std::string& error) {
  PngErr err;
  err.msg[0] = 0;
  PngSource src{&data, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_on_error, png_on_warning);
  if (!png) {
    error = "out of memory";
    return false;
  }
  png_infop info = png_create_info_struct(png);
  volatile int orientation = 1;
  volatile bool gray16 = false;
  if (!info || setjmp(err.jmp)) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    std::string m = err.msg;
    error = (m.find("end of file") != std::string::npos || m.find("Read Error") != std::string::npos)
                ? "truncated or corrupted image data (" + m + ")"
                : "cannot decode image (" + m + ")";
    return false;
  }
  png_set_read_fn(png, &src, png_read_mem);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  if (w == 0 || h == 0) {
    png_destroy_read_struct(&png, &info, nullptr);
    error = "image has zero width or height";
    return false;
  }
  if (too_large(w, h, error)) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
#ifdef PNG_eXIf_SUPPORTED
  {
    png_uint_32 exif_len = 0;
    png_bytep exif = nullptr;
    if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif) orientation = exif_orientation(exif, exif_len);
  }
#endif
  // PIL: palette → RGB (its tRNS alpha then dropped), low-depth gray → L, 16-bit RGB(A)/LA → high byte,
  // 16-bit gray → I;16 scaled by 1/257 (done below), alpha dropped.
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth == 16) {
    gray16 = true;
    png_set_swap(png);  // host (little-endian) order for the uint16 buffer
  } else if (depth == 16) {
    png_set_strip_16(png);
  }
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int channels = png_get_channels(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  out.width = int(w);
  out.height = int(h);
  out.channels = channels;
  if (gray16) {
    wide.resize(size_t(w) * h);
    rows.resize(h);
    for (png_uint_32 y = 0; y < h; ++y) rows[y] = reinterpret_cast<png_bytep>(&wide[size_t(y) * w]);
  } else {
    out.pixels.resize(rowbytes * h);
    rows.resize(h);
    for (png_uint_32 y = 0; y < h; ++y) rows[y] = &out.pixels[size_t(y) * rowbytes];
  }
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  if (gray16) {
    out.pixels.resize(size_t(w) * h);
    for (size_t i = 0; i < wide.size(); ++i) out.pixels[i] = uint8_t(std::lrint(wide[i] / 257.0));
    out.channels = 1;
  }
  if (out.channels == 2 || out.channels == 4) {  // alpha from a tRNS chunk (palette expansion): drop it
    const int keep = out.channels - 1;
    const size_t n = size_t(out.width) * out.height;
    for (size_t i = 0; i < n; ++i)
      for (int c = 0; c < keep; ++c) out.pixels[i * keep + c] = out.pixels[i * out.channels + c];
    out.pixels.resize(n * keep);
    out.channels = keep;
  }
  if (out.channels != 1 && out.channels != 3) {
    error = "unexpected PNG layout (" + std::to_string(out.channels) + " channels)";
    return false;
  }
  apply_orientation(out, orientation);
  return true;
}

// ---- JPEG ---------------------------------------------------------------------------------------------
struct JpegErr {
  jpeg_error_mgr mgr;
  jmp_buf jmp;
  char msg[JMSG_LENGTH_MAX];
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->msg);
  std::longjmp(e->jmp, 1);
}

void jpeg_on_message(j_common_ptr, int) {}

bool decode_jpeg(const std::vector<uint8_t>& data, DecodedImage& out, std::string& error) {
  jpeg_decompress_struct cinfo;
  JpegErr err;
  err.msg[0] = 0;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_on_error;
  err.mgr.emit_message = jpeg_on_message;
  volatile int orientation = 1;
  if (setjmp(err.jmp)) {
    jpeg_destroy_decompress(&cinfo);
    std::string m = err.msg;
    error = (m.find("Premature end") != std::string::npos || m.find("truncated") != std::string::npos)
                ? "truncated or corrupted image data (" + m + ")"
                : "cannot decode image (" + m + ")";
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data.data(), static_cast<unsigned long>(data.size()));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  for (jpeg_saved_marker_ptr mk = cinfo.marker_list; mk; mk = mk->next)
    if (mk->marker == JPEG_APP0 + 1 && mk->data_length >= 6 && std::memcmp(mk->data, "Exif\0\0", 6) == 0)
      orientation = exif_orientation(mk->data, mk->data_length);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    error = "CMYK JPEG is not supported by fgresq-cli (convert it to RGB)";
    return false;
  }
  if (too_large(cinfo.image_width, cinfo.image_height, error)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out.width = int(cinfo.output_width);
  out.height = int(cinfo.output_height);
  out.channels = int(cinfo.output_components);
  const size_t row = size_t(out.width) * out.channels;
  out.pixels.resize(row * out.height);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW r = &out.pixels[size_t(cinfo.output_scanline) * row];
    jpeg_read_scanlines(&cinfo, &r, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  apply_orientation(out, orientation);
  return true;
}

bool read_file(const std::string& path, std::vector<uint8_t>& data, std::string& error) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    error = errno == ENOENT ? "no such file" : errno == EACCES ? "permission denied"
                                                               : std::string("cannot open (") + std::strerror(errno) + ")";
    return false;
  }
  if (S_ISDIR(st.st_mode)) {
    error = "is a directory, not an image";
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    error = "not a regular file";
    return false;
  }
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    error = errno == EACCES ? "permission denied" : std::string("cannot open (") + std::strerror(errno) + ")";
    return false;
  }
  data.resize(size_t(st.st_size));
  size_t got = data.empty() ? 0 : std::fread(data.data(), 1, data.size(), f);
  std::fclose(f);
  data.resize(got);
  return true;
}

}  // namespace

bool decode_image_file(const std::string& path, DecodedImage& out, std::string& error) {
  std::vector<uint8_t> data;
  if (!read_file(path, data, error)) return false;
  out = DecodedImage{};
  auto starts = [&](const char* magic, size_t n) { return data.size() >= n && std::memcmp(data.data(), magic, n) == 0; };
  if (data.empty()) {
    error = "empty file (0 bytes)";
    return false;
  }
  if (starts("\x89PNG\r\n\x1a\n", 8)) {
    std::vector<png_bytep> rows;
    std::vector<uint16_t> wide;
    return decode_png(data, out, rows, wide, error);
  }
  if (starts("\xFF\xD8\xFF", 3)) return decode_jpeg(data, out, error);
  if (starts("GIF8", 4) || starts("BM", 2) || starts("II*\0", 4) || starts("MM\0*", 4) || starts("P5", 2) ||
      starts("P6", 2) || (starts("RIFF", 4) && data.size() >= 12 && std::memcmp(&data[8], "WEBP", 4) == 0)) {
    error = "image format not supported by fgresq-cli (PNG and JPEG only; the Python SDK reads it)";
    return false;
  }
  error = "not a recognised image format";
  return false;
}
