// The one exception type inside the library; the C ABI turns it into a status code + message.
#pragma once

#include <stdexcept>
#include <string>

#include "edgeast_kws.h"

namespace edgeast {

class KwsError : public std::runtime_error {
 public:
  KwsError(edgeast_kws_status status, const std::string& message)
      : std::runtime_error(message), status(status) {}
  edgeast_kws_status status;
};

}  // namespace edgeast
