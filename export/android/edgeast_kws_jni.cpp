// JNI shim between KeywordSpotter.kt and the edgeast_kws C ABI (export/cpp/include/edgeast_kws.h).
// Not built here (no Android NDK on the machine that wrote it): compile it with export/cpp's sources
// into libedgeast_kws_jni.so, see README.md.

#include <jni.h>

#include <string>

#include "edgeast_kws.h"

namespace {

void throw_java(JNIEnv* env, const char* message) {
  jclass cls = env->FindClass("java/lang/IllegalStateException");
  env->ThrowNew(cls, message);
}

edgeast_kws* handle(jlong ptr) { return reinterpret_cast<edgeast_kws*>(ptr); }

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_org_edgeast_kws_KeywordSpotter_nativeCreate(JNIEnv* env, jclass, jstring pte,
                                                                          jstring meta, jint threads) {
  if (threads > 0 && edgeast_kws_set_num_threads(static_cast<unsigned>(threads)) != EDGEAST_KWS_OK) {
    throw_java(env, edgeast_kws_last_error());
    return 0;
  }
  const char* pte_path = env->GetStringUTFChars(pte, nullptr);
  const char* meta_path = meta ? env->GetStringUTFChars(meta, nullptr) : nullptr;
  edgeast_kws* kws = nullptr;
  int status = edgeast_kws_create(pte_path, meta_path, &kws);
  env->ReleaseStringUTFChars(pte, pte_path);
  if (meta_path) env->ReleaseStringUTFChars(meta, meta_path);
  if (status != EDGEAST_KWS_OK) throw_java(env, edgeast_kws_last_error());
  return reinterpret_cast<jlong>(kws);
}

JNIEXPORT void JNICALL Java_org_edgeast_kws_KeywordSpotter_nativeDestroy(JNIEnv*, jclass, jlong ptr) {
  edgeast_kws_destroy(handle(ptr));
}

// Pushes `count` int16 samples; returns the detections as a flat array [keywordIndex, score, startS, endS]*
// (keyword index into nativeKeywords) so that no Java object is built per detection.
JNIEXPORT jfloatArray JNICALL Java_org_edgeast_kws_KeywordSpotter_nativePush(JNIEnv* env, jclass, jlong ptr,
                                                                              jshortArray pcm, jint count) {
  edgeast_kws* kws = handle(ptr);
  jshort* samples = env->GetShortArrayElements(pcm, nullptr);
  size_t found = 0;
  int status = edgeast_kws_push_int16(kws, reinterpret_cast<const int16_t*>(samples), static_cast<size_t>(count), &found);
  env->ReleaseShortArrayElements(pcm, samples, JNI_ABORT);  // read only: no copy back
  if (status != EDGEAST_KWS_OK) {
    throw_java(env, edgeast_kws_last_error());
    return nullptr;
  }
  jfloatArray out = env->NewFloatArray(static_cast<jsize>(4 * found));
  for (size_t i = 0; i < found; ++i) {
    edgeast_kws_detection d;
    edgeast_kws_detection_at(kws, i, &d);
    jfloat index = -1;
    for (size_t k = 0; k < edgeast_kws_num_keywords(kws); ++k)
      if (std::string(edgeast_kws_keyword(kws, k)) == d.keyword) index = static_cast<jfloat>(k);
    jfloat row[4] = {index, d.score, static_cast<jfloat>(d.start_s), static_cast<jfloat>(d.end_s)};
    env->SetFloatArrayRegion(out, static_cast<jsize>(4 * i), 4, row);
  }
  return out;
}

JNIEXPORT jobjectArray JNICALL Java_org_edgeast_kws_KeywordSpotter_nativeKeywords(JNIEnv* env, jclass, jlong ptr) {
  edgeast_kws* kws = handle(ptr);
  size_t n = edgeast_kws_num_keywords(kws);
  jobjectArray out = env->NewObjectArray(static_cast<jsize>(n), env->FindClass("java/lang/String"), nullptr);
  for (size_t k = 0; k < n; ++k)
    env->SetObjectArrayElement(out, static_cast<jsize>(k), env->NewStringUTF(edgeast_kws_keyword(kws, k)));
  return out;
}

JNIEXPORT void JNICALL Java_org_edgeast_kws_KeywordSpotter_nativeSetThreshold(JNIEnv* env, jclass, jlong ptr,
                                                                               jstring keyword, jfloat value) {
  const char* name = env->GetStringUTFChars(keyword, nullptr);
  int status = edgeast_kws_set_threshold(handle(ptr), name, value);
  env->ReleaseStringUTFChars(keyword, name);
  if (status != EDGEAST_KWS_OK) throw_java(env, edgeast_kws_last_error());
}

JNIEXPORT jint JNICALL Java_org_edgeast_kws_KeywordSpotter_nativeSampleRate(JNIEnv*, jclass, jlong ptr) {
  return edgeast_kws_sample_rate(handle(ptr));
}

JNIEXPORT jint JNICALL Java_org_edgeast_kws_KeywordSpotter_nativeHopSamples(JNIEnv*, jclass, jlong ptr) {
  return static_cast<jint>(edgeast_kws_hop_samples(handle(ptr)));
}

}  // extern "C"
