// kws_stream: stream a WAV file through the C ABI and print each detection as a JSON line.
//
//   kws_stream model.pte speech.wav [--threshold yes=0.6]... [--chunk 1600] [--threads 1] [--vad-db -50] [--stats]
//
// The WAV must be mono at the model's sample rate, 16-bit PCM or 32-bit float. Audio is pushed in chunks
// of `--chunk` samples (default: one hop), as a microphone callback would. `--stats` warms the model up
// on the first window, then prints {"stats": ...} (windows, model ms per window, real-time factor) to stderr.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "edgeast_kws.h"

namespace {

struct Wav {
  int sample_rate = 0;
  std::vector<int16_t> pcm16;  // one of the two is filled, as stored in the file
  std::vector<float> pcm32;
  size_t samples() const { return pcm16.empty() ? pcm32.size() : pcm16.size(); }
};

uint32_t le32(const unsigned char* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }
uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

// A RIFF/WAVE reader for mono 16-bit PCM or 32-bit float (plain or WAVE_FORMAT_EXTENSIBLE). Empty string: ok.
std::string read_wav(const char* path, Wav& wav) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::string(path) + ": cannot open";
  std::vector<unsigned char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (b.size() < 12 || std::memcmp(b.data(), "RIFF", 4) != 0 || std::memcmp(b.data() + 8, "WAVE", 4) != 0)
    return std::string(path) + ": not a RIFF/WAVE file";
  int format = 0, channels = 0, bits = 0;
  for (size_t pos = 12; pos + 8 <= b.size();) {
    uint32_t size = le32(b.data() + pos + 4);
    const unsigned char* body = b.data() + pos + 8;
    if (size > b.size() - pos - 8) size = static_cast<uint32_t>(b.size() - pos - 8);  // truncated last chunk
    if (std::memcmp(b.data() + pos, "fmt ", 4) == 0 && size >= 16) {
      format = le16(body);
      channels = le16(body + 2);
      wav.sample_rate = static_cast<int>(le32(body + 4));
      bits = le16(body + 14);
      if (format == 0xFFFE && size >= 26) format = le16(body + 24);  // the sub-format GUID starts with the tag
    } else if (std::memcmp(b.data() + pos, "data", 4) == 0) {
      if (channels != 1) return std::string(path) + ": " + std::to_string(channels) + " channels; give a mono file";
      if (format == 1 && bits == 16) {
        wav.pcm16.resize(size / 2);
        for (size_t i = 0; i < wav.pcm16.size(); ++i) wav.pcm16[i] = static_cast<int16_t>(le16(body + 2 * i));
      } else if (format == 3 && bits == 32) {
        wav.pcm32.resize(size / 4);
        std::memcpy(wav.pcm32.data(), body, wav.pcm32.size() * 4);  // x86/ARM are little-endian
      } else {
        return std::string(path) + ": format " + std::to_string(format) + " with " + std::to_string(bits) +
               " bits; convert it to 16-bit PCM or 32-bit float";
      }
      return "";
    }
    pos += 8 + size + (size & 1);
  }
  return std::string(path) + ": no fmt/data chunk";
}

int fail(const std::string& message) {
  std::fprintf(stderr, "kws_stream: %s\n", message.c_str());
  return 1;
}

