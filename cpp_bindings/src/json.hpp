// A small JSON reader (RFC 8259) for model.json. Objects keep their key order; a repeated key keeps its
// first position and its last value, as Python's json.loads does.
#pragma once
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fgresq::detail {

struct Json {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;
  bool integer = false;  // a Number written without fraction or exponent ("1", not "1.0" / "1e0")
  std::string string;  // a String's value; for an integer Number, its literal digits
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;

  bool is_object() const { return type == Type::Object; }
  bool is_array() const { return type == Type::Array; }
  bool is_string() const { return type == Type::String; }
  bool is_number() const { return type == Type::Number; }
  bool is_bool() const { return type == Type::Bool; }
  bool is_null() const { return type == Type::Null; }
  // A JSON integer literal (what Python reads as int); never a bool.
  bool is_integer() const { return type == Type::Number && integer; }
  // Member of an object, or nullptr (also when this is not an object).
  const Json* get(const std::string& key) const;
};

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parse a whole document; throws JsonError("... at line L column C").
Json parse_json(const std::string& text);

}  // namespace fgresq::detail
