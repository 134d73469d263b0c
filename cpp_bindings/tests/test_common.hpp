// The test cases written by make_test_data.py.
#pragma once
#include <string>
#include <vector>

#include "fgresq.h"
#include "testing.hpp"

struct Case {
  std::string name;
  int width = 0, height = 0, channels = 0;
  double expected_score = 0;
  std::vector<uint8_t> pixels;
  fgresq_image image() const { return fgresq_image{pixels.data(), width, height, 0, channels}; }
};

inline std::vector<Case> load_cases(const std::string& dir) {
  std::vector<Case> out;
  for (const auto& row : testing::read_tsv(dir + "/cases.tsv")) {
    Case c;
    c.name = row.at(0);
    c.width = std::stoi(row.at(1));
    c.height = std::stoi(row.at(2));
    c.channels = std::stoi(row.at(3));
    c.expected_score = std::stod(row.at(4));
    c.pixels = testing::read_bytes(dir + "/images/" + c.name + ".raw");
    if (c.pixels.size() != size_t(c.width) * c.height * c.channels) {
      std::fprintf(stderr, "%s: raw size mismatch\n", c.name.c_str());
      std::exit(2);
    }
    out.push_back(std::move(c));
  }
  return out;
}

inline std::vector<fgresq_image> images_of(const std::vector<Case>& cases) {
  std::vector<fgresq_image> v;
  for (const auto& c : cases) v.push_back(c.image());
  return v;
}

inline fgresq_model* open_or_die(const std::string& bundle) {
  fgresq_model* m = nullptr;
  fgresq_status st = fgresq_open(bundle.c_str(), nullptr, &m);
  if (st != FGRESQ_OK) {
    std::fprintf(stderr, "fgresq_open(%s): %s: %s\n", bundle.c_str(), fgresq_status_string(st), fgresq_last_error());
    std::exit(2);
  }
  return m;
}
