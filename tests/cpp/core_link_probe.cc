// Links only shmarrow::shmarrow; tests/cpp/check_no_flight.sh inspects it and runs it. Connects to
// the address in argv[1] and prints the result.
#include <iostream>

#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: core_link_probe ADDRESS\n";
    return 2;
  }
  auto consumer = shmarrow::Consumer::Connect(argv[1]);
  std::cout << (consumer.ok() ? "connected" : consumer.status().ToString()) << "\n";
  return consumer.ok() ? 0 : 1;
}
