// Loads a presets INI with llama.cpp's own reader (common/preset.cpp) and prints each preset as the argument list
// it becomes: the oracle for moeplace's llama-server-preset target. Build as .ci/llama-help.cpp says.
//   ./llama-preset models-preset.ini
#include "arg.h"
#include "common.h"
#include "preset.h"
#include <cstdio>
int main(int argc, char ** argv) {
    if (argc < 2) return 2;
    try {
        common_preset_context ctx(LLAMA_EXAMPLE_SERVER);
        common_preset global;
        auto presets = ctx.load_from_ini(argv[1], global);
        for (const auto & [name, p] : presets) {
            printf("[%s]", name.c_str());
            for (const auto & a : p.to_args()) printf(" <%s>", a.c_str());
            printf("\n");
        }
    } catch (const std::exception & e) { fprintf(stderr, "error: %s\n", e.what()); return 1; }
    return 0;
}
