// A `.pte` run by ExecuTorch's C++ Module API: [1, window_samples] float32 PCM in, [1, classes] logits out.
#pragma once

#include <memory>
#include <string>

#include "detector.h"

namespace edgeast {

// Loads the program and its forward method now, so a missing kernel or backend fails here, not mid-stream.
std::unique_ptr<Model> load_executorch_model(const std::string& pte_path, size_t window_samples, size_t classes);

// Resize ExecuTorch's process-wide thread pool (the XNNPACK delegate runs on it); returns the new size.
unsigned set_executorch_threads(unsigned num_threads);

}  // namespace edgeast
