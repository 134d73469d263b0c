// Encoder backends: image batch [B,3,S,S] float32 → features [B,F], score [B].
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace fgresq::detail {

class Encoder {
 public:
  virtual ~Encoder() = default;
  // Thread-safe: may be called from several threads at once.
  virtual void encode(const float* images, size_t batch, float* features, float* scores) const = 0;
  // Feature width from the graph's static output shape, or -1 if dynamic.
  virtual int static_feature_size() const = 0;
  virtual std::string describe() const = 0;
};

struct EncoderOptions {
  int threads = 0;     // 0 = usable cores
  int input_size = 224;
  int feature_size = 0;  // F expected from the heads
};

std::unique_ptr<Encoder> make_onnxruntime_encoder(const std::string& onnx_path, const EncoderOptions& opts);

// Version string of the linked ONNX Runtime library.
std::string onnxruntime_version();

}  // namespace fgresq::detail
