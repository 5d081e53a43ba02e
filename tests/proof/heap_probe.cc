// heap_probe: how much heap building, publishing and reading one large int64 column costs.
//
//   heap_probe [arena|heap] [ROWS]     (default: arena 33554432, i.e. a 256 MiB column)
//
// Run it with LD_PRELOAD=libmalloc_counter.so (and ARROW_DEFAULT_MEMORY_POOL=system, so that
// Arrow's default pool allocates through malloc where the interposer sees it). It reads the
// interposer's running total before and after two phases:
//   produce  SharedStreamWriter::Open, an Int64Builder filling ROWS values 0..ROWS-1, the batch
//            written and the writer finished (sealed).
//            mode arena: the builder allocates from writer->pool(), the memfd arena.
//            mode heap:  the builder allocates from arrow::default_memory_pool() (the control: the
//                        column is on the heap and the writer copies it into the arena).
//   consume  SharedStream::Open on a dup of the sealed fd, OpenReader, every batch read (validated
//            in full, as `shmarrow recv` does) and all values summed with a plain loop.
// and prints one JSON object with both figures, the sum and the placement stats.
// Exit status 0 when all went well (the figures are judged by the caller), 1 on any error.
#include <arrow/api.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>

#include "shmarrow/shared_stream.h"
#include "shmarrow/stream_writer.h"

namespace {

using Counter = long long (*)();

struct Counters {
  Counter bytes = nullptr;
  Counter calls = nullptr;
};

struct Phase {
  long long bytes = 0;
  long long calls = 0;
};

struct Figures {
  Phase produce;
  Phase consume;
  int64_t rows = 0;
  int64_t sum = 0;
  bool in_mapping = false;
  uint64_t producer_inode = 0;
  uint64_t consumer_inode = 0;
  int64_t memfd_bytes = 0;
  shmarrow::PlacementStats stats;
};

arrow::Status Run(bool arena, int64_t rows, const Counters& counters, Figures* out) {
  auto schema = arrow::schema({arrow::field("x", arrow::int64())});

  // Produce.
  long long bytes0 = counters.bytes(), calls0 = counters.calls();
  ARROW_ASSIGN_OR_RAISE(auto writer, shmarrow::SharedStreamWriter::Open(schema));
  {
    arrow::Int64Builder builder(arena ? writer->pool() : arrow::default_memory_pool());
    ARROW_RETURN_NOT_OK(builder.Reserve(rows));
    for (int64_t i = 0; i < rows; ++i) builder.UnsafeAppend(i);
    ARROW_ASSIGN_OR_RAISE(auto column, builder.Finish());
    auto batch = arrow::RecordBatch::Make(schema, rows, {std::move(column)});
    ARROW_RETURN_NOT_OK(writer->WriteRecordBatch(*batch));
  }  // the batch is dropped here: in heap mode its 256 MiB go back to the heap
  ARROW_ASSIGN_OR_RAISE(auto sealed, writer->Finish());
  out->produce = {counters.bytes() - bytes0, counters.calls() - calls0};
  out->stats = writer->stats();
  out->memfd_bytes = sealed.size;
  struct stat st{};
  if (::fstat(sealed.fd.get(), &st) != 0)
    return arrow::Status::IOError("fstat of the sealed memfd");
  out->producer_inode = st.st_ino;

  // Consume: what a receiving process does with the fd it got.
  const int copy = ::dup(sealed.fd.get());
  if (copy < 0) return arrow::Status::IOError("dup of the sealed memfd");
  bytes0 = counters.bytes();
  calls0 = counters.calls();
  {
    ARROW_ASSIGN_OR_RAISE(auto stream, shmarrow::SharedStream::Open(shmarrow::UniqueFd(copy)));
    ARROW_ASSIGN_OR_RAISE(auto reader, stream->OpenReader());
    bool in_mapping = true;
    int64_t total_rows = 0;
    int64_t sum = 0;
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(auto batch, reader->Next());
      if (batch == nullptr) break;
      in_mapping = in_mapping && shmarrow::AllBuffersInside(*stream, *batch);
      const auto& values = static_cast<const arrow::Int64Array&>(*batch->column(0));
      const int64_t* raw = values.raw_values();
      for (int64_t i = 0, n = values.length(); i < n; ++i) sum += raw[i];
      total_rows += batch->num_rows();
    }
    out->rows = total_rows;
    out->sum = sum;
    out->in_mapping = in_mapping;
    out->consumer_inode = stream->inode();
  }
  out->consume = {counters.bytes() - bytes0, counters.calls() - calls0};
  return arrow::Status::OK();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "arena";
  const int64_t rows = argc > 2 ? std::strtoll(argv[2], nullptr, 10) : int64_t{33554432};
  if ((mode != "arena" && mode != "heap") || rows < 0 || argc > 3) {
    std::cerr << "usage: heap_probe [arena|heap] [ROWS]\n";
    return 2;
  }
  Counters counters;
  counters.bytes = reinterpret_cast<Counter>(::dlsym(RTLD_DEFAULT, "malloc_counter_bytes"));
  counters.calls = reinterpret_cast<Counter>(::dlsym(RTLD_DEFAULT, "malloc_counter_calls"));
  if (counters.bytes == nullptr || counters.calls == nullptr) {
    std::cerr << "heap_probe: malloc_counter is not loaded; run with "
                 "LD_PRELOAD=/path/to/libmalloc_counter.so\n";
    return 1;
  }
  Figures figures;
  const auto status = Run(mode == "arena", rows, counters, &figures);
  if (!status.ok()) {
    std::cerr << "heap_probe: " << status.ToString() << "\n";
    return 1;
  }
  std::cout << "{\"mode\":\"" << mode << "\",\"default_pool\":\""
            << arrow::default_memory_pool()->backend_name() << "\",\"rows\":" << figures.rows
            << ",\"sum\":" << figures.sum << ",\"produce_heap_bytes\":" << figures.produce.bytes
            << ",\"produce_heap_calls\":" << figures.produce.calls
            << ",\"consume_heap_bytes\":" << figures.consume.bytes
            << ",\"consume_heap_calls\":" << figures.consume.calls
            << ",\"buffers_in_mapping\":" << (figures.in_mapping ? "true" : "false")
            << ",\"producer_inode\":" << figures.producer_inode
            << ",\"consumer_inode\":" << figures.consumer_inode
            << ",\"memfd_bytes\":" << figures.memfd_bytes
            << ",\"bytes_in_place\":" << figures.stats.bytes_in_place
            << ",\"bytes_copied\":" << figures.stats.bytes_copied
            << ",\"metadata_bytes\":" << figures.stats.metadata_bytes << "}" << std::endl;
  return 0;
}
