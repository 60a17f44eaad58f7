// The operator's string attributes, parsed and checked (contract in __init__.py).
#ifndef GLUON_FOCAL_ATTRIBUTES_H_
#define GLUON_FOCAL_ATTRIBUTES_H_

#include <string>
#include <unordered_map>
#include <vector>

namespace gluon_focal {

enum class LabelMode { kDense, kSparse, kBinary };
enum class Normalization { kNone, kSum, kMean, kValid, kPositive };
enum class AlphaKind { kNone, kScalar, kPerClass };

struct Attributes {
  LabelMode mode = LabelMode::kDense;
  int axis = -1;
  int batch_axis = 0;
  double gamma = 2.0;
  AlphaKind alpha_kind = AlphaKind::kScalar;
  std::vector<double> alpha{0.25};   // one value, or one per class
  bool from_sigmoid = false;
  double eps = 1e-12;
  bool has_ignore_label = false;
  double ignore_label = 0.0;
  bool has_background_label = false;
  double background_label = 0.0;
  Normalization normalization = Normalization::kMean;
  double scale = 1.0;
  bool validate = true;
};

typedef std::unordered_map<std::string, std::string> AttributeMap;

// One attribute value: a number, or an integer (surrounding spaces and
// brackets allowed); false when the text is not one.
bool parse_double(const std::string& text, double* out);
bool parse_int(const std::string& text, int* out);

// Parses attrs into *out; on failure returns false with the reason in *error.
bool parse_attributes(const AttributeMap& attrs, Attributes* out, std::string* error);

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_ATTRIBUTES_H_
