#include "et_model.h"

#include <cstring>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include "error.h"

// The wheel ships libexecutorch_threadpool.so but not its header (only threadpool_guard.h), so the two
// calls we need are declared here exactly as the library exports them (checked with `nm -DC`).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace edgeast {
namespace {

using executorch::extension::Module;
using executorch::runtime::Error;

std::string error_name(Error e) {
  switch (e) {
    case Error::NotFound: return "NotFound (a backend this program was lowered to is not linked: XNNPACK?)";
    case Error::OperatorMissing: return "OperatorMissing (a kernel is not linked: kernels_optimized/quantized?)";
    case Error::AccessFailed: return "AccessFailed (cannot read the file)";
    case Error::InvalidProgram: return "InvalidProgram (not a .pte, or from an incompatible ExecuTorch)";
    case Error::InvalidArgument: return "InvalidArgument";
    case Error::MemoryAllocationFailed: return "MemoryAllocationFailed";
    default: return "error " + std::to_string(static_cast<int>(e));
  }
}

class ExecuTorchModel : public Model {
 public:
  ExecuTorchModel(const std::string& path, size_t window, size_t classes)
      : path_(path), module_(path, Module::LoadMode::Mmap), input_(window), classes_(classes) {
    Error err = module_.load_forward();
    if (err != Error::Ok)
      throw KwsError(EDGEAST_KWS_ERR_MODEL, path + ": ExecuTorch cannot load its forward method: " + error_name(err) +
                                                "; re-export it or link the missing backend/kernels");
    tensor_ = executorch::extension::from_blob(input_.data(), {1, static_cast<int>(window)});
  }

  void infer(const float* window, float* logits) override {
    std::memcpy(input_.data(), window, input_.size() * sizeof(float));
    auto result = module_.forward(executorch::runtime::EValue(tensor_));
    if (!result.ok())
      throw KwsError(EDGEAST_KWS_ERR_INFERENCE, path_ + ": forward failed: " + error_name(result.error()));
    const auto& out = result.get().at(0);
    if (!out.isTensor() || static_cast<size_t>(out.toTensor().numel()) != classes_)
      throw KwsError(EDGEAST_KWS_ERR_INFERENCE, path_ + ": the model returned " +
                                                    std::to_string(out.isTensor() ? out.toTensor().numel() : 0) +
                                                    " values; its model.json lists " + std::to_string(classes_) +
                                                    " labels: is it the sidecar of another model?");
    std::memcpy(logits, out.toTensor().const_data_ptr<float>(), classes_ * sizeof(float));
  }

 private:
  std::string path_;
  Module module_;
  std::vector<float> input_;  // the tensor below points into it
  executorch::extension::TensorPtr tensor_;
  size_t classes_;
};

}  // namespace

std::unique_ptr<Model> load_executorch_model(const std::string& pte_path, size_t window_samples, size_t classes) {
  return std::make_unique<ExecuTorchModel>(pte_path, window_samples, classes);
}

unsigned set_executorch_threads(unsigned num_threads) {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr) throw KwsError(EDGEAST_KWS_ERR_MODEL, "ExecuTorch has no thread pool in this build");
  pool->_unsafe_reset_threadpool(num_threads);
  return static_cast<unsigned>(pool->get_thread_count());
}

}  // namespace edgeast
