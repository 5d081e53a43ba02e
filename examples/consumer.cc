// Reads what examples/producer.cc (or any shmarrow producer, or a grpc:// Flight bridge) serves at
// the address given as argument (default /tmp/shmarrow.sock) and prints the rows and the sum of
// the first column.
#include <arrow/api.h>
#include <shmarrow/connect.h>
#include <shmarrow/handover.h>

#include <iostream>

arrow::Status Run(const std::string& address) {
  shmarrow::ConsumerOptions options;
  options.connect_timeout_ms = 10000;  // the producer may still be starting
  ARROW_ASSIGN_OR_RAISE(auto consumer, shmarrow::ConnectAny(address, options));
  ARROW_ASSIGN_OR_RAISE(auto table, consumer->ToTable());  // buffers point into the mapping
  if (table->num_columns() == 0 || table->column(0)->type()->id() != arrow::Type::INT64) {
    return arrow::Status::Invalid("expected an int64 first column, got ", *table->schema());
  }
  int64_t sum = 0;
  for (const auto& chunk : table->column(0)->chunks()) {
    for (const auto value : static_cast<const arrow::Int64Array&>(*chunk)) sum += value.value_or(0);
  }
  std::cout << "rows: " << table->num_rows() << " sum: " << sum << "\n";
  return arrow::Status::OK();
}

int main(int argc, char** argv) {
  auto status = Run(argc > 1 ? argv[1] : shmarrow::kDefaultSocketPath);
  if (!status.ok()) std::cerr << status.ToString() << "\n";
  return status.ok() ? 0 : 1;
}
