// One handle, four threads scoring and ranking at once: the same results as serial calls.
#include <atomic>
#include <thread>

#include "test_common.hpp"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string dir = argv[1];
  const auto cases = load_cases(dir);
  const auto images = images_of(cases);
  const size_t n = images.size();
  fgresq_options o;
  fgresq_options_init(&o);
  o.threads = 1;  // the host has few cores; concurrency comes from the callers
  o.batch_size = 4;
  fgresq_model* m = nullptr;
  if (fgresq_open((dir + "/bundle").c_str(), &o, &m) != FGRESQ_OK) {
    std::fprintf(stderr, "open: %s\n", fgresq_last_error());
    return 2;
  }
  std::vector<float> serial(n);
  CHECK(fgresq_score(m, images.data(), n, serial.data()) == FGRESQ_OK);
  std::vector<int32_t> serial_order(n);
  CHECK(fgresq_rank(m, images.data(), n, serial_order.data(), nullptr, nullptr, nullptr) == FGRESQ_OK);

  constexpr int kThreads = 4, kRounds = 3;
  std::vector<std::vector<float>> got(kThreads, std::vector<float>(n));
  std::atomic<int> bad{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      for (int r = 0; r < kRounds; ++r) {
        // Each thread takes the images in its own rotated order, in different batch splits.
        std::vector<fgresq_image> mine(n);
        for (size_t i = 0; i < n; ++i) mine[i] = images[(i + size_t(t)) % n];
        std::vector<float> s(n);
        if (fgresq_score(m, mine.data(), n, s.data()) != FGRESQ_OK) {
          ++bad;
          std::fprintf(stderr, "thread %d: %s\n", t, fgresq_last_error());
          return;
        }
        for (size_t i = 0; i < n; ++i) got[size_t(t)][(i + size_t(t)) % n] = s[i];
        if (t % 2 == 0) {
          std::vector<int32_t> order(n);
          if (fgresq_rank(m, images.data(), n, order.data(), nullptr, nullptr, nullptr) != FGRESQ_OK ||
              order != serial_order)
            ++bad;
        }
        // An invalid call in the middle leaves the other threads' messages alone.
        fgresq_image zero = images[0];
        zero.width = 0;
        float x;
        if (fgresq_score(m, &zero, 1, &x) != FGRESQ_INVALID_ARGUMENT) ++bad;
      }
    });
  }
  go = true;
  for (auto& th : pool) th.join();
  CHECK(bad.load() == 0);
  double max_d = 0;
  for (int t = 0; t < kThreads; ++t)
    for (size_t i = 0; i < n; ++i) max_d = std::max(max_d, double(std::fabs(got[size_t(t)][i] - serial[i])));
  CHECK_MSG(max_d <= 1e-5, "threaded scores differ from serial by %.3g", max_d);
  std::printf("threads: %d threads x %d rounds, max |dscore| vs serial = %.3g\n", kThreads, kRounds, max_d);
  fgresq_close(m);
  return testing::finish("test_threads");
}
