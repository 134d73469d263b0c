// Encoder backends: image batch [B,3,S,S] float32 → features [B,F], score [B].
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

// `onnx_bytes`: the whole .onnx file, already read (and verified) by load_bundle; the session is built from
// these bytes, never from the path, which only names the file in messages. A graph with external data
// (weights in a side file) cannot be loaded this way and is refused by ONNX Runtime.
std::unique_ptr<Encoder> make_onnxruntime_encoder(const std::vector<uint8_t>& onnx_bytes, const std::string& onnx_path,
                                                  const EncoderOptions& opts);

// Version string of the linked ONNX Runtime library.
std::string onnxruntime_version();

}  // namespace fgresq::detail