void print_json_string(const char* s) {
  std::putchar('"');
  for (; *s; ++s) {
    if (*s == '"' || *s == '\\') std::printf("\\%c", *s);
    else if (static_cast<unsigned char>(*s) < 0x20) std::printf("\\u%04x", *s);
    else std::putchar(*s);
  }
  std::putchar('"');
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3)
    return fail("usage: kws_stream model.pte file.wav [--threshold KEYWORD=VALUE]... [--chunk SAMPLES] "
                "[--threads N] [--vad-db DB] [--stats]");
  const char* model_path = argv[1];
  const char* wav_path = argv[2];
  std::vector<std::pair<std::string, float>> thresholds;
  size_t chunk = 0;
  unsigned threads = 0;
  bool vad = false, stats = false;
  float vad_db = 0.0f;
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "--threshold" && has_value) {
      std::string kv = argv[++i];
      size_t eq = kv.find('=');
      if (eq == std::string::npos) return fail("--threshold " + kv + ": expected KEYWORD=VALUE");
      thresholds.emplace_back(kv.substr(0, eq), std::strtof(kv.c_str() + eq + 1, nullptr));
    } else if (arg == "--chunk" && has_value) {
      chunk = std::strtoul(argv[++i], nullptr, 10);
    } else if (arg == "--threads" && has_value) {
      threads = static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg == "--vad-db" && has_value) {
      vad = true;
      vad_db = std::strtof(argv[++i], nullptr);
    } else if (arg == "--stats") {
      stats = true;
    } else {
      return fail("unknown option " + arg);
    }
  }

  if (threads && edgeast_kws_set_num_threads(threads) != EDGEAST_KWS_OK) return fail(edgeast_kws_last_error());
  edgeast_kws* kws = nullptr;
  if (edgeast_kws_create(model_path, nullptr, &kws) != EDGEAST_KWS_OK) return fail(edgeast_kws_last_error());
  for (const auto& t : thresholds)
    if (edgeast_kws_set_threshold(kws, t.first.c_str(), t.second) != EDGEAST_KWS_OK) {
      edgeast_kws_destroy(kws);
      return fail(edgeast_kws_last_error());
    }
  if (vad) edgeast_kws_set_vad(kws, 1, vad_db);

  Wav wav;
  std::string err = read_wav(wav_path, wav);
  if (err.empty() && wav.sample_rate != edgeast_kws_sample_rate(kws))
    err = std::string(wav_path) + ": " + std::to_string(wav.sample_rate) + " Hz; the model takes " +
          std::to_string(edgeast_kws_sample_rate(kws)) + " Hz, resample it first";
  if (!err.empty()) {
    edgeast_kws_destroy(kws);
    return fail(err);
  }
  if (chunk == 0) chunk = edgeast_kws_hop_samples(kws);

  auto push = [&](size_t from, size_t n, size_t* found) {
    return wav.pcm16.empty() ? edgeast_kws_push_float(kws, wav.pcm32.data() + from, n, found)
                             : edgeast_kws_push_int16(kws, wav.pcm16.data() + from, n, found);
  };
  if (stats) {  // one window through the model so its first-run setup is not timed
    size_t warm = std::min(wav.samples(), edgeast_kws_window_samples(kws));
    push(0, warm, nullptr);
    edgeast_kws_reset(kws);
  }

  int status = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (size_t pos = 0; pos < wav.samples() && status == 0; pos += chunk) {
    size_t found = 0;
    if (push(pos, std::min(chunk, wav.samples() - pos), &found) != EDGEAST_KWS_OK) status = fail(edgeast_kws_last_error());
    for (size_t i = 0; i < found; ++i) {
      edgeast_kws_detection d;
      edgeast_kws_detection_at(kws, i, &d);
      std::printf("{\"keyword\": ");
      print_json_string(d.keyword);
      std::printf(", \"score\": %.6f, \"start_s\": %.4f, \"end_s\": %.4f}\n", d.score, d.start_s, d.end_s);
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fflush(stdout);
  if (stats && status == 0) {
    edgeast_kws_stats s;
    edgeast_kws_get_stats(kws, &s);
    double audio_s = static_cast<double>(wav.samples()) / wav.sample_rate;
    std::fprintf(stderr,
                 "{\"stats\": {\"windows_run\": %llu, \"windows_skipped\": %llu, \"mean_infer_ms\": %.4f, "
                 "\"audio_s\": %.4f, \"processing_s\": %.6f, \"rtf\": %.6f}}\n",
                 static_cast<unsigned long long>(s.windows_run), static_cast<unsigned long long>(s.windows_skipped),
                 s.mean_infer_ms, audio_s, seconds, seconds / audio_s);
  }
  edgeast_kws_destroy(kws);
  return status;
}
