// Prints the --help and --version of llama.cpp's own argument parser for llama-server (or llama-cli), without
// compiling the server: moeplace stores that text as its default llama.cpp build (moeplace/data/help/).
// Build against a llama.cpp build tree with LLAMA_BUILD_COMMON=ON (llama-cpp-python's wheel build is one):
//   g++ -std=c++17 llama-help.cpp -I$SRC/common -I$SRC/include -I$SRC/ggml/include -I$SRC/vendor \
//       -L$BUILD/bin -lllama-common -lllama -lggml -lggml-base -Wl,-rpath,$BUILD/bin -o llama-help
//   ./llama-help server --help
#include "arg.h"
#include "common.h"
#include <cstring>
int main(int argc, char ** argv) {
    // argv[1] selects the example: "server" or "cli"; the rest goes to common_params_parse as usual.
    llama_example ex = (argc > 1 && std::strcmp(argv[1], "cli") == 0) ? LLAMA_EXAMPLE_CLI : LLAMA_EXAMPLE_SERVER;
    common_params params;
    argv[1] = argv[0];
    return common_params_parse(argc - 1, argv + 1, params, ex) ? 0 : 1;
}
