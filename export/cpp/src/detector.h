// The streaming decision logic, a line-for-line mirror of edgeast/runtime/detector.py StreamingDetector.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "meta.h"

namespace edgeast {

// What the detector needs from a model: one window [window_samples] in, logits [labels] out.
class Model {
 public:
  virtual ~Model() = default;
  virtual void infer(const float* window, float* logits) = 0;
};

struct Detection {
  size_t label;  // index into meta.labels
  float score;
  double start_s;
  double end_s;
};

class Detector {
 public:
  Detector(ArtifactMeta meta, std::unique_ptr<Model> model);

  // Feed mono PCM (times `scale` gives [-1, 1]); appends the detections it completes to `out`.
  template <typename Sample>
  void push(const Sample* pcm, size_t n, double scale, std::vector<Detection>& out);
  void reset();

  void set_threshold(const std::string& keyword, double value);
  double threshold(const std::string& keyword) const;
  void set_vad(bool enabled, double threshold_db);

  const ArtifactMeta& meta() const { return meta_; }
  const std::vector<size_t>& keyword_ids() const { return keyword_ids_; }
  uint64_t samples_seen() const { return samples_seen_; }
  uint64_t windows_run() const { return windows_run_; }
  uint64_t windows_skipped() const { return windows_skipped_; }
  double infer_seconds() const { return infer_seconds_; }

 private:
  bool step(Detection& found);
  size_t keyword_index(const std::string& keyword) const;

  ArtifactMeta meta_;
  std::unique_ptr<Model> model_;
  size_t classes_;
  size_t window_, hop_, smoothing_;
  uint64_t refractory_samples_;
  bool vad_ = false;
  double vad_db_ = 0.0;

  std::vector<size_t> keyword_ids_;
  std::vector<double> thresholds_;  // per keyword, guarded by mutex_
  mutable std::mutex mutex_;

  std::vector<float> window_buf_, logits_, history_, smoothed_;
  std::vector<double> softmax_scratch_, margin_;  // per-hop scratch, allocated once
  std::vector<bool> armed_;
  size_t history_len_ = 0, history_pos_ = 0, since_hop_ = 0;
  uint64_t samples_seen_ = 0, quiet_until_ = 0;
  uint64_t windows_run_ = 0, windows_skipped_ = 0;
  double infer_seconds_ = 0.0;
};

}  // namespace edgeast
