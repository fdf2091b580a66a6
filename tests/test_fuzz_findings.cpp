// Every input that fuzzing or a code read found to crash, hang, blow up memory or trip a
// sanitizer, replayed through the same entry points as the fuzz harnesses (tests/fuzz/): each
// must end in a shiftadd::Error that names the file (or load cleanly). The files live in
// tests/fixtures/fuzz_findings/<target>/; a new finding is a new file there. A few findings are
// generated here instead (too large to commit).
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "loaders/image.h"
#include "loaders/onnx_tensor.h"  // the ONNX protobuf classes
#include "loaders/onnx_vit.h"
#include "shiftadd/dataset.h"
#include "shiftadd/error.h"
#include "tests/fuzz/fuzz_targets.h"

namespace shiftadd {
namespace {

namespace fs = std::filesystem;
const fs::path kFindings = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures/fuzz_findings";

fs::path scratch_dir() {
  const fs::path dir = fs::temp_directory_path() / ("shiftadd_findings_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

// Runs `target` on `bytes` as the harness does; returns the Error's message ("" if it loaded).
std::string replay(const fuzz::Target& target, const std::string& bytes) {
  const fs::path file = scratch_dir() / (std::string("input") + target.extension);
  write_bytes(file, bytes);
  try {
    target.run(file.string());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The message of a finding must name the file (or, for the model target, its directory).
::testing::AssertionResult NamesTheInput(const std::string& message) {
  if (message.empty() || message.find(scratch_dir().string()) != std::string::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "error \"" << message << "\" does not name the input file";
}

TEST(FuzzFindings, EveryCommittedFindingGivesANamedErrorOrLoads) {
  int replayed = 0;
  for (const fuzz::Target& target : fuzz::targets()) {
    const fs::path dir = kFindings / target.name;
    if (!fs::exists(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      SCOPED_TRACE(entry.path().string());
      std::string message;
      EXPECT_NO_THROW(message = replay(target, read_bytes(entry.path())));
      EXPECT_TRUE(NamesTheInput(message));
      ++replayed;
    }
  }
  EXPECT_GE(replayed, 12);
}

// What each of the findings reported with issue 12 now says.
TEST(FuzzFindings, ManualFindingsSayWhatIsWrong) {
  struct Case {
    const char* target;
    const char* file;
    const char* problem;  // "" = loads cleanly
  };
  const Case cases[] = {
      // a Sqrt reading the fc1 output was asked for a second operand (heap overflow)
      {"onnx", "manual-heap-overflow-other_constant.onnx", "expected the exact GELU"},
      // Shape end = 1e12 on a tensor of unknown rank (a 1e12-entry vector): now clamped to the rank
      {"onnx", "manual-oom-target_dims-shape-end.onnx", ""},
      // a reshape target of 1e30 cast to int64 (UB)
      {"onnx", "manual-ubsan-float-cast-Const-ints.onnx", "holds 1e+30 where an integer is expected"},
      // a Shape node with no input: shape folding read input 0 of an empty list (CI fuzz run)
      {"onnx", "ubsan-shape-without-input.onnx", "(Shape): has 0 inputs and 1 outputs; malformed node"},
      // a 200 kB tensor name: std::regex recursed per character (stack overflow)
      {"safetensors", "manual-stack-overflow-std-regex-long-name.safetensors", "needs query, key and value"},
      {"safetensors", "manual-ubsan-contiguous_strides-overflow.safetensors", "strides overflow"},
      {"npy", "manual-ubsan-contiguous_strides-overflow.npy", "strides overflow"},
      // head [2^29, 0] with an id2label of one entry sized a 16 GiB label table
      {"meta", "manual-oom-16GiB-config_labels.safetensors", "'head.weight' [536870912, 0]"},
      // stb_image: Huffman-table overrun and a null memcpy; libjpeg-turbo / libpng refuse them
      {"image", "manual-dht-4080.jpg", "cannot decode JPEG"},
      {"image", "min-stb-dht-build_huffman-info.jpg", "cannot decode JPEG"},
      {"image", "min-stb-dht-build_huffman-load.jpg", "cannot decode JPEG"},
      {"image", "min-stb-png-getn-null.png", "cannot decode PNG"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string message = replay(fuzz::target(c.target), read_bytes(kFindings / c.target / c.file));
    if (*c.problem == '\0')
      EXPECT_EQ(message, "");
    else
      EXPECT_NE(message.find(c.problem), std::string::npos) << message;
  }
}

// Folding and every walk of the recognizer are iterative: a 200k-node Identity chain (on the
// position embedding, a constant, and on the classifier input, an activation) loads.
TEST(FuzzFindings, LongIdentityChainsDoNotOverflowTheStack) {
  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(read_bytes(fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures/onnx/timm_vit_op13.onnx")));
  auto* g = model.mutable_graph();
  const int kChain = 200000;
  // pos_embed -> Identity^kChain, read where pos_embed was.
  const std::string pos = "pos_embed";
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  std::string last = pos;
  for (int i = 0; i < kChain; ++i) {
    onnx::NodeProto* n = nodes.Add();
    n->set_op_type("Identity");
    n->set_name("chain" + std::to_string(i));
    n->add_input(last);
    last = "chain_out" + std::to_string(i);
    n->add_output(last);
  }
  for (auto& n : *g->mutable_node())
    for (auto& in : *n.mutable_input())
      if (in == pos) in = last;
  nodes.MergeFrom(g->node());
  g->mutable_node()->Swap(&nodes);
  const fs::path file = scratch_dir() / "identity_chain.onnx";
  write_bytes(file, model.SerializeAsString());
  OnnxVitInfo info;
  EXPECT_NO_THROW(load_onnx_vit(file.string(), &info));
  EXPECT_EQ(info.heads, 2);
}

// An IDX file whose gzip stream inflates to far more than its header promises (a gzip bomb):
// refused after the promised bytes, without inflating the rest.
TEST(FuzzFindings, IdxGzipBombStopsAtWhatTheHeaderPromises) {
  const fs::path file = scratch_dir() / "bomb-images-idx3-ubyte.gz";
  gzFile gz = gzopen(file.string().c_str(), "wb9");
  ASSERT_NE(gz, nullptr);
  const unsigned char header[] = {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2};  // (1, 2, 2)
  gzwrite(gz, header, sizeof header);
  const std::string zeros(1 << 20, '\0');
  for (int i = 0; i < 256; ++i) gzwrite(gz, zeros.data(), static_cast<unsigned>(zeros.size()));  // 256 MiB
  gzclose(gz);
  const auto start = std::chrono::steady_clock::now();
  std::string message;
  DatasetOptions options;
  options.labels_path = file.string();
  try {
    Dataset::open(file.string(), options);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("unexpected bytes after the 4 bytes"), std::string::npos) << message;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// A PNG whose header claims 30000 x 30000 pixels: refused from the header, before decoding.
TEST(FuzzFindings, HugeImagesAreRefusedFromTheirHeader) {
  std::string ihdr("IHDR", 4);
  for (uint32_t v : {30000u, 30000u}) {
    const unsigned char be[] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                                static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
    ihdr.append(reinterpret_cast<const char*>(be), 4);
  }
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(ihdr.data()), static_cast<uInt>(ihdr.size()));
  std::string png("\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", 12);
  png += ihdr;
  for (int shift : {24, 16, 8, 0}) png += static_cast<char>((crc >> shift) & 0xFF);
  const fs::path file = scratch_dir() / "huge.png";
  write_bytes(file, png);
  try {
    load_image(file.string());
    ADD_FAILURE() << "loaded a 30000x30000 image from " << png.size() << " bytes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("30000x30000 pixels, over the limit"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shiftadd
