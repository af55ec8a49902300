// The sidecar model.json (Python: edgeast/export/metadata.py ArtifactMeta), the fields streaming needs.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace edgeast {

struct ArtifactMeta {
  std::vector<std::string> labels;
  int sample_rate = 16000;
  long window_samples = 16000;
  long hop_samples = 1600;
  std::map<std::string, double> thresholds;  // per keyword; missing -> default_threshold
  double default_threshold = 0.8;
  int smoothing_hops = 3;
  double refractory_s = 1.0;

  double threshold(const std::string& label) const;
  // Labels that can trigger a detection: not the filler classes like _unknown_.
  std::vector<std::string> keywords() const;
};

// Parse model.json text; throws KwsError(METADATA) naming `origin` and the field.
ArtifactMeta parse_meta(const std::string& json_text, const std::string& origin);

// Read `meta_path`, or when empty the sidecar of `model_path` (same stem + .json, else model.json beside it).
ArtifactMeta load_meta(const std::string& model_path, const std::string& meta_path);

}  // namespace edgeast
