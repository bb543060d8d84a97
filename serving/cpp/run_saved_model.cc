// run_saved_model: loads an exported tfchat SavedModel the way tensorflow_model_server does
// (C++ LoadSavedModel, tag "serve", XLA compilation disabled, TF Text ops from their op
// libraries) and runs its `serving_default` and `chat` signatures with greedy decoding (and, given --tag,
// `chat_tagged` on the same conversation); given --reply, a reward model's `reward` signature; with
// --classify, a classifier export's `classify` signature.
//
// Build (see tests/test_tf_serving_cpp.py):
//   g++ run_saved_model.cc $(python -c "import tensorflow as tf; print(*tf.sysconfig.get_compile_flags())") \
//       -L$TF -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 -Wl,-rpath,$TF -o run_saved_model
// Usage:
//   run_saved_model EXPORT_VERSION_DIR --ops LIB.so [--ops ...] --max-new N --user TEXT --prompt TEXT [--prompt ...]
//                   [--tag NAME=VALUE ...] [--guidance G]
//   run_saved_model EXPORT_VERSION_DIR --ops LIB.so [--ops ...] --user TEXT --reply TEXT [--reply ...]
//   run_saved_model CLASSIFIER_EXPORT_VERSION_DIR --classify TEXT [--classify TEXT ...]
// Output, one line per result (texts hex-encoded so any bytes survive):
//   generate <row> <num_tokens> <id,id,...> <hex text>
//   chat <row> <num_tokens> <id,id,...> <hex reply>
//   chat_tagged <row> <num_tokens> <id,id,...> <hex reply>
//   reward <row> <num_tokens> <score>        (one row per --reply: [user, reply])
//   classify <row> <score,score,...> <hex label>,<hex label>,... <predicted 0/1,...>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/compiler/jit/flags.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/env.h"
#include "tensorflow/core/public/session.h"

namespace {

using tensorflow::Tensor;

int Fail(const std::string& what, const absl::Status& status) {
  std::cerr << "error: " << what << ": " << status.ToString() << std::endl;
  return 1;
}

std::string Hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out.empty() ? "-" : out;
}

template <typename T>
Tensor Vector(tensorflow::DataType dtype, int n, T value) {
  Tensor t(dtype, tensorflow::TensorShape({n}));
  for (int i = 0; i < n; ++i) t.flat<T>()(i) = value;
  return t;
}

// Runs signature `name` with inputs keyed by their signature names; returns outputs keyed likewise.
absl::Status RunSignature(const tensorflow::SavedModelBundle& bundle, const std::string& name,
                          const std::vector<std::pair<std::string, Tensor>>& inputs,
                          const std::vector<std::string>& output_keys, std::vector<Tensor>* outputs) {
  const auto& sigs = bundle.meta_graph_def.signature_def();
  auto it = sigs.find(name);
  if (it == sigs.end()) return absl::NotFoundError("no signature " + name);
  const auto& sig = it->second;
  if (static_cast<size_t>(sig.inputs().size()) != inputs.size())
    return absl::InvalidArgumentError(name + ": wrong number of inputs");
  std::vector<std::pair<std::string, Tensor>> feeds;
  for (const auto& [key, tensor] : inputs) {
    auto in = sig.inputs().find(key);
    if (in == sig.inputs().end()) return absl::InvalidArgumentError(name + ": no input " + key);
    feeds.emplace_back(in->second.name(), tensor);
  }
  std::vector<std::string> fetches;
  for (const auto& key : output_keys) {
    auto out = sig.outputs().find(key);
    if (out == sig.outputs().end()) return absl::InvalidArgumentError(name + ": no output " + key);
    fetches.push_back(out->second.name());
  }
  return bundle.session->Run(feeds, fetches, {}, outputs);
}

