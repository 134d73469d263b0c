/* minimal.c: score, compare and rank two synthetic images with the C API (the example in DEVELOPERS.md).
 * Usage: fgresq-minimal BUNDLE_DIR */
#include <stdio.h>
#include <stdlib.h>

#include "fgresq.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s BUNDLE_DIR\n", argv[0]);
    return 2;
  }
  fgresq_model* model = NULL;
  fgresq_status st = fgresq_open(argv[1], NULL, &model); /* verifies every file's sha256 */
  if (st != FGRESQ_OK) {
    fprintf(stderr, "fgresq_open: %s: %s\n", fgresq_status_string(st), fgresq_last_error());
    return 1;
  }

  /* Two 320x240 RGB images: a smooth gradient and the same with noise. */
  enum { W = 320, H = 240 };
  static uint8_t smooth[H * W * 3], noisy[H * W * 3];
  for (int i = 0; i < H * W * 3; ++i) {
    smooth[i] = (uint8_t)((i / 3) % W * 255 / W);
    noisy[i] = (uint8_t)(smooth[i] / 2 + rand() % 128);
  }
  fgresq_image images[2] = {
      {smooth, W, H, 0, 3}, /* data, width, height, stride_bytes (0 = packed), channels */
      {noisy, W, H, 0, 3},
  };

  float scores[2];
  double probs[3], raw[3];
  int32_t order[2], tier[2];
  double win_rate[2];
  if (fgresq_score(model, images, 2, scores) != FGRESQ_OK ||
      fgresq_compare(model, &images[0], &images[1], probs) != FGRESQ_OK || /* both orders averaged */
      fgresq_compare_raw(model, &images[0], &images[1], raw) != FGRESQ_OK || /* (smooth, noisy) only */
      fgresq_rank(model, images, 2, order, NULL, win_rate, tier) != FGRESQ_OK) {
    fprintf(stderr, "fgresq: %s\n", fgresq_last_error());
    fgresq_close(model);
    return 1;
  }
  printf("scores: smooth %.4f, noisy %.4f\n", scores[0], scores[1]);
  printf("P(smooth better) %.4f, P(noisy better) %.4f, P(similar) %.4f\n", probs[0], probs[1], probs[2]);
  printf("raw (smooth first): %.4f, %.4f, %.4f\n", raw[0], raw[1], raw[2]);
  for (int k = 0; k < 2; ++k)
    printf("rank %d: image %d (win rate %.3f, tier %d)\n", k + 1, order[k], win_rate[order[k]], tier[order[k]]);
  fgresq_close(model);
  return 0;
}
