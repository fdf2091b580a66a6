// shiftadd profile MODEL : per-layer time, operation mix, modelled and measured energy; JSON,
// CSV, a text table, Chrome traces and an HTML report (docs/profiling.md).
#include <filesystem>
#include <iostream>
#include <sstream>

#include "cli.h"
#include "shiftadd/profile.h"

namespace shiftadd::cli {

namespace {

std::vector<int64_t> parse_batches(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v <= 0)
      throw Error("--batch '" + s + "': expected positive integers separated by commas, e.g. 1,8");
    out.push_back(v);
  }
  if (out.empty()) throw Error("--batch '" + s + "': expected at least one batch size, e.g. 1 or 1,8");
  return out;
}

}  // namespace

void register_profile(CLI::App& app) {
  struct Opts {
    RunOptions run;
    std::string model, compare, batches = "1", format = "table", trace, html, energy_table, input;
    int runs = 10, warmup = 2;
    bool force = false, no_measure = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "profile", "Per-layer time, operation counts, modelled and measured energy of a model");
  sub->add_option("model", o->model, "Model file or directory")->required();
  CLI::Option* batch_opt =
      sub->add_option("-b,--batch", o->batches, "Batch size(s), comma-separated, e.g. 1,8 (default 1)");
  sub->add_option("-i,--input", o->input,
                  "Profile on these pixels: float32 .npy (B, C, H, W), preprocessed (default: random "
                  "normal); MoE routing depends on the input")
      ->check(CLI::ExistingFile);
  sub->add_option("-r,--runs", o->runs, "Timed runs per batch size (default 10)")->check(kPositive);
  sub->add_option("-w,--warmup", o->warmup, "Untimed runs first (default 2)")->check(kNonNegative);
  sub->add_option("--format", o->format, "Report on stdout: table, json or csv")
      ->check(CLI::IsMember({"table", "json", "csv"}));
  sub->add_option("--trace", o->trace, "Also write a Chrome trace-event file (opens in https://ui.perfetto.dev)");
  sub->add_option("--html", o->html, "Also write a self-contained HTML report with per-layer bar charts");
  sub->add_option("--compare", o->compare, "Second model, profiled the same way and shown side by side");
  sub->add_option("--energy-table", o->energy_table,
                  "JSON file overriding the unit energies (bits_32/bits_8 mult_pj, add_pj, shift_pj; "
                  "dram_pj_per_16_bits)");
  sub->add_flag("--no-measure", o->no_measure, "Do not read hardware energy counters (NVML / RAPL)");
  sub->add_flag("-f,--force", o->force, "Replace existing --trace / --html files");
  add_threads_option(*sub, o->run);
  sub->callback([o, batch_opt] {
    std::vector<int64_t> batches = parse_batches(o->batches);
    Array input;
    if (!o->input.empty()) {
      input = load_npy_f32(o->input);
      if (input.shape.size() != 4 || input.shape[0] <= 0)
        throw Error("--input " + o->input + ": expected a float32 array (B, C, H, W)");
      if (batch_opt->count() > 0 && (batches.size() != 1 || batches[0] != input.shape[0]))
        throw Error("--input " + o->input + " holds " + std::to_string(input.shape[0]) +
                    " images; --batch must be that (or left out)");
      batches = {input.shape[0]};
    }
    refuse_existing(o->trace, "--trace", o->force);
    refuse_existing(o->html, "--html", o->force);
    ProfileOptions po;
    po.session = session_options(o->run);
    po.runs = o->runs;
    po.warmup = o->warmup;
    po.measure_energy = !o->no_measure;
    if (!o->energy_table.empty()) po.energy = EnergyTable::from_json_file(o->energy_table);

    std::vector<std::shared_ptr<const Model>> models{Model::load(o->model)};
    if (!o->compare.empty()) models.push_back(Model::load(o->compare));
    std::vector<ProfileReport> reports;
    for (int64_t b : batches)
      for (const auto& m : models) {
        po.batch = b;
        if (!o->input.empty()) {
          const ModelInfo& mi = m->info();
          const std::vector<int64_t> want{b, mi.in_chans, mi.image_size, mi.image_size};
          if (input.shape != want)
            throw Error("--input " + o->input + ": shape does not fit model " + mi.path + " (expected (" +
                        std::to_string(b) + ", " + std::to_string(mi.in_chans) + ", " +
                        std::to_string(mi.image_size) + ", " + std::to_string(mi.image_size) + "))");
          po.input = input.data;
        }
        reports.push_back(profile(m, po));
      }

    if (o->format == "json") std::cout << profile_json(reports);
    else if (o->format == "csv") std::cout << profile_csv(reports);
    else std::cout << profile_table(reports);
    std::cout.flush();
    if (!o->trace.empty()) write_text_file(o->trace, profile_trace(reports), o->force);
    if (!o->html.empty()) write_text_file(o->html, profile_html(reports), o->force);
  });
}

}  // namespace shiftadd::cli
