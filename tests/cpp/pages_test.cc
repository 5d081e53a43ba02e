// Page policies: each delivers correct data in both modes, consumers map the producer's huge pages
// as huge pages, stats report the page size obtained, and hugetlb without enough free reserved
// pages fails when the memory is created, naming nr_hugepages.
#include <arrow/api.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <string>

#include "arena.h"
#include "mapping.h"
#include "memfd.h"
#include "pages.h"
#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

using internal::kHugePageSize;

constexpr int kTimeoutMs = 20000;
constexpr int64_t kRows = int64_t{1} << 20;  // 8 MiB per column: several huge pages

std::optional<int64_t> ReadNumber(const std::string& path) {
  std::ifstream in(path);
  int64_t value = 0;
  if (!(in >> value)) return std::nullopt;
  return value;
}

int64_t MeminfoValue(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string name;
  int64_t value = 0;
  while (in >> name >> value) {
    if (name == key + ":") return value;
    in.ignore(256, '\n');
  }
  return 0;
}

/// What PagePolicy::kAuto gets from this kernel: huge pages unless shmem THP is never/deny.
int64_t ExpectedAutoPageSize() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (all.empty() || all.find("[never]") != std::string::npos ||
      all.find("[deny]") != std::string::npos) {
    return 4096;
  }
  return kHugePageSize;
}

/// Makes `pages` hugetlb pages free for the test (root raises vm.nr_hugepages, and puts it back
/// when this dies); ok() is false, with the reason in why(), where that cannot be arranged.
class HugetlbReservation {
 public:
  explicit HugetlbReservation(int64_t pages) {
    original_ = ReadNumber(kPath);
    if (!original_) {
      why_ = "no /proc/sys/vm/nr_hugepages (kernel without hugetlb)";
      return;
    }
    const int64_t missing = pages - MeminfoValue("HugePages_Free");
    if (missing > 0) {
      std::ofstream out(kPath);
      out << *original_ + missing << std::endl;
      raised_ = true;
    }
    if (MeminfoValue("HugePages_Free") < pages) {
      why_ = "needs " + std::to_string(pages) + " free hugetlb pages and cannot reserve them " +
             "(not root, or memory too fragmented): raise /proc/sys/vm/nr_hugepages";
    }
  }
  ~HugetlbReservation() {
    if (raised_) std::ofstream(kPath) << *original_ << std::endl;
  }
  bool ok() const { return why_.empty(); }
  const std::string& why() const { return why_; }

 private:
  static constexpr const char* kPath = "/proc/sys/vm/nr_hugepages";
  std::optional<int64_t> original_;
  bool raised_ = false;
  std::string why_;
};

std::shared_ptr<arrow::Schema> TestSchema() {
  return arrow::schema({arrow::field("x", arrow::int64())});
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> MakeBatch(arrow::MemoryPool* pool,
                                                             int64_t seed) {
  arrow::Int64Builder builder(pool);
  ARROW_RETURN_NOT_OK(builder.Reserve(kRows));
  for (int64_t i = 0; i < kRows; ++i) builder.UnsafeAppend(i * 7 + seed);
  ARROW_ASSIGN_OR_RAISE(auto array, builder.Finish());
  return arrow::RecordBatch::Make(TestSchema(), kRows, {array});
}

int64_t ExpectedPageSize(PagePolicy policy) {
  switch (policy) {
    case PagePolicy::kAuto:
      return ExpectedAutoPageSize();
    case PagePolicy::kHugetlb:
      return kHugePageSize;
    case PagePolicy::kOff:
      return 4096;
  }
  return 0;
}

using Case = std::tuple<MemoryMode, PagePolicy>;

class PagesTest : public ::testing::TestWithParam<Case> {
 protected:
  MemoryMode mode() const { return std::get<0>(GetParam()); }
  PagePolicy policy() const { return std::get<1>(GetParam()); }
};

TEST_P(PagesTest, PairDeliversCorrectDataAndReportsThePageSize) {
  // Before the producer: its memory must be unmapped before the pages are given back.
  std::optional<HugetlbReservation> reservation;
  if (policy() == PagePolicy::kHugetlb) {
    reservation.emplace(48);
    if (!reservation->ok()) GTEST_SKIP() << reservation->why();
  }
  const std::string address = test_util::UniqueAbstractName("pages");
  ProducerOptions options;
  options.mode = mode();
  options.pages = policy();
  options.ring_size = int64_t{40} << 20;  // all three batches (the consumer reads after End)
  options.max_consumers = 2;
  options.block_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), options));
  const int64_t page_size = producer->stats().page_size;
  EXPECT_EQ(page_size, ExpectedPageSize(policy())) << PagePolicyName(policy());

  ConsumerOptions consumer_options;
  consumer_options.read_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, consumer_options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  constexpr int kBatches = 3;
  for (int seed = 0; seed < kBatches; ++seed) {
    ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(producer->pool(), seed));
    ASSERT_OK(producer->Publish(batch));
  }
  ASSERT_OK(producer->End());
  EXPECT_EQ(producer->stats().bytes_copied, 0);
  for (int seed = 0; seed < kBatches; ++seed) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr) << "batch " << seed;
    ASSERT_OK_AND_ASSIGN(auto expected, MakeBatch(arrow::default_memory_pool(), seed));
    EXPECT_TRUE(batch->Equals(*expected)) << "batch " << seed;  // reads every page
    // The consumer's mapping, at a 2 MiB boundary, maps the producer's pages at their size.
    const uint8_t* values = batch->column_data(0)->buffers[1]->data();
    ASSERT_OK_AND_ASSIGN(int64_t consumer_page_size, internal::MappedPageSize(values));
    EXPECT_EQ(consumer_page_size, page_size) << "batch " << seed;
  }
  std::shared_ptr<arrow::RecordBatch> end;
  ASSERT_OK(consumer->ReadNext(&end));
  EXPECT_EQ(end, nullptr);
}

