#include "attributes.h"

#include <cmath>
#include <cstdlib>
#include <sstream>

namespace gluon_focal {
namespace {

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\n[]()"), b = s.find_last_not_of(" \t\n[]()");
  if (a == std::string::npos) return "";
  return s.substr(a, b - a + 1);
}

}  // namespace

bool parse_double(const std::string& text, double* out) {
  std::string s = trim(text);
  if (s.empty()) return false;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0') return false;
  *out = v;
  return true;
}

bool parse_int(const std::string& text, int* out) {
  double v;
  if (!parse_double(text, &v) || v != std::floor(v) || std::fabs(v) > 1e9) return false;
  *out = static_cast<int>(v);
  return true;
}

namespace {

bool is_none(const std::string& text) {
  std::string s = trim(text);
  return s.empty() || s == "none" || s == "None" || s == "null";
}

bool parse_bool(const std::string& text, bool* out) {
  std::string s = trim(text);
  if (s == "1" || s == "true" || s == "True") { *out = true; return true; }
  if (s == "0" || s == "false" || s == "False") { *out = false; return true; }
  return false;
}

bool parse_optional_number(const std::string& text, bool* has, double* value) {
  if (is_none(text)) { *has = false; return true; }
  *has = parse_double(text, value);
  return *has;
}

bool parse_alpha(const std::string& text, Attributes* out, std::ostringstream* why) {
  out->alpha.clear();
  if (is_none(text)) {
    out->alpha_kind = AlphaKind::kNone;
    return true;
  }
  std::string s = trim(text);
  std::stringstream items(s);
  std::string item;
  while (std::getline(items, item, ',')) {
    if (trim(item).empty()) continue;
    double a;
    if (!parse_double(item, &a) || !std::isfinite(a)) {
      *why << "attribute alpha='" << text << "': '" << item << "' is not a number";
      return false;
    }
    out->alpha.push_back(a);
  }
  if (out->alpha.empty()) {
    *why << "attribute alpha='" << text << "' is empty";
    return false;
  }
  // "a," is a one-class list, "a" a scalar
  out->alpha_kind = (out->alpha.size() == 1 && s.find(',') == std::string::npos)
                        ? AlphaKind::kScalar : AlphaKind::kPerClass;
  return true;
}

}  // namespace

bool parse_attributes(const AttributeMap& attrs, Attributes* out, std::string* error) {
  std::ostringstream why;
  for (const auto& kv : attrs) {
    const std::string& key = kv.first;
    const std::string& v = kv.second;
    if (key.size() >= 2 && key[0] == '_' && key[1] == '_') continue;   // MXNet's own
    if (key == "mode") {
      std::string m = trim(v);
      if (m == "dense") out->mode = LabelMode::kDense;
      else if (m == "sparse") out->mode = LabelMode::kSparse;
      else if (m == "binary") out->mode = LabelMode::kBinary;
      else why << "attribute mode='" << v << "' must be 'dense', 'sparse' or 'binary'";
    } else if (key == "axis") {
      if (!parse_int(v, &out->axis)) why << "attribute axis='" << v << "' is not an integer";
    } else if (key == "batch_axis") {
      if (!parse_int(v, &out->batch_axis)) why << "attribute batch_axis='" << v << "' is not an integer";
    } else if (key == "gamma") {
      if (!parse_double(v, &out->gamma) || !(out->gamma >= 0.0) || std::isinf(out->gamma))
        why << "attribute gamma='" << v << "' must be a finite number >= 0";
    } else if (key == "alpha") {
      parse_alpha(v, out, &why);
    } else if (key == "from_sigmoid") {
      if (!parse_bool(v, &out->from_sigmoid)) why << "attribute from_sigmoid='" << v << "' must be 0 or 1";
    } else if (key == "validate") {
      if (!parse_bool(v, &out->validate)) why << "attribute validate='" << v << "' must be 0 or 1";
    } else if (key == "eps") {
      if (!parse_double(v, &out->eps) || !(out->eps >= 0.0 && out->eps < 0.5))
        why << "attribute eps='" << v << "' must be a number in [0, 0.5)";
    } else if (key == "ignore_label") {
      if (!parse_optional_number(v, &out->has_ignore_label, &out->ignore_label))
        why << "attribute ignore_label='" << v << "' must be 'none' or a number";
    } else if (key == "background_label") {
      if (!parse_optional_number(v, &out->has_background_label, &out->background_label))
        why << "attribute background_label='" << v << "' must be 'none' or a number";
    } else if (key == "normalization") {
      std::string n = trim(v);
      if (n == "none") out->normalization = Normalization::kNone;
      else if (n == "sum") out->normalization = Normalization::kSum;
      else if (n == "mean") out->normalization = Normalization::kMean;
      else if (n == "valid") out->normalization = Normalization::kValid;
      else if (n == "positive") out->normalization = Normalization::kPositive;
      else why << "attribute normalization='" << v << "' must be one of none, sum, mean, valid, positive";
    } else if (key == "scale") {
      if (!parse_double(v, &out->scale) || !std::isfinite(out->scale))
        why << "attribute scale='" << v << "' must be a finite number";
    } else {
      why << "unknown attribute '" << key << "' (known: mode, axis, batch_axis, gamma, alpha, "
          "from_sigmoid, eps, ignore_label, background_label, normalization, scale, validate)";
    }
    if (!why.str().empty()) break;
  }
  if (why.str().empty() && out->has_background_label && out->mode != LabelMode::kSparse)
    why << "background_label is only valid with mode='sparse'";
  *error = why.str();
  return error->empty();
}

}  // namespace gluon_focal
