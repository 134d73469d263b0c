// ONNX Runtime backend through its C++ API (header-only wrapper over the C API).
// The API table is requested at ORT_API_VERSION of the headers we were compiled with; ORT's C API is
// forward compatible, so a newer libonnxruntime (e.g. the Python wheel's) serves older headers.
#include <onnxruntime_cxx_api.h>

#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "backend.hpp"
#include "error.hpp"

namespace fgresq::detail {
namespace {

const OrtApi* ort_api() {
  static const OrtApi* api = [] {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* a = base ? base->GetApi(ORT_API_VERSION) : nullptr;
    if (a) Ort::InitApi(a);
    return a;
  }();
  if (!api) {
    const OrtApiBase* base = OrtGetApiBase();
    throw Error(FGRESQ_UNSUPPORTED, std::string("libonnxruntime ") + (base ? base->GetVersionString() : "?") +
                                        " does not provide C API version " + std::to_string(ORT_API_VERSION) +
                                        " (it is older than the headers fgresq was built with)");
  }
  return api;
}

// One environment per process, never destroyed (ORT's global state must outlive every session, and
// tearing it down during static destruction races with other libraries' destructors).
Ort::Env& env() {
  ort_api();
  static Ort::Env* e = new Ort::Env(ORT_LOGGING_LEVEL_ERROR, "fgresq");
  return *e;
}

int usable_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

class OrtEncoder final : public Encoder {
 public:
  OrtEncoder(const std::vector<uint8_t>& bytes, const std::string& path, const EncoderOptions& opts)
      : path_(path), size_(opts.input_size), features_(opts.feature_size) {
    Ort::Env& e = env();
    try {
      Ort::SessionOptions so;
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
      so.SetIntraOpNumThreads(opts.threads > 0 ? opts.threads : usable_cores());
      so.SetInterOpNumThreads(1);
      so.SetLogSeverityLevel(3);
      session_ = std::make_unique<Ort::Session>(e, static_cast<const void*>(bytes.data()), bytes.size(), so);
    } catch (const Ort::Exception& ex) {
      throw Error(FGRESQ_RUNTIME, path + ": onnxruntime cannot load the graph (" + ex.what() + ")");
    }
    try {
      Ort::AllocatorWithDefaultOptions alloc;
      if (session_->GetInputCount() < 1 || session_->GetOutputCount() < 2)
        throw Error(FGRESQ_CORRUPTED, path + ": encoder graph must have an image input and features, score outputs");
      input_name_ = session_->GetInputNameAllocated(0, alloc).get();
      for (size_t k = 0; k < 2; ++k) output_names_.push_back(session_->GetOutputNameAllocated(k, alloc).get());
      // Keep each TypeInfo alive: GetTensorTypeAndShapeInfo() returns a view into it.
      Ort::TypeInfo in_type = session_->GetInputTypeInfo(0);
      auto in_info = in_type.GetTensorTypeAndShapeInfo();
      input_type_ = in_info.GetElementType();
      auto shape = in_info.GetShape();
      if (shape.size() != 4 || (shape[1] > 0 && shape[1] != 3) || (shape[2] > 0 && shape[2] != size_) ||
          (shape[3] > 0 && shape[3] != size_)) {
        std::ostringstream msg;
        msg << path << ": encoder input has shape [";
        for (size_t k = 0; k < shape.size(); ++k) msg << (k ? "," : "") << shape[k];
        msg << "], model.json says [B,3," << size_ << "," << size_ << "]";
        throw Error(FGRESQ_CORRUPTED, msg.str());
      }
      for (size_t k = 0; k < 2; ++k) {
        Ort::TypeInfo out_type = session_->GetOutputTypeInfo(k);
        auto info = out_type.GetTensorTypeAndShapeInfo();
        output_types_[k] = info.GetElementType();
        if (k == 0) {
          auto os = info.GetShape();
          if (os.size() == 2 && os[1] > 0) static_features_ = int(os[1]);
        }
      }
      auto ok_type = [](ONNXTensorElementDataType t) {
        return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
      };
      if (!ok_type(input_type_) || !ok_type(output_types_[0]) || !ok_type(output_types_[1]))
        throw Error(FGRESQ_UNSUPPORTED, path + ": encoder input/outputs must be float32 or float16 tensors");
    } catch (const Ort::Exception& ex) {
      throw Error(FGRESQ_RUNTIME, path + ": cannot inspect the encoder graph (" + ex.what() + ")");
    }
  }

  int static_feature_size() const override { return static_features_; }

  std::string describe() const override { return "onnxruntime " + onnxruntime_version() + " (CPU)"; }

  void encode(const float* images, size_t batch, float* features, float* scores) const override {
    try {
      const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
      const int64_t shape[4] = {int64_t(batch), 3, size_, size_};
      const size_t count = batch * 3 * size_t(size_) * size_t(size_);
      std::vector<Ort::Float16_t> half;
      Ort::Value input{nullptr};
      if (input_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
        half.resize(count);
        for (size_t i = 0; i < count; ++i) half[i] = Ort::Float16_t(images[i]);
        input = Ort::Value::CreateTensor<Ort::Float16_t>(mem, half.data(), count, shape, 4);
      } else {
        input = Ort::Value::CreateTensor<float>(mem, const_cast<float*>(images), count, shape, 4);
      }
      const char* in_names[1] = {input_name_.c_str()};
      const char* out_names[2] = {output_names_[0].c_str(), output_names_[1].c_str()};
      auto outs = session_->Run(Ort::RunOptions{nullptr}, in_names, &input, 1, out_names, 2);
      auto s0 = outs[0].GetTensorTypeAndShapeInfo();
      auto s1 = outs[1].GetTensorTypeAndShapeInfo();
      const size_t nf = s0.GetElementCount(), ns = s1.GetElementCount();
      if (nf != batch * size_t(features_) || ns != batch) {
        std::ostringstream msg;
        msg << path_ << ": encoder returned " << nf << " feature values and " << ns << " scores for a batch of " << batch
            << " (expected " << features_ << " features per image, from heads.npz)";
        throw Error(FGRESQ_RUNTIME, msg.str());
      }
      copy_out(outs[0], output_types_[0], nf, features);
      copy_out(outs[1], output_types_[1], ns, scores);
    } catch (const Ort::Exception& ex) {
      throw Error(FGRESQ_RUNTIME, path_ + ": onnxruntime run failed (" + ex.what() + ")");
    }
  }

 private:
  static void copy_out(const Ort::Value& v, ONNXTensorElementDataType t, size_t n, float* dst) {
    if (!dst) return;
    if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
      const Ort::Float16_t* src = v.GetTensorData<Ort::Float16_t>();
      for (size_t i = 0; i < n; ++i) dst[i] = src[i].ToFloat();
    } else {
      std::memcpy(dst, v.GetTensorData<float>(), n * sizeof(float));
    }
  }

  std::string path_;
  int size_;
  int features_;
  std::unique_ptr<Ort::Session> session_;
  std::string input_name_;
  std::vector<std::string> output_names_;
  ONNXTensorElementDataType input_type_ = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  ONNXTensorElementDataType output_types_[2] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  int static_features_ = -1;
};

}  // namespace

std::string onnxruntime_version() {
  const OrtApiBase* base = OrtGetApiBase();
  return base ? base->GetVersionString() : "?";
}

std::unique_ptr<Encoder> make_onnxruntime_encoder(const std::vector<uint8_t>& onnx_bytes, const std::string& onnx_path,
                                                  const EncoderOptions& opts) {
  return std::make_unique<OrtEncoder>(onnx_bytes, onnx_path, opts);
}

}  // namespace fgresq::detail
