// Keyword spotting in an iOS app: AVAudioEngine microphone -> 16 kHz mono float -> the edgeast C ABI.
// Not compiled or run here (no Xcode on the machine that wrote it); copy it into your app target.
//
//   let spotter = try KeywordSpotter(modelPath: Bundle.main.path(forResource: "model", ofType: "pte")!)
//   spotter.onDetection = { d in print(d.keyword, d.score, d.endS) }   // called on the audio queue
//   try spotter.start()   // needs NSMicrophoneUsageDescription in Info.plist and an active record session
import AVFoundation

struct KeywordDetection {
    let keyword: String
    let score: Float
    let startS: Double
    let endS: Double
}

enum KeywordSpotterError: Error {
    case native(String)  // edgeast_kws_last_error()
    case audio(String)
}

final class KeywordSpotter {
    var onDetection: ((KeywordDetection) -> Void)?
    let keywords: [String]

    private let handle: OpaquePointer
    private let engine = AVAudioEngine()
    private let queue = DispatchQueue(label: "edgeast.kws")  // the detector is used from this queue only
    private var converter: AVAudioConverter?

    /// `metaPath` nil: model.json beside the .pte (bundle both).
    init(modelPath: String, metaPath: String? = nil, threads: UInt32 = 1) throws {
        try KeywordSpotter.check(edgeast_kws_set_num_threads(threads))
        var created: OpaquePointer?
        try KeywordSpotter.check(edgeast_kws_create(modelPath, metaPath, &created))
        handle = created!
        keywords = (0..<edgeast_kws_num_keywords(handle)).map { String(cString: edgeast_kws_keyword(handle, $0)) }
    }

    deinit {
        stop()
        edgeast_kws_destroy(handle)
    }

    /// Safe while listening: the native detector guards its thresholds.
    func setThreshold(_ keyword: String, _ value: Float) throws {
        try KeywordSpotter.check(edgeast_kws_set_threshold(handle, keyword, value))
    }

    func start() throws {
        let input = engine.inputNode
        let micFormat = input.outputFormat(forBus: 0)
        let rate = Double(edgeast_kws_sample_rate(handle))
        guard let modelFormat = AVAudioFormat(commonFormat: .pcmFormatFloat32, sampleRate: rate, channels: 1,
                                              interleaved: false),
              let converter = AVAudioConverter(from: micFormat, to: modelFormat) else {
            throw KeywordSpotterError.audio("cannot convert \(micFormat) to \(rate) Hz mono float")
        }
        self.converter = converter
        input.installTap(onBus: 0, bufferSize: 4096, format: micFormat) { [weak self] buffer, _ in
            self?.queue.async { self?.process(buffer, to: modelFormat) }  // keep the audio thread short
        }
        engine.prepare()
        try engine.start()
    }

    func stop() {
        engine.inputNode.removeTap(onBus: 0)
        engine.stop()
        queue.sync {}  // let queued chunks finish before the handle can go away
    }

    private func process(_ buffer: AVAudioPCMBuffer, to format: AVAudioFormat) {
        guard let converter = converter else { return }
        let capacity = AVAudioFrameCount(Double(buffer.frameLength) * format.sampleRate / buffer.format.sampleRate) + 1
        guard let out = AVAudioPCMBuffer(pcmFormat: format, frameCapacity: capacity) else { return }
        var given = false
        converter.convert(to: out, error: nil) { _, status in
            if given { status.pointee = .noDataNow; return nil }
            given = true
            status.pointee = .haveData
            return buffer
        }
        guard let samples = out.floatChannelData?[0], out.frameLength > 0 else { return }
        var found = 0
        guard edgeast_kws_push_float(handle, samples, Int(out.frameLength), &found) == Int32(EDGEAST_KWS_OK.rawValue)
        else { return print("edgeast_kws:", String(cString: edgeast_kws_last_error())) }
        for i in 0..<found {
            var d = edgeast_kws_detection()
            edgeast_kws_detection_at(handle, i, &d)
            onDetection?(KeywordDetection(keyword: String(cString: d.keyword), score: d.score,
                                          startS: d.start_s, endS: d.end_s))
        }
    }

    private static func check(_ status: Int32) throws {
        if status != Int32(EDGEAST_KWS_OK.rawValue) {
            throw KeywordSpotterError.native(String(cString: edgeast_kws_last_error()))
        }
    }
}
