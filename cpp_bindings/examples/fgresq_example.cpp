// fgresq_example.cpp: open a bundle, score images, compare the first two and rank them all, with the C++
// wrapper (include/fgresq.hpp) over the C API. examples/minimal.c shows the same calls in plain C.
//
//   fgresq-example BUNDLE IMAGE IMAGE [IMAGE...]
//
// The library takes pixels, not files: decoding is the caller's job. To stay about the API, this example reads
// only binary PGM/PPM (P5 gray, P6 RGB, 8-bit), which any tool writes (Pillow: Image.open(p).save("x.ppm")).
// Exit status: 0 done, 1 an image could not be read or was refused, 2 usage, or an unusable bundle.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "fgresq.hpp"

namespace {

struct Pixels {
  std::vector<uint8_t> data;  // rows packed, top row first
  int width = 0, height = 0, channels = 0;
  fgresq_image view() const { return fgresq::image_view(data.data(), width, height, channels); }
};

// The next header token, skipping whitespace and '#' comments; consumes the one whitespace after it.
std::string pnm_token(std::istream& in) {
  std::string token;
  for (int c = in.get(); c != EOF; c = in.get()) {
    if (token.empty() && c == '#') {
      std::string comment;
      std::getline(in, comment);
    } else if (std::isspace(c)) {
      if (!token.empty()) break;
    } else {
      token += char(c);
    }
  }
  return token;
}

bool read_pnm(const std::string& path, Pixels& out, std::string& why) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    why = "cannot open";
    return false;
  }
  const std::string magic = pnm_token(in);
  if (magic != "P5" && magic != "P6") {
    why = "not a binary PGM/PPM (P5/P6)";
    return false;
  }
  const long width = std::strtol(pnm_token(in).c_str(), nullptr, 10);
  const long height = std::strtol(pnm_token(in).c_str(), nullptr, 10);
  const long maxval = std::strtol(pnm_token(in).c_str(), nullptr, 10);
  if (width <= 0 || height <= 0 || width > 65535 || height > 65535 || maxval != 255) {
    why = "unsupported header (8-bit, 1 to 65535 pixels a side)";
    return false;
  }
  out.width = int(width);
  out.height = int(height);
  out.channels = magic == "P5" ? 1 : 3;
  out.data.resize(size_t(width) * size_t(height) * size_t(out.channels));
  if (!in.read(reinterpret_cast<char*>(out.data.data()), std::streamsize(out.data.size()))) {
    why = "truncated pixel data";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BUNDLE IMAGE IMAGE [IMAGE...]  (binary PGM/PPM)\n", argv[0]);
    return 2;
  }
  const std::vector<std::string> paths(argv + 2, argv + argc);
  std::vector<Pixels> pixels(paths.size());
  std::vector<fgresq_image> images;  // views of `pixels`: nothing is copied
  for (size_t i = 0; i < paths.size(); ++i) {
    std::string why;
    if (!read_pnm(paths[i], pixels[i], why)) {
      std::fprintf(stderr, "%s: %s\n", paths[i].c_str(), why.c_str());
      return 1;
    }
    images.push_back(pixels[i].view());
  }

  try {
    fgresq::Options options;  // all usable cores, batches of 16, sha256 of the files it loads checked
    const fgresq::Model model(argv[1], options);
    std::printf("%s: input %dx%d, %d features per image (libfgresq %s)\n", model.name().c_str(), model.input_size(),
                model.input_size(), model.feature_size(), fgresq_version());

    const std::vector<float> scores = model.score(images);  // in (0, 1), higher is better
    for (size_t i = 0; i < paths.size(); ++i) std::printf("score %.4f  %s\n", scores[i], paths[i].c_str());

    // Both orders averaged (swapping the images swaps the answer), then the first order alone as the authors'
    // predict_pair computes it.
    const fgresq::Comparison c = model.compare(images[0], images[1]);
    const fgresq::Comparison raw = model.compare(images[0], images[1], /*raw=*/true);
    std::printf("compare %s vs %s: first better %.4f, second better %.4f, similar %.4f (raw: %.4f, %.4f, %.4f)\n",
                paths[0].c_str(), paths[1].c_str(), c.p_first_better, c.p_second_better, c.p_similar,
                raw.p_first_better, raw.p_second_better, raw.p_similar);

    const std::vector<fgresq::RankEntry> ranking = model.rank(images);  // best first
    for (size_t k = 0; k < ranking.size(); ++k) {
      const fgresq::RankEntry& r = ranking[k];
      std::printf("rank %zu: %s (score %.4f, win rate %.3f, strength %+.3f, tier %d)\n", k + 1,
                  paths[size_t(r.index)].c_str(), r.score, r.win_rate, r.strength, r.tier);
    }
  } catch (const fgresq::Error& e) {
    // e.status() is the failed C call's fgresq_status; e.what() is its status string and fgresq_last_error(),
    // the one-line message that names the file or image at fault.
    std::fprintf(stderr, "fgresq-example: %s\n", e.what());
    return e.status() == FGRESQ_INVALID_ARGUMENT ? 1 : 2;
  }
  return 0;
}
