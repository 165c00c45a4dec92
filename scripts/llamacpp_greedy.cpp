// Minimal greedy generator on top of libllama, for cross-checking alpaca.
// Built by scripts/llamacpp.sh into $LLAMACPP_DIR/build/bin/alpaca-llamacpp-greedy.
//
//   alpaca-llamacpp-greedy MODEL N_NEW [N_THREADS] < prompt.txt
//
// Reads the raw prompt bytes from stdin (no chat template, no BOS unless the
// vocabulary asks for it, control-token text such as <|im_start|> parsed as
// specials), then runs exactly N_NEW greedy steps: argmax over the raw logits,
// with NO stop at EOS/EOG and no logit bias (unlike llama-completion's
// --ignore-eos, which biases EOG tokens to -inf). Prints one JSON object:
//   {"prompt_ids":[...],"output_ids":[...],"first_top5_ids":[...],"first_top5_values":[...]}
#include "llama.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

static void print_ids(const char * key, const std::vector<llama_token> & v) {
    printf("\"%s\":[", key);
    for (size_t i = 0; i < v.size(); i++) printf(i ? ",%d" : "%d", v[i]);
    printf("]");
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL N_NEW [N_THREADS] < prompt\n", argv[0]);
        return 2;
    }
    const char * model_path = argv[1];
    const int n_new = atoi(argv[2]);
    const int n_threads = argc > 3 ? atoi(argv[3]) : 2;

    std::string prompt((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());

    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "failed to load %s\n", model_path); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    std::vector<llama_token> ids(prompt.size() + 8);
    int n = llama_tokenize(vocab, prompt.data(), (int) prompt.size(), ids.data(), (int) ids.size(),
                           /*add_special*/ true, /*parse_special*/ true);
    if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
    ids.resize(n);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) std::max(512, n + n_new + 8);
    cp.n_batch = cp.n_ctx;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "failed to create context\n"); return 1; }

    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<llama_token> out;
    std::vector<llama_token> top5;
    std::vector<float> top5v;

    std::vector<llama_token> cur = ids;
    for (int step = 0; step < n_new; step++) {
        if (llama_decode(ctx, llama_batch_get_one(cur.data(), (int) cur.size())) != 0) {
            fprintf(stderr, "decode failed at step %d\n", step);
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (step == 0) {
            std::vector<int> idx(n_vocab);
            std::iota(idx.begin(), idx.end(), 0);
            std::partial_sort(idx.begin(), idx.begin() + 5, idx.end(),
                              [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
            for (int k = 0; k < 5; k++) { top5.push_back(idx[k]); top5v.push_back(logits[idx[k]]); }
        }
        llama_token best = 0;
        for (int t = 1; t < n_vocab; t++) if (logits[t] > logits[best]) best = t;
        out.push_back(best);
        cur.assign(1, best);
    }

    printf("{");
    print_ids("prompt_ids", ids);
    printf(",");
    print_ids("output_ids", out);
    printf(",");
    print_ids("first_top5_ids", top5);
    printf(",\"first_top5_values\":[");
    for (size_t i = 0; i < top5v.size(); i++) printf(i ? ",%.4f" : "%.4f", top5v[i]);
    printf("]}\n");

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