INSTANTIATE_TEST_SUITE_P(
    ModesAndPolicies, PagesTest,
    ::testing::Combine(::testing::Values(MemoryMode::kRing, MemoryMode::kSealed),
                       ::testing::Values(PagePolicy::kAuto, PagePolicy::kHugetlb,
                                         PagePolicy::kOff)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param) == MemoryMode::kRing ? "Ring" : "Sealed") + "_" +
             PagePolicyName(std::get<1>(info.param));
    });

TEST(PagesTest, HugetlbWithTooFewFreePagesFailsAtCreationNamingNrHugepages) {
  if (ReadNumber("/proc/sys/vm/nr_overcommit_hugepages").value_or(0) > 0) {
    GTEST_SKIP() << "vm.nr_overcommit_hugepages > 0: the kernel may hand out surplus pages";
  }
  if (!ReadNumber("/proc/sys/vm/nr_hugepages")) GTEST_SKIP() << "kernel without hugetlb";
  ProducerOptions options;
  options.pages = PagePolicy::kHugetlb;
  // One page more than are free now.
  options.ring_size = (MeminfoValue("HugePages_Free") + 1) * kHugePageSize;
  EXPECT_ERROR_CONTAINS(
      Producer::Listen(test_util::UniqueAbstractName("pages"), TestSchema(), options),
      "nr_hugepages");
  if (MeminfoValue("HugePages_Free") == 0) {
    options.mode = MemoryMode::kSealed;  // its probe needs one page
    EXPECT_ERROR_CONTAINS(
        Producer::Listen(test_util::UniqueAbstractName("pages"), TestSchema(), options),
        "nr_hugepages");
  }
}

TEST(PagesTest, MappingsStartAtHugePageBoundaries) {
  for (int64_t size : {int64_t{4096}, kHugePageSize, 3 * kHugePageSize + 4096}) {
    ASSERT_OK_AND_ASSIGN(auto memfd, internal::Memfd::Create("pages-test"));
    ASSERT_OK(memfd.Resize(size));
    ASSERT_OK_AND_ASSIGN(auto mapping, internal::Mapping::MapReadOnly(memfd.fd(), size));
    if (size >= kHugePageSize) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(mapping.data()) % kHugePageSize, 0u) << size;
    }
    EXPECT_EQ(mapping.size(), size);
  }
}

// A sealed arena's stream past its first 2 MiB ends its file on a huge page where kAuto gets
// huge pages (truncating inside one would zero its tail and split it), at the stream's own size
// elsewhere; either way the stream's bytes are intact and what follows them reads as zeros.
TEST(PagesTest, SealedArenaEndsOnAHugePageWhereItsPagesAreHuge) {
  for (const PagePolicy policy : {PagePolicy::kAuto, PagePolicy::kOff}) {
    ASSERT_OK_AND_ASSIGN(auto arena,
                         internal::Arena::Create("pages-seal", 8 * kHugePageSize, policy));
    const int64_t size = 2 * kHugePageSize + 5000;
    ASSERT_OK_AND_ASSIGN(int64_t at, arena->Reserve(size));
    std::memset(arena->base() + at, 0x5A, static_cast<size_t>(size - at));
    ASSERT_OK_AND_ASSIGN(UniqueFd fd, arena->SealAt(size));
    struct stat st{};
    ASSERT_EQ(::fstat(fd.get(), &st), 0);
    const bool huge = policy == PagePolicy::kAuto && ExpectedAutoPageSize() == kHugePageSize;
    EXPECT_EQ(st.st_size, huge ? 3 * kHugePageSize : size) << PagePolicyName(policy);
    ASSERT_OK_AND_ASSIGN(auto mapping, internal::Mapping::MapReadOnly(fd.get(), st.st_size));
    const uint8_t* bytes = mapping.data();
    int64_t wrong = 0;
    for (int64_t i = at; i < st.st_size; ++i) wrong += bytes[i] != (i < size ? 0x5A : 0);
    EXPECT_EQ(wrong, 0) << PagePolicyName(policy);
  }
}

TEST(PagesTest, PolicyNamesRoundTrip) {
  for (auto policy : {PagePolicy::kAuto, PagePolicy::kHugetlb, PagePolicy::kOff}) {
    ASSERT_OK_AND_ASSIGN(auto parsed, ParsePagePolicy(PagePolicyName(policy)));
    EXPECT_EQ(parsed, policy);
  }
  EXPECT_ERROR_CONTAINS(ParsePagePolicy("huge"), "auto, hugetlb, off");
}

}  // namespace
}  // namespace shmarrow