void Print(const std::string& tag, const std::vector<Tensor>& out) {
  // out: text [B], token_ids [B, N], num_tokens [B]
  const auto text = out[0].flat<tensorflow::tstring>();
  const auto ids = out[1].matrix<int32_t>();
  const auto num = out[2].flat<int32_t>();
  for (int b = 0; b < num.size(); ++b) {
    std::ostringstream line;
    line << tag << " " << b << " " << num(b) << " ";
    for (int i = 0; i < num(b); ++i) line << (i ? "," : "") << ids(b, i);
    if (num(b) == 0) line << "-";
    line << " " << Hex(std::string(text(b)));
    std::cout << line.str() << std::endl;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: run_saved_model EXPORT_DIR --ops LIB.so ... --max-new N --user TEXT --prompt TEXT ..." << std::endl;
    return 2;
  }
  // Like tensorflow_model_server: graphs run as they are, never auto-clustered into XLA.
  tensorflow::DisableXlaCompilation();

  std::string export_dir = argv[1];
  std::vector<std::string> prompts, replies, classify, tags;
  std::string user = "Hello";
  int max_new = 8;
  float guidance = 1.0f;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--ops") {
      void* handle = nullptr;
      auto status = tensorflow::Env::Default()->LoadDynamicLibrary(value.c_str(), &handle);
      if (!status.ok()) return Fail("loading op library " + value, status);
    } else if (flag == "--prompt") {
      prompts.push_back(value);
    } else if (flag == "--reply") {
      replies.push_back(value);
    } else if (flag == "--classify") {
      classify.push_back(value);
    } else if (flag == "--tag") {
      tags.push_back(value);
    } else if (flag == "--user") {
      user = value;
    } else if (flag == "--max-new") {
      max_new = std::stoi(value);
    } else if (flag == "--guidance") {
      guidance = std::stof(value);
    } else {
      std::cerr << "unknown flag " << flag << std::endl;
      return 2;
    }
  }

  tensorflow::SavedModelBundle bundle;
  tensorflow::SessionOptions session_options;
  tensorflow::RunOptions run_options;
  auto status = tensorflow::LoadSavedModel(session_options, run_options, export_dir, {"serve"}, &bundle);
  if (!status.ok()) return Fail("LoadSavedModel", status);
  std::cout << "loaded " << bundle.meta_graph_def.signature_def().size() << " signatures" << std::endl;

  if (!replies.empty()) {
    // reward: roles, contents [B, 2] (the user's message, a reply) -> score [B], num_tokens [B].
    const int b = static_cast<int>(replies.size());
    Tensor roles(tensorflow::DT_STRING, tensorflow::TensorShape({b, 2}));
    Tensor contents(tensorflow::DT_STRING, tensorflow::TensorShape({b, 2}));
    for (int i = 0; i < b; ++i) {
      roles.matrix<tensorflow::tstring>()(i, 0) = "user";
      roles.matrix<tensorflow::tstring>()(i, 1) = "assistant";
      contents.matrix<tensorflow::tstring>()(i, 0) = user;
      contents.matrix<tensorflow::tstring>()(i, 1) = replies[i];
    }
    std::vector<Tensor> scored;
    status = RunSignature(bundle, "reward", {{"roles", roles}, {"contents", contents}}, {"score", "num_tokens"}, &scored);
    if (!status.ok()) return Fail("reward", status);
    for (int i = 0; i < b; ++i) {
      char score[32];
      std::snprintf(score, sizeof(score), "%.9g", scored[0].flat<float>()(i));
      std::cout << "reward " << i << " " << scored[1].flat<int32_t>()(i) << " " << score << std::endl;
    }
    return 0;
  }

  if (!classify.empty()) {
    // classify: text [B] -> scores [B, L], labels [B, L], predicted [B, L].
    const int b = static_cast<int>(classify.size());
    Tensor text(tensorflow::DT_STRING, tensorflow::TensorShape({b}));
    for (int i = 0; i < b; ++i) text.flat<tensorflow::tstring>()(i) = classify[i];
    std::vector<Tensor> out;
    status = RunSignature(bundle, "classify", {{"text", text}}, {"scores", "labels", "predicted"}, &out);
    if (!status.ok()) return Fail("classify", status);
    const auto scores = out[0].matrix<float>();
    const auto labels = out[1].matrix<tensorflow::tstring>();
    const auto predicted = out[2].matrix<bool>();
    for (int row = 0; row < b; ++row) {
      std::ostringstream line, names, flags;
      line << "classify " << row << " ";
      for (int j = 0; j < scores.dimension(1); ++j) {
        line << (j ? "," : "") << scores(row, j);
        names << (j ? "," : "") << Hex(std::string(labels(row, j)));
        flags << (j ? "," : "") << (predicted(row, j) ? 1 : 0);
      }
      std::cout << line.str() << " " << names.str() << " " << flags.str() << std::endl;
    }
    return 0;
  }

  auto sampling = [&](int n) {
    return std::vector<std::pair<std::string, Tensor>>{
        {"max_new_tokens", Vector<int32_t>(tensorflow::DT_INT32, n, max_new)},
        {"temperature", Vector<float>(tensorflow::DT_FLOAT, n, 0.0f)},
        {"top_k", Vector<int32_t>(tensorflow::DT_INT32, n, 0)},
        {"top_p", Vector<float>(tensorflow::DT_FLOAT, n, 1.0f)},
        {"seed", Vector<int32_t>(tensorflow::DT_INT32, n, 0)},
    };
  };

  // serving_default: prompts [B] -> text, token_ids, num_tokens.
  const int n = static_cast<int>(prompts.size());
  Tensor prompt(tensorflow::DT_STRING, tensorflow::TensorShape({n}));
  for (int i = 0; i < n; ++i) prompt.flat<tensorflow::tstring>()(i) = prompts[i];
  auto inputs = sampling(n);
  inputs.emplace_back("prompt", prompt);
  std::vector<Tensor> out;
  status = RunSignature(bundle, "serving_default", inputs, {"text", "token_ids", "num_tokens"}, &out);
  if (!status.ok()) return Fail("serving_default", status);
  Print("generate", out);

  // chat: one conversation [1, 2]: a system message and the user's message.
  Tensor roles(tensorflow::DT_STRING, tensorflow::TensorShape({1, 2}));
  Tensor contents(tensorflow::DT_STRING, tensorflow::TensorShape({1, 2}));
  roles.matrix<tensorflow::tstring>()(0, 0) = "system";
  roles.matrix<tensorflow::tstring>()(0, 1) = "user";
  contents.matrix<tensorflow::tstring>()(0, 0) = "You are a helpful assistant.";
  contents.matrix<tensorflow::tstring>()(0, 1) = user;
  inputs = sampling(1);
  inputs.emplace_back("roles", roles);
  inputs.emplace_back("contents", contents);
  out.clear();
  status = RunSignature(bundle, "chat", inputs, {"reply", "token_ids", "num_tokens"}, &out);
  if (!status.ok()) return Fail("chat", status);
  Print("chat", out);

  if (!tags.empty()) {
    // chat_tagged: the same conversation plus tags [1, K] of "name=value" items.
    Tensor tag_items(tensorflow::DT_STRING, tensorflow::TensorShape({1, static_cast<int64_t>(tags.size())}));
    for (size_t i = 0; i < tags.size(); ++i) tag_items.matrix<tensorflow::tstring>()(0, i) = tags[i];
    inputs = sampling(1);
    inputs.emplace_back("roles", roles);
    inputs.emplace_back("contents", contents);
    inputs.emplace_back("tags", tag_items);
    inputs.emplace_back("guidance", Vector<float>(tensorflow::DT_FLOAT, 1, guidance));
    out.clear();
    status = RunSignature(bundle, "chat_tagged", inputs, {"reply", "token_ids", "num_tokens"}, &out);
    if (!status.ok()) return Fail("chat_tagged", status);
    Print("chat_tagged", out);
  }
  return 0;
}
