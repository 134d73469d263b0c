// The C API on pixels decoded from PNG (RGB, gray, RGBA, palette) and JPEG files against the Python SDK reading
// the same files, as `fgresq-sdk score`, `compare` (and `--raw`) and `rank --group-by parent` do: per-file scores,
// each folder's ranking, a folder of one image, and a pair compared both ways.
#include "test_common.hpp"

#include <sstream>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: test_files TESTDATA_DIR\n");
    return 2;
  }
  const std::string dir = std::string(argv[1]) + "/files";
  const auto cases = load_cases(dir);
  const auto images = images_of(cases);
  CHECK(cases.size() == 7);
  fgresq_model* m = open_or_die(std::string(argv[1]) + "/bundle");

  std::vector<float> scores;
  const double max_score = check_scores(m, cases, scores, 1e-4);

  // Each group's images ranked on their own (indices in rank_<group>.tsv are into the group).
  RankDiff worst;
  size_t n_groups = 0;
  for (const auto& row : testing::read_tsv(dir + "/groups.tsv")) {
    std::vector<fgresq_image> members;
    std::stringstream ss(row.at(1));
    for (std::string idx; std::getline(ss, idx, ',');) members.push_back(images.at(size_t(std::stoi(idx))));
    const Ranked r = rank_images(m, members);
    const RankDiff d = check_ranking("group " + row[0], r, testing::read_tsv(dir + "/rank_" + row[0] + ".tsv"), 1e-6);
    worst.win = std::max(worst.win, d.win);
    worst.strength = std::max(worst.strength, d.strength);
    if (members.size() == 1)  // nothing to win against: no win rate, tier 1, strength 0 (JSON null in the CLIs)
      CHECK(std::isnan(r.win[0]) && r.tier[0] == 1 && r.strength[0] == 0.0);
    ++n_groups;
  }
  CHECK(n_groups == 4);

  const double max_cmp = check_compare(m, images, dir + "/compare.tsv", false);
  const double max_raw = check_compare(m, images, dir + "/compare_raw.tsv", true);
  // The raw answer (one order) is not the symmetrised one here, so the two checks above tell them apart.
  double sym[3], raw[3];
  CHECK(fgresq_compare(m, &images[2], &images[3], sym) == FGRESQ_OK);
  CHECK(fgresq_compare_raw(m, &images[2], &images[3], raw) == FGRESQ_OK);
  const double raw_vs_sym = std::max(std::fabs(raw[0] - sym[0]), std::fabs(raw[1] - sym[1]));
  CHECK_MSG(raw_vs_sym > 1e-3, "raw and symmetrised compare agree within %.3g: the test proves nothing", raw_vs_sym);

  std::printf("files: %zu PNG/JPEG files, %zu groups: max |dscore| = %.3g, max |dwin_rate| = %.3g, max |dstrength| = "
              "%.3g, max |dprob| = %.3g (raw %.3g; raw vs symmetrised %.3g)\n",
              cases.size(), n_groups, max_score, worst.win, worst.strength, max_cmp, max_raw, raw_vs_sym);
  fgresq_close(m);
  return testing::finish("test_files");
}
