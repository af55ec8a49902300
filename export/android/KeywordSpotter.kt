// Keyword spotting in an Android app through the edgeast C ABI (JNI shim: edgeast_kws_jni.cpp).
// Not compiled or run here (no Android SDK on the machine that wrote it); copy it into your app module.
//
//   val spotter = KeywordSpotter(File(filesDir, "model.pte").path) { d ->
//       Log.i("kws", "${d.keyword} ${d.score} at ${d.endS} s")
//   }
//   spotter.start()      // needs the RECORD_AUDIO permission granted
//   ...
//   spotter.close()
package org.edgeast.kws

import android.annotation.SuppressLint
import android.media.AudioFormat
import android.media.AudioRecord
import android.media.MediaRecorder

data class Detection(val keyword: String, val score: Float, val startS: Float, val endS: Float)

class KeywordSpotter(
    ptePath: String,
    metaPath: String? = null,          // null: model.json beside the .pte
    threads: Int = 1,
    private val onDetection: (Detection) -> Unit,  // called on the audio thread: post to the UI yourself
) : AutoCloseable {
    private var handle: Long = nativeCreate(ptePath, metaPath, threads)
    val keywords: List<String> = nativeKeywords(handle).toList()
    val sampleRate: Int = nativeSampleRate(handle)
    private val hop: Int = nativeHopSamples(handle)
    @Volatile private var running = false
    private var thread: Thread? = null

    /** Safe while listening: the native detector guards its thresholds. */
    fun setThreshold(keyword: String, value: Float) = nativeSetThreshold(handle, keyword, value)

    /** Reads 16-bit mono PCM from the microphone on a thread of its own and feeds it to the detector. */
    @SuppressLint("MissingPermission")
    fun start() {
        check(!running) { "already listening" }
        val minBytes = AudioRecord.getMinBufferSize(sampleRate, AudioFormat.CHANNEL_IN_MONO,
                                                    AudioFormat.ENCODING_PCM_16BIT)
        val record = AudioRecord(MediaRecorder.AudioSource.VOICE_RECOGNITION, sampleRate,
                                 AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT,
                                 maxOf(minBytes, 4 * hop * 2))
        check(record.state == AudioRecord.STATE_INITIALIZED) { "the microphone cannot record $sampleRate Hz mono" }
        running = true
        thread = Thread({
            val chunk = ShortArray(hop)  // one hop per read: one model run per chunk
            record.startRecording()
            try {
                while (running) {
                    val n = record.read(chunk, 0, chunk.size)
                    if (n <= 0) continue
                    val flat = nativePush(handle, chunk, n)
                    for (i in flat.indices step 4) {
                        onDetection(Detection(keywords[flat[i].toInt()], flat[i + 1], flat[i + 2], flat[i + 3]))
                    }
                }
            } finally {
                record.stop()
                record.release()
            }
        }, "edgeast-kws").also { it.start() }
    }

    fun stop() {
        running = false
        thread?.join()
        thread = null
    }

    override fun close() {
        stop()
        if (handle != 0L) nativeDestroy(handle)
        handle = 0L
    }

    private companion object {
        init { System.loadLibrary("edgeast_kws_jni") }
        @JvmStatic external fun nativeCreate(pte: String, meta: String?, threads: Int): Long
        @JvmStatic external fun nativeDestroy(handle: Long)
        @JvmStatic external fun nativePush(handle: Long, pcm: ShortArray, count: Int): FloatArray
        @JvmStatic external fun nativeKeywords(handle: Long): Array<String>
        @JvmStatic external fun nativeSetThreshold(handle: Long, keyword: String, value: Float)
        @JvmStatic external fun nativeSampleRate(handle: Long): Int
        @JvmStatic external fun nativeHopSamples(handle: Long): Int
    }
}
