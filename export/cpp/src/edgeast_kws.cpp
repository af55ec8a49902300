// The C ABI: a thin shell that turns C++ exceptions into status codes and a per-thread message.

#include "edgeast_kws.h"

#include <string>
#include <vector>

#include "detector.h"
#include "error.h"
#include "et_model.h"

struct edgeast_kws {
  edgeast::Detector detector;
  std::vector<edgeast::Detection> found;  // the last push's detections
};

namespace {

thread_local std::string last_error;

template <typename Body>
int guarded(Body&& body) {
  try {
    body();
    last_error.clear();
    return EDGEAST_KWS_OK;
  } catch (const edgeast::KwsError& e) {
    last_error = e.what();
    return e.status;
  } catch (const std::exception& e) {
    last_error = std::string("edgeast_kws: ") + e.what();
    return EDGEAST_KWS_ERR_MODEL;
  }
}

void require(bool ok, const char* what) {
  if (!ok) throw edgeast::KwsError(EDGEAST_KWS_ERR_ARGUMENT, std::string(what) + " must not be NULL");
}

template <typename Sample>
int push(edgeast_kws* kws, const Sample* pcm, size_t n, double scale, size_t* num_detections) {
  return guarded([&] {
    require(kws != nullptr, "the detector handle");
    require(pcm != nullptr || n == 0, "the PCM buffer");
    kws->found.clear();
    try {
      kws->detector.push(pcm, n, scale, kws->found);
    } catch (...) {
      if (num_detections) *num_detections = kws->found.size();
      throw;
    }
    if (num_detections) *num_detections = kws->found.size();
  });
}

}  // namespace

extern "C" {

const char* edgeast_kws_last_error(void) { return last_error.c_str(); }

int edgeast_kws_set_num_threads(unsigned num_threads) {
  return guarded([&] {
    if (num_threads == 0) throw edgeast::KwsError(EDGEAST_KWS_ERR_ARGUMENT, "num_threads must be at least 1");
    edgeast::set_executorch_threads(num_threads);
  });
}

int edgeast_kws_create(const char* pte_path, const char* meta_path, edgeast_kws** out) {
  return guarded([&] {
    require(out != nullptr, "the output handle pointer");
    *out = nullptr;
    require(pte_path != nullptr, "the .pte path");
    edgeast::ArtifactMeta meta = edgeast::load_meta(pte_path, meta_path ? meta_path : "");
    auto model = edgeast::load_executorch_model(pte_path, meta.window_samples, meta.labels.size());
    *out = new edgeast_kws{edgeast::Detector(std::move(meta), std::move(model)), {}};
    (*out)->found.reserve(16);
  });
}

void edgeast_kws_destroy(edgeast_kws* kws) { delete kws; }

int edgeast_kws_push_float(edgeast_kws* kws, const float* pcm, size_t num_samples, size_t* num_detections) {
  return push(kws, pcm, num_samples, 1.0, num_detections);
}

int edgeast_kws_push_int16(edgeast_kws* kws, const int16_t* pcm, size_t num_samples, size_t* num_detections) {
  return push(kws, pcm, num_samples, 1.0 / 32768.0, num_detections);
}

int edgeast_kws_detection_at(const edgeast_kws* kws, size_t index, edgeast_kws_detection* out) {
  return guarded([&] {
    require(kws != nullptr && out != nullptr, "the detector handle and the output");
    if (index >= kws->found.size())
      throw edgeast::KwsError(EDGEAST_KWS_ERR_ARGUMENT, "detection " + std::to_string(index) + ": the last push gave " +
                                                            std::to_string(kws->found.size()));
    const edgeast::Detection& d = kws->found[index];
    *out = {kws->detector.meta().labels[d.label].c_str(), d.score, d.start_s, d.end_s};
  });
}

void edgeast_kws_reset(edgeast_kws* kws) {
  if (kws == nullptr) return;
  kws->detector.reset();
  kws->found.clear();
}

int edgeast_kws_set_threshold(edgeast_kws* kws, const char* keyword, float value) {
  return guarded([&] {
    require(kws != nullptr && keyword != nullptr, "the detector handle and the keyword");
    kws->detector.set_threshold(keyword, value);
  });
}

int edgeast_kws_get_threshold(const edgeast_kws* kws, const char* keyword, float* value) {
  return guarded([&] {
    require(kws != nullptr && keyword != nullptr && value != nullptr, "the detector handle, keyword and output");
    *value = static_cast<float>(kws->detector.threshold(keyword));
  });
}

int edgeast_kws_set_vad(edgeast_kws* kws, int enabled, float threshold_db) {
  return guarded([&] {
    require(kws != nullptr, "the detector handle");
    kws->detector.set_vad(enabled != 0, threshold_db);
  });
}

int edgeast_kws_sample_rate(const edgeast_kws* kws) { return kws ? kws->detector.meta().sample_rate : 0; }

size_t edgeast_kws_window_samples(const edgeast_kws* kws) {
  return kws ? static_cast<size_t>(kws->detector.meta().window_samples) : 0;
}

size_t edgeast_kws_hop_samples(const edgeast_kws* kws) {
  return kws ? static_cast<size_t>(kws->detector.meta().hop_samples) : 0;
}

size_t edgeast_kws_num_keywords(const edgeast_kws* kws) { return kws ? kws->detector.keyword_ids().size() : 0; }

const char* edgeast_kws_keyword(const edgeast_kws* kws, size_t index) {
  if (kws == nullptr || index >= kws->detector.keyword_ids().size()) return nullptr;
  return kws->detector.meta().labels[kws->detector.keyword_ids()[index]].c_str();
}

int edgeast_kws_get_stats(const edgeast_kws* kws, edgeast_kws_stats* out) {
  return guarded([&] {
    require(kws != nullptr && out != nullptr, "the detector handle and the output");
    const edgeast::Detector& d = kws->detector;
    double ms = d.windows_run() ? 1000.0 * d.infer_seconds() / static_cast<double>(d.windows_run()) : 0.0;
    *out = {d.samples_seen(), d.windows_run(), d.windows_skipped(), ms};
  });
}

}  // extern "C"
