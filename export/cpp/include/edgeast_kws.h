/* edgeast keyword spotting: a C ABI over an exported `.pte` and its `model.json`.
 *
 * The same detector as the Python `edgeast.runtime.StreamingDetector`: a 1 s
 * window slides one hop (100 ms) at a time, each hop runs the model once, the
 * softmax posteriors of the last `smoothing_hops` hops are averaged, and a
 * keyword fires when its smoothed score reaches its threshold, followed by a
 * refractory period; a keyword that fired re-arms once its score has dropped
 * below its threshold. Fed the same samples, both give the same detections.
 *
 * Every call returns EDGEAST_KWS_OK or an error code; `edgeast_kws_last_error()`
 * then says what went wrong in one line (per thread). A handle is used by one
 * thread at a time, except `edgeast_kws_set_threshold`, which may be called
 * from another thread while audio is being pushed.
 */
#ifndef EDGEAST_KWS_H
#define EDGEAST_KWS_H

#include <stddef.h>
#include <stdint.h>

/* The library is built with hidden symbols; only these functions are exported. */
#if defined(__GNUC__) || defined(__clang__)
#define EDGEAST_KWS_API __attribute__((visibility("default")))
#else
#define EDGEAST_KWS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edgeast_kws edgeast_kws;

enum edgeast_kws_status {
  EDGEAST_KWS_OK = 0,
  EDGEAST_KWS_ERR_ARGUMENT = 1, /* a NULL pointer, an unknown keyword, a value out of range */
  EDGEAST_KWS_ERR_METADATA = 2, /* model.json missing, unreadable or incomplete */
  EDGEAST_KWS_ERR_MODEL = 3,    /* the .pte cannot be loaded (file, kernels, backend) */
  EDGEAST_KWS_ERR_INFERENCE = 4 /* running the model failed */
};

typedef struct {
  const char* keyword; /* owned by the handle, valid until it is destroyed */
  float score;         /* smoothed posterior of the keyword */
  double start_s;      /* the window that held it, in seconds from the first sample */
  double end_s;
} edgeast_kws_detection;

typedef struct {
  uint64_t samples_seen;
  uint64_t windows_run;
  uint64_t windows_skipped; /* silent windows the energy gate kept from the model */
  double mean_infer_ms;
} edgeast_kws_stats;

/* One line describing the last error on this thread ("" if none). */
EDGEAST_KWS_API const char* edgeast_kws_last_error(void);

/* Size ExecuTorch's process-wide thread pool (XNNPACK runs on it). Call before
 * creating any detector: a loaded program keeps the pool it was loaded with. */
EDGEAST_KWS_API int edgeast_kws_set_num_threads(unsigned num_threads);

/* Load `pte_path` and its metadata. `meta_path` NULL: the sidecar beside the
 * model (same stem + .json, else model.json), as the Python runtime looks. */
EDGEAST_KWS_API int edgeast_kws_create(const char* pte_path, const char* meta_path, edgeast_kws** out);
EDGEAST_KWS_API void edgeast_kws_destroy(edgeast_kws* kws);

/* Feed mono PCM at the model's sample rate, any number of samples. The
 * detections this chunk completes are counted in `*num_detections` (may be
 * NULL) and read with edgeast_kws_detection_at until the next push. */
EDGEAST_KWS_API int edgeast_kws_push_float(edgeast_kws* kws, const float* pcm, size_t num_samples, size_t* num_detections);
EDGEAST_KWS_API int edgeast_kws_push_int16(edgeast_kws* kws, const int16_t* pcm, size_t num_samples, size_t* num_detections);
EDGEAST_KWS_API int edgeast_kws_detection_at(const edgeast_kws* kws, size_t index, edgeast_kws_detection* out);

/* Forget the stream: empty window, no history, time back to zero. */
EDGEAST_KWS_API void edgeast_kws_reset(edgeast_kws* kws);

/* Per-keyword thresholds in [0, 1]; filler labels (_unknown_, _silence_) have none. */
EDGEAST_KWS_API int edgeast_kws_set_threshold(edgeast_kws* kws, const char* keyword, float value);
EDGEAST_KWS_API int edgeast_kws_get_threshold(const edgeast_kws* kws, const char* keyword, float* value);

/* Skip the model on windows whose RMS is below `threshold_db` dBFS (e.g. -50);
 * a skipped window counts as all-zero posteriors. */
EDGEAST_KWS_API int edgeast_kws_set_vad(edgeast_kws* kws, int enabled, float threshold_db);

EDGEAST_KWS_API int edgeast_kws_sample_rate(const edgeast_kws* kws);
EDGEAST_KWS_API size_t edgeast_kws_window_samples(const edgeast_kws* kws);
EDGEAST_KWS_API size_t edgeast_kws_hop_samples(const edgeast_kws* kws);
EDGEAST_KWS_API size_t edgeast_kws_num_keywords(const edgeast_kws* kws);
EDGEAST_KWS_API const char* edgeast_kws_keyword(const edgeast_kws* kws, size_t index); /* NULL when out of range */
EDGEAST_KWS_API int edgeast_kws_get_stats(const edgeast_kws* kws, edgeast_kws_stats* out);

#ifdef __cplusplus
}
#endif

#endif /* EDGEAST_KWS_H */
