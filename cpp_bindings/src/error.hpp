// The one exception type used inside the library; the C ABI turns it into a status + message.
#pragma once
#include <stdexcept>
#include <string>

#include "fgresq.h"

namespace fgresq::detail {

class Error : public std::runtime_error {
 public:
  Error(fgresq_status status, const std::string& msg) : std::runtime_error(msg), status_(status) {}
  fgresq_status status() const noexcept { return status_; }

 private:
  fgresq_status status_;
};

}  // namespace fgresq::detail
