// model.json: a tiny JSON reader (enough for what Python's json.dumps writes) and the fields we use.

#include "meta.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include "error.h"

namespace edgeast {
namespace {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0.0;
  std::string text;
  std::vector<Json> items;                         // Array
  std::vector<std::pair<std::string, Json>> members;  // Object, in file order

  const Json* get(const std::string& key) const {
    for (const auto& m : members)
      if (m.first == key) return &m.second;
    return nullptr;
  }
};

class Parser {
 public:
  Parser(const std::string& s, const std::string& origin) : s_(s), origin_(origin) {}

  Json document() {
    Json v = value(0);
    skip_space();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  const std::string& origin_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw KwsError(EDGEAST_KWS_ERR_METADATA, origin_ + ": not valid JSON (" + what + " at byte " +
                                                 std::to_string(i_) + "); re-export the model");
  }

  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }

  bool take(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }

  Json value(int depth) {
    if (depth > 64) fail("nesting too deep");
    skip_space();
    if (i_ >= s_.size()) fail("unexpected end");
    Json v;
    char c = s_[i_];
    if (c == '{') {
      v.kind = Json::Object;
      ++i_;
      skip_space();
      if (i_ < s_.size() && s_[i_] == '}') return ++i_, v;
      while (true) {
        skip_space();
        if (i_ >= s_.size() || s_[i_] != '"') fail("expected a key");
        std::string key = string();
        skip_space();
        if (i_ >= s_.size() || s_[i_++] != ':') fail("expected ':'");
        v.members.emplace_back(std::move(key), value(depth + 1));
        skip_space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == '}') return ++i_, v;
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Json::Array;
      ++i_;
      skip_space();
      if (i_ < s_.size() && s_[i_] == ']') return ++i_, v;
      while (true) {
        v.items.push_back(value(depth + 1));
        skip_space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == ']') return ++i_, v;
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.kind = Json::String;
      v.text = string();
      return v;
    }
    if (take("true")) { v.kind = Json::Bool; v.boolean = true; return v; }
    if (take("false")) { v.kind = Json::Bool; return v; }
    if (take("null")) return v;
    // Python writes NaN / Infinity for non-finite floats (e.g. in the parity report).
    v.kind = Json::Number;
    if (take("NaN")) { v.number = NAN; return v; }
    if (take("Infinity")) { v.number = INFINITY; return v; }
    if (take("-Infinity")) { v.number = -INFINITY; return v; }
    const char* begin = s_.c_str() + i_;
    char* end = nullptr;
    v.number = std::strtod(begin, &end);
    if (end == begin) fail("unexpected character");
    i_ += static_cast<size_t>(end - begin);
    return v;
  }

  unsigned hex4() {
    if (i_ + 4 > s_.size()) fail("short \\u escape");
    unsigned code = 0;
    for (int k = 0; k < 4; ++k) {
      char h = s_[i_++];
      code <<= 4;
      if (h >= '0' && h <= '9') code |= h - '0';
      else if (h >= 'a' && h <= 'f') code |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') code |= h - 'A' + 10;
      else fail("bad \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    ++i_;  // opening quote
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      char c = s_[i_++];
      if (c == '"') return out;
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && take("\\u")) {  // surrogate pair (json.dumps' ensure_ascii)
            unsigned low = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
};

double number_field(const Json& root, const char* key, double fallback, const std::string& origin) {
  const Json* v = root.get(key);
  if (v == nullptr) return fallback;
  if (v->kind != Json::Number || !std::isfinite(v->number))
    throw KwsError(EDGEAST_KWS_ERR_METADATA, origin + ": field '" + key + "' must be a number; re-export the model");
  return v->number;
}

}  // namespace

double ArtifactMeta::threshold(const std::string& label) const {
  auto it = thresholds.find(label);
  return it == thresholds.end() ? default_threshold : it->second;
}

std::vector<std::string> ArtifactMeta::keywords() const {
  std::vector<std::string> out;
  for (const auto& l : labels)
    if (!(l.size() >= 2 && l.front() == '_' && l.back() == '_')) out.push_back(l);
  return out;
}

ArtifactMeta parse_meta(const std::string& json_text, const std::string& origin) {
  Json root = Parser(json_text, origin).document();
  auto bad = [&](const std::string& what) {
    return KwsError(EDGEAST_KWS_ERR_METADATA, origin + ": " + what + "; re-export the model with `edgeast export`");
  };
  if (root.kind != Json::Object) throw bad("model metadata is not a JSON object");
  const Json* labels = root.get("labels");
  if (labels == nullptr || labels->kind != Json::Array || labels->items.empty()) throw bad("no 'labels' list");
  ArtifactMeta m;
  for (const auto& l : labels->items) {
    if (l.kind != Json::String) throw bad("'labels' holds a non-string");
    m.labels.push_back(l.text);
  }
  m.sample_rate = static_cast<int>(number_field(root, "sample_rate", m.sample_rate, origin));
  m.window_samples = static_cast<long>(number_field(root, "window_samples", m.window_samples, origin));
  m.hop_samples = static_cast<long>(number_field(root, "hop_samples", m.hop_samples, origin));
  m.default_threshold = number_field(root, "default_threshold", m.default_threshold, origin);
  m.smoothing_hops = static_cast<int>(number_field(root, "smoothing_hops", m.smoothing_hops, origin));
  m.refractory_s = number_field(root, "refractory_s", m.refractory_s, origin);
  if (const Json* t = root.get("thresholds")) {
    if (t->kind != Json::Object) throw bad("'thresholds' is not an object");
    for (const auto& kv : t->members) {
      if (kv.second.kind != Json::Number) throw bad("threshold '" + kv.first + "' is not a number");
      m.thresholds[kv.first] = kv.second.number;
    }
  }
  if (m.sample_rate <= 0 || m.window_samples <= 0 || m.hop_samples <= 0 || m.hop_samples > m.window_samples)
    throw bad("sample_rate/window_samples/hop_samples must be positive with hop <= window");
  if (m.smoothing_hops < 1) throw bad("smoothing_hops must be at least 1");
  return m;
}

ArtifactMeta load_meta(const std::string& model_path, const std::string& meta_path) {
  std::string path = meta_path;
  if (path.empty()) {
    size_t slash = model_path.find_last_of('/');
    std::string dir = slash == std::string::npos ? "" : model_path.substr(0, slash + 1);
    size_t dot = model_path.find_last_of('.');
    std::string stem = (dot == std::string::npos || (slash != std::string::npos && dot < slash))
                           ? model_path : model_path.substr(0, dot);
    for (const std::string& candidate : {stem + ".json", dir + "model.json"}) {
      if (std::ifstream(candidate).good()) { path = candidate; break; }
    }
    if (path.empty())
      throw KwsError(EDGEAST_KWS_ERR_METADATA,
                     model_path + ": no metadata sidecar found (looked for " + stem + ".json and " + dir +
                         "model.json); export with `edgeast export` or put its model.json next to it");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw KwsError(EDGEAST_KWS_ERR_METADATA, path + ": cannot open the model metadata");
  std::stringstream text;
  text << in.rdbuf();
  return parse_meta(text.str(), path);
}

}  // namespace edgeast
