// The 30-second example: build a column straight in shared memory, seal it, hand it to one
// consumer (examples/consumer.cc, `shmarrow recv` or `python -m shmarrow.recv`) on the socket given
// as argument (default /tmp/shmarrow.sock).
#include <arrow/api.h>
#include <shmarrow/handover.h>
#include <shmarrow/stream_writer.h>

#include <iostream>

arrow::Status Run(const std::string& socket) {
  auto schema = arrow::schema({arrow::field("x", arrow::int64())});
  ARROW_ASSIGN_OR_RAISE(auto writer, shmarrow::SharedStreamWriter::Open(schema));

  arrow::Int64Builder builder(writer->pool());  // column data is written into the memfd
  for (int64_t i = 0; i < 1000; ++i) ARROW_RETURN_NOT_OK(builder.Append(i * i));
  ARROW_ASSIGN_OR_RAISE(auto column, builder.Finish());
  ARROW_RETURN_NOT_OK(writer->WriteRecordBatch(*arrow::RecordBatch::Make(schema, 1000, {column})));

  ARROW_ASSIGN_OR_RAISE(auto sealed, writer->Finish());                   // EOS, trimmed, sealed
  std::cerr << "bytes copied: " << writer->stats().bytes_copied << "\n";  // 0
  return shmarrow::ServeFd(socket, sealed.fd.get());
}

int main(int argc, char** argv) {
  auto status = Run(argc > 1 ? argv[1] : shmarrow::kDefaultSocketPath);
  if (!status.ok()) std::cerr << status.ToString() << "\n";
  return status.ok() ? 0 : 1;
}
