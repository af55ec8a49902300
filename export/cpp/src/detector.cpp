// Mirrors StreamingDetector.push/_step exactly, down to the float32/float64 mix of numpy, so that the
// same samples give the same decisions (model outputs aside, which agree to float rounding).

#include "detector.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "error.h"

namespace edgeast {

Detector::Detector(ArtifactMeta meta, std::unique_ptr<Model> model)
    : meta_(std::move(meta)),
      model_(std::move(model)),
      classes_(meta_.labels.size()),
      window_(static_cast<size_t>(meta_.window_samples)),
      hop_(static_cast<size_t>(meta_.hop_samples)),
      smoothing_(static_cast<size_t>(meta_.smoothing_hops)),
      // Python's round() rounds half to even, as nearbyint does in the default rounding mode.
      refractory_samples_(static_cast<uint64_t>(std::nearbyint(meta_.refractory_s * meta_.sample_rate))) {
  for (const auto& k : meta_.keywords()) {
    keyword_ids_.push_back(static_cast<size_t>(std::find(meta_.labels.begin(), meta_.labels.end(), k) -
                                               meta_.labels.begin()));
    thresholds_.push_back(meta_.threshold(k));
  }
  window_buf_.assign(window_, 0.0f);
  logits_.assign(classes_, 0.0f);
  history_.assign(smoothing_ * classes_, 0.0f);
  smoothed_.assign(classes_, 0.0f);
  softmax_scratch_.assign(classes_, 0.0);
  margin_.assign(keyword_ids_.size(), 0.0);
  reset();
}

void Detector::reset() {
  std::fill(window_buf_.begin(), window_buf_.end(), 0.0f);
  std::fill(history_.begin(), history_.end(), 0.0f);
  std::fill(smoothed_.begin(), smoothed_.end(), 0.0f);
  history_len_ = history_pos_ = since_hop_ = 0;
  samples_seen_ = quiet_until_ = 0;
  armed_.assign(keyword_ids_.size(), true);
  windows_run_ = windows_skipped_ = 0;
  infer_seconds_ = 0.0;
}

size_t Detector::keyword_index(const std::string& keyword) const {
  for (size_t k = 0; k < keyword_ids_.size(); ++k)
    if (meta_.labels[keyword_ids_[k]] == keyword) return k;
  std::string names;
  for (size_t id : keyword_ids_) names += (names.empty() ? "" : ", ") + meta_.labels[id];
  throw KwsError(EDGEAST_KWS_ERR_ARGUMENT,
                 "threshold for '" + keyword + "': not a keyword of this model (keywords: " + names + ")");
}

void Detector::set_threshold(const std::string& keyword, double value) {
  size_t k = keyword_index(keyword);
  if (!(value >= 0.0 && value <= 1.0))
    throw KwsError(EDGEAST_KWS_ERR_ARGUMENT,
                   "threshold " + keyword + "=" + std::to_string(value) + ": must be a probability in [0, 1]");
  std::lock_guard<std::mutex> lock(mutex_);
  thresholds_[k] = value;
}

double Detector::threshold(const std::string& keyword) const {
  size_t k = keyword_index(keyword);
  std::lock_guard<std::mutex> lock(mutex_);
  return thresholds_[k];
}

void Detector::set_vad(bool enabled, double threshold_db) {
  vad_ = enabled;
  vad_db_ = threshold_db;
}

template <typename Sample>
void Detector::push(const Sample* pcm, size_t n, double scale, std::vector<Detection>& out) {
  size_t pos = 0;
  while (pos < n) {
    size_t take = std::min(n - pos, hop_ - since_hop_);
    std::memmove(window_buf_.data(), window_buf_.data() + take, (window_ - take) * sizeof(float));
    float* tail = window_buf_.data() + window_ - take;
    for (size_t i = 0; i < take; ++i) tail[i] = static_cast<float>(pcm[pos + i] * scale);
    pos += take;
    samples_seen_ += take;
    since_hop_ += take;
    if (since_hop_ == hop_) {
      since_hop_ = 0;
      Detection found;
      if (samples_seen_ >= window_ && step(found)) out.push_back(found);
    }
  }
}

template void Detector::push<float>(const float*, size_t, double, std::vector<Detection>&);
template void Detector::push<int16_t>(const int16_t*, size_t, double, std::vector<Detection>&);

static double rms_db(const std::vector<float>& x) {
  double energy = 0.0;
  for (float v : x) energy += static_cast<double>(v) * v;
  energy /= static_cast<double>(x.size());
  return energy > 0.0 ? 10.0 * std::log10(energy) : -std::numeric_limits<double>::infinity();
}

bool Detector::step(Detection& found) {
  float* row = history_.data() + history_pos_ * classes_;
  if (vad_ && rms_db(window_buf_) < vad_db_) {
    ++windows_skipped_;
    std::fill(row, row + classes_, 0.0f);
  } else {
    auto t0 = std::chrono::steady_clock::now();
    model_->infer(window_buf_.data(), logits_.data());
    infer_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++windows_run_;
    // softmax in float64, stored as float32 (edgeast.runtime.detector.softmax)
    double top = *std::max_element(logits_.begin(), logits_.end());
    double total = 0.0;
    std::vector<double>& z = softmax_scratch_;
    for (size_t c = 0; c < classes_; ++c) total += (z[c] = std::exp(static_cast<double>(logits_[c]) - top));
    for (size_t c = 0; c < classes_; ++c) row[c] = static_cast<float>(z[c] / total);
  }
  history_pos_ = (history_pos_ + 1) % smoothing_;
  history_len_ = std::min(history_len_ + 1, smoothing_);
  // np.mean over the rows in storage order: a float32 running sum, then one float32 division
  for (size_t c = 0; c < classes_; ++c) {
    float sum = 0.0f;
    for (size_t r = 0; r < history_len_; ++r) sum += history_[r * classes_ + c];
    smoothed_[c] = sum / static_cast<float>(history_len_);
  }

  std::vector<double>& margin = margin_;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t k = 0; k < keyword_ids_.size(); ++k)
      margin[k] = static_cast<double>(smoothed_[keyword_ids_[k]]) - thresholds_[k];
  }
  long best = -1;
  for (size_t k = 0; k < keyword_ids_.size(); ++k) {
    bool above = margin[k] >= 0.0;
    if (!above) armed_[k] = true;
    if (above && armed_[k] && (best < 0 || margin[k] > margin[best])) best = static_cast<long>(k);
  }
  if (samples_seen_ < quiet_until_ || best < 0) return false;
  armed_[best] = false;
  quiet_until_ = samples_seen_ + refractory_samples_;
  size_t label = keyword_ids_[best];
  double sr = meta_.sample_rate;
  found = Detection{label, smoothed_[label], static_cast<double>(samples_seen_ - window_) / sr,
                    static_cast<double>(samples_seen_) / sr};
  return true;
}

}  // namespace edgeast
