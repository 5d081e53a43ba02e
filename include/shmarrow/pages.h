// PagePolicy by name (the enum is in shmarrow/types.h): the choice behind TLB misses and page
// faults on large batches.
#pragma once

#include <arrow/result.h>

#include <string>
#include <string_view>

#include "shmarrow/types.h"

namespace shmarrow {

/// "auto", "hugetlb" or "off".
[[nodiscard]] arrow::Result<PagePolicy> ParsePagePolicy(std::string_view name);
[[nodiscard]] std::string PagePolicyName(PagePolicy policy);

}  // namespace shmarrow
