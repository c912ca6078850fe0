// The one exception the C++ core throws for input it cannot use; the bindings raise it
// as edgedb.errors.InvalidInputError.
#pragma once

#include <stdexcept>

namespace edgedb {

// Raised for maps or parameters that cannot be processed (NaN, out-of-range values...).
class InvalidInput : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

}  // namespace edgedb
