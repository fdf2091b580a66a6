// Renderings of profile reports: JSON (schema in docs/profiling.md), CSV, a text table, Chrome
// trace events and a self-contained HTML page with inline SVG bar charts.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shiftadd/profile.h"

namespace shiftadd {

using json = nlohmann::ordered_json;

namespace {

json units_json(const EnergyUnits& u) {
  return {{"mult_pj", u.mult_pj}, {"add_pj", u.add_pj}, {"shift_pj", u.shift_pj}};
}

json report_json(const ProfileReport& r) {
  json layers = json::array();
  double ms_sum = 0;
  for (const LayerProfile& l : r.layers) {
    ms_sum += l.ms;
    json j{{"name", l.name},
           {"kind", l.kind},
           {"op", l.op},
           {"out_shape", l.out_shape},
           {"ms", l.ms},
           {"share", l.share},
           {"mults", l.ops.mults},
           {"adds", l.ops.adds},
           {"shifts", l.ops.shifts},
           {"other_ops", l.ops.other_ops},
           {"weight_bytes", l.ops.weight_bytes},
           {"activation_bytes", l.ops.activation_bytes},
           {"bits", l.ops.bits},
           {"compute_pj", l.compute_pj},
           {"dram_pj", l.dram_pj},
           {"energy_pj", l.energy_pj}};
    j["tokens_per_expert"] = l.moe ? json::array({l.expert_tokens[0], l.expert_tokens[1]}) : json(nullptr);
    if (!l.note.empty()) j["note"] = l.note;
    layers.push_back(std::move(j));
  }
  json totals{{"ms", ms_sum},
              {"mults", r.totals.mults},
              {"adds", r.totals.adds},
              {"shifts", r.totals.shifts},
              {"other_ops", r.totals.other_ops},
              {"weight_bytes", r.totals.weight_bytes},
              {"activation_bytes", r.totals.activation_bytes},
              {"compute_pj", r.compute_pj},
              {"dram_pj", r.dram_pj},
              {"energy_pj", r.energy_pj},
              {"energy_pj_per_image", r.energy_pj_per_image()},
              {"modelled_energy_j_per_image", r.energy_pj_per_image() * 1e-12},
              {"measured_energy_source", r.measured_source},
              {"measured_energy_note", r.measured_note}};
  totals["measured_energy_j_per_image"] =
      r.measured_j_per_image ? json(*r.measured_j_per_image) : json(nullptr);
  return {{"schema", "shiftadd.profile/1"},
          {"model", r.model},
          {"device", r.device},
          {"mode", r.mode},
          {"simd", r.simd},
          {"threads", r.threads},
          {"batch", r.batch},
          {"runs", r.runs},
          {"warmup", r.warmup},
          {"total_ms", r.total_ms},
          {"runs_used", r.runs_used},
          {"min_ms", r.min_ms},
          {"median_ms", r.median_ms},
          {"max_ms", r.max_ms},
          {"layers", std::move(layers)},
          {"totals", std::move(totals)},
          {"energy_table",
           {{"bits_32", units_json(r.energy.bits32)},
            {"bits_8", units_json(r.energy.bits8)},
            {"dram_pj_per_byte", r.energy.dram_pj_per_byte}}}};
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string r = "\"";
  for (char c : s) r += c == '"' ? std::string("\"\"") : std::string(1, c);
  return r + "\"";
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// 1234567 -> "1.23M"
std::string human(double v) {
  const char* suffix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::abs(v) >= 1000 && i < 4) {
    v /= 1000;
    ++i;
  }
  return fmt(i == 0 ? "%.0f" : "%.3g", v) + suffix[i];
}

std::string xml_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    switch (c) {
      case '&': r += "&amp;"; break;
      case '<': r += "&lt;"; break;
      case '>': r += "&gt;"; break;
      case '"': r += "&quot;"; break;
      case '\'': r += "&#39;"; break;
      default: r += c;
    }
  }
  return r;
}

std::string measured_text(const ProfileReport& r) {
  if (!r.measured_j_per_image) return "unavailable (" + r.measured_note + ")";
  return fmt("%.6g", *r.measured_j_per_image) + " J per image via " + r.measured_source + " (" +
         r.measured_note + ")";
}

}  // namespace

std::string profile_json(const std::vector<ProfileReport>& reports) {
  if (reports.size() == 1) return report_json(reports[0]).dump(2) + "\n";
  json a = json::array();
  for (const auto& r : reports) a.push_back(report_json(r));
  return a.dump(2) + "\n";
}

std::string profile_csv(const std::vector<ProfileReport>& reports) {
  std::string out =
      "model,device,batch,layer,op,kind,ms,share,mults,adds,shifts,other_ops,weight_bytes,"
      "activation_bytes,bits,compute_pj,dram_pj,energy_pj,expert0_tokens,expert1_tokens\n";
  for (const auto& r : reports)
    for (const auto& l : r.layers) {
      out += csv_field(r.model) + "," + r.device + "," + std::to_string(r.batch) + "," + csv_field(l.name) +
             "," + l.op + "," + csv_field(l.kind) + "," + fmt("%.6f", l.ms) + "," + fmt("%.6f", l.share) + "," +
             std::to_string(l.ops.mults) + "," + std::to_string(l.ops.adds) + "," +
             std::to_string(l.ops.shifts) + "," + std::to_string(l.ops.other_ops) + "," +
             std::to_string(l.ops.weight_bytes) + "," + std::to_string(l.ops.activation_bytes) + "," +
             std::to_string(l.ops.bits) + "," + fmt("%.1f", l.compute_pj) + "," + fmt("%.1f", l.dram_pj) +
             "," + fmt("%.1f", l.energy_pj) + "," + (l.moe ? std::to_string(l.expert_tokens[0]) : "") + "," +
             (l.moe ? std::to_string(l.expert_tokens[1]) : "") + "\n";
    }
  return out;
}

std::string profile_table(const std::vector<ProfileReport>& reports) {
  std::string out;
  char line[512];
  for (size_t k = 0; k < reports.size(); ++k) {
    const ProfileReport& r = reports[k];
    if (k) out += "\n";
    std::snprintf(line, sizeof line, "model   %s\ndevice  %s (%s kernels, %d threads, %s shift mode)   batch %lld   runs %d (+%d warm-up)\n",
                  r.model.c_str(), r.device.c_str(), r.simd.c_str(), r.threads, r.mode.c_str(),
                  static_cast<long long>(r.batch), r.runs, r.warmup);
    out += line;
    std::snprintf(line, sizeof line, "%-30s %-17s %9s %6s %9s %9s %9s %9s %9s %10s  %s\n", "layer", "kind", "ms",
                  "share", "mults", "adds", "shifts", "other", "weight B", "energy uJ", "experts (dense/shift)");
    out += line;
    double ms_sum = 0;
    for (const auto& l : r.layers) {
      ms_sum += l.ms;
      const std::string experts =
          l.moe ? std::to_string(l.expert_tokens[0]) + "/" + std::to_string(l.expert_tokens[1]) : "";
      std::snprintf(line, sizeof line, "%-30s %-17s %9.4f %5.1f%% %9s %9s %9s %9s %9s %10.3f  %s\n", l.name.c_str(),
                    l.kind.c_str(), l.ms, 100 * l.share, human(double(l.ops.mults)).c_str(),
                    human(double(l.ops.adds)).c_str(), human(double(l.ops.shifts)).c_str(),
                    human(double(l.ops.other_ops)).c_str(), human(double(l.ops.weight_bytes)).c_str(),
                    l.energy_pj * 1e-6, experts.c_str());
      std::string row = line;
      while (row.size() > 1 && row[row.size() - 2] == ' ') row.erase(row.size() - 2, 1);  // no trailing blanks
      out += row;
    }
    std::snprintf(line, sizeof line, "%-30s %-17s %9.4f %5.1f%% %9s %9s %9s %9s %9s %10.3f\n", "total (layers)", "",
                  ms_sum, r.total_ms > 0 ? 100 * ms_sum / r.total_ms : 0.0, human(double(r.totals.mults)).c_str(),
                  human(double(r.totals.adds)).c_str(), human(double(r.totals.shifts)).c_str(),
                  human(double(r.totals.other_ops)).c_str(), human(double(r.totals.weight_bytes)).c_str(),
                  r.energy_pj * 1e-6);
    out += line;
    std::snprintf(line, sizeof line,
                  "latency           %.4f ms per run (mean of the fastest %d; min %.4f, median %.4f, max %.4f), %.1f images/s\n",
                  r.total_ms, r.runs_used, r.min_ms, r.median_ms, r.max_ms, r.total_ms > 0 ? 1000.0 * r.batch / r.total_ms : 0.0);
    out += line;
    std::snprintf(line, sizeof line, "multiply-accumulates %lld (%s)\n", static_cast<long long>(r.totals.mults),
                  human(double(r.totals.mults)).c_str());
    out += line;
    std::snprintf(line, sizeof line,
                  "modelled energy   %.3f uJ per image (compute %.3f uJ, DRAM %.3f uJ per run of %lld)\n",
                  r.energy_pj_per_image() * 1e-6, r.compute_pj * 1e-6, r.dram_pj * 1e-6,
                  static_cast<long long>(r.batch));
    out += line;
    out += "measured energy   " + measured_text(r) + "\n";
  }
  return out;
}

std::string profile_trace(const std::vector<ProfileReport>& reports) {
  json events = json::array();
  for (size_t p = 0; p < reports.size(); ++p) {
    const ProfileReport& r = reports[p];
    const int pid = static_cast<int>(p) + 1;
    events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"tid", 1},
                      {"args", {{"name", r.model + " (" + r.device + ", batch " + std::to_string(r.batch) + ")"}}}});
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", 1},
                      {"args", {{"name", "executor"}}}});
    for (size_t i = 0; i < r.run_ms.size(); ++i) {
      const double start = r.run_start_us[i];
      events.push_back({{"name", "run " + std::to_string(i)}, {"cat", "run"}, {"ph", "X"}, {"pid", pid},
                        {"tid", 1}, {"ts", start}, {"dur", r.run_ms[i] * 1000.0},
                        {"args", {{"batch", r.batch}}}});
      // Nodes run back to back: each starts where the previous one ended (the gaps between
      // nodes, a few microseconds, are not recorded).
      double t = start;
      const auto& lm = r.run_layer_ms[i];
      for (size_t k = 0; k < r.layers.size() && k < lm.size(); ++k) {
        const LayerProfile& l = r.layers[k];
        const double dur = lm[k] * 1000.0;
        events.push_back({{"name", l.name}, {"cat", l.kind}, {"ph", "X"}, {"pid", pid}, {"tid", 1},
                          {"ts", t}, {"dur", dur},
                          {"args", {{"op", l.op}, {"mults", l.ops.mults}, {"adds", l.ops.adds},
                                    {"shifts", l.ops.shifts}, {"energy_pj", l.energy_pj}}}});
        t += dur;
      }
    }
  }
  json doc{{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"},
           {"otherData", {{"producer", "shiftadd profile"}}}};
  return doc.dump() + "\n";
}

namespace {

// Bar colour of a layer kind ("dense linear", "MoE linear", "KSH attention", ...): fixed for the
// kinds this engine has, so pages compare; anything else gets a grey.
const char* kind_colour(const std::string& kind) {
  static const std::pair<const char*, const char*> kColours[] = {
      {"dense linear", "#3b7dd8"},      {"shift linear", "#2ca02c"}, {"MoE linear", "#9467bd"},
      {"softmax attention", "#d62728"}, {"KSH attention", "#e377c2"}, {"conv", "#8c564b"},
      {"norm", "#bcbd22"},              {"elementwise", "#17becf"},  {"pool", "#7f7f7f"}};
  for (const auto& [k, c] : kColours)
    if (kind == k) return c;
  for (const auto& [k, c] : kColours)  // e.g. "depthwise conv", "token embedding"
    if (kind.find(k) != std::string::npos) return c;
  return "#999999";
}

// Rows of one batch's panels: the union of their layer names, in the order of the first panel
// and each later panel's extra layers after their predecessor, so --compare rows align by name.
std::vector<std::string> aligned_rows(const std::vector<const ProfileReport*>& panels) {
  std::vector<std::string> rows;
  for (const ProfileReport* r : panels) {
    size_t at = 0;  // insertion point: after the last matched row
    for (const LayerProfile& l : r->layers) {
      const auto it = std::find(rows.begin(), rows.end(), l.name);
      if (it != rows.end()) {
        at = static_cast<size_t>(it - rows.begin()) + 1;
      } else {
        rows.insert(rows.begin() + static_cast<std::ptrdiff_t>(at), l.name);
        ++at;
      }
    }
  }
  return rows;
}

}  // namespace

std::string profile_html(const std::vector<ProfileReport>& reports) {
  // Common scales over every report on the page, so panels side by side compare directly.
  double max_ms = 0, max_pj = 0;
  std::vector<std::string> kinds;
  for (const auto& r : reports)
    for (const auto& l : r.layers) {
      max_ms = std::max(max_ms, l.ms);
      max_pj = std::max(max_pj, l.energy_pj);
      if (std::find(kinds.begin(), kinds.end(), l.kind) == kinds.end()) kinds.push_back(l.kind);
    }
  if (max_ms <= 0) max_ms = 1;
  if (max_pj <= 0) max_pj = 1;
  // Batch sizes in order of first appearance: one row of panels each.
  std::vector<int64_t> batches;
  for (const auto& r : reports)
    if (std::find(batches.begin(), batches.end(), r.batch) == batches.end()) batches.push_back(r.batch);

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>shiftadd profile</title>\n"
       "<style>\n"
       "body{font-family:system-ui,sans-serif;margin:16px;color:#222}\n"
       ".row{display:flex;gap:24px;align-items:flex-start;flex-wrap:nowrap;overflow-x:auto}\n"
       ".panel{border:1px solid #ccc;border-radius:6px;padding:8px 12px}\n"
       ".panel h3{margin:4px 0;font-size:14px;word-break:break-all}\n"
       ".summary{font-size:12px;margin:4px 0 8px 0}\n"
       "svg text{font-size:10px;font-family:monospace}\n"
       ".bar.energy{opacity:.55}.missing{fill:#aaa}\n"
       ".mix.mults{fill:#d62728}.mix.adds{fill:#2ca02c}.mix.shifts{fill:#1f77b4}.mix.other{fill:#c7c7c7}\n"
       ".legend{font-size:12px}.legend span{display:inline-block;width:12px;height:12px;vertical-align:middle;"
       "margin:0 4px 0 12px}\n"
       "</style></head><body>\n"
       "<h1>shiftadd profile</h1>\n"
       "<p class=\"legend\">Per layer: time (ms, mean over the fastest 3/4 of the runs), modelled energy "
       "(&micro;J per run: operations &times; unit energy + DRAM bytes; lighter bar) and the operation mix. "
       "Bars share one scale across panels; rows of panels side by side are aligned by layer name "
       "(&mdash; where a model has no such layer).</p>\n<p class=\"legend\">Layer kinds:";
  for (const std::string& k : kinds)
    h << "<span style=\"background:" << kind_colour(k) << "\"></span>" << xml_escape(k);
  h << "</p>\n<p class=\"legend\">Operation mix:<span style=\"background:#d62728\"></span>"
       "multiplications<span style=\"background:#2ca02c\"></span>additions<span style=\"background:#1f77b4\">"
       "</span>shifts<span style=\"background:#c7c7c7\"></span>other (exp, divide, ...)</p>\n";
  const int row_h = 14, label_w = 200, bar_w = 180, mix_w = 120, gap = 60, top = 18;
  for (int64_t b : batches) {
    std::vector<const ProfileReport*> panels;
    for (const auto& r : reports)
      if (r.batch == b) panels.push_back(&r);
    const std::vector<std::string> rows = aligned_rows(panels);
    h << "<section class=\"batch\"><h2>batch " << b << "</h2><div class=\"row\">\n";
    for (const ProfileReport* rp : panels) {
      const ProfileReport& r = *rp;
      const int n = static_cast<int>(rows.size());
      const int x_energy = label_w + bar_w + gap, x_mix = x_energy + bar_w + gap;
      const int width = x_mix + mix_w + 8, height = top + n * row_h + 4;
      h << "<div class=\"panel\" data-model=\"" << xml_escape(r.model) << "\">\n<h3>" << xml_escape(r.model)
        << "</h3>\n<p class=\"summary\">" << xml_escape(r.device) << ", " << xml_escape(r.simd) << ", "
        << r.threads << " threads, " << xml_escape(r.mode) << " mode, " << r.runs << " runs: <b>"
        << fmt("%.4f", r.total_ms) << " ms</b> per run; " << human(double(r.totals.mults)) << " mults, "
        << human(double(r.totals.adds)) << " adds, " << human(double(r.totals.shifts))
        << " shifts; modelled <b>" << fmt("%.3f", r.energy_pj_per_image() * 1e-6)
        << " &micro;J</b> per image; measured " << xml_escape(measured_text(r)) << "</p>\n";
      h << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
        << "\" viewBox=\"0 0 " << width << " " << height << "\" role=\"img\">\n";
      h << "<text x=\"" << label_w << "\" y=\"12\">time (ms)</text><text x=\"" << x_energy
        << "\" y=\"12\">energy (&#181;J)</text><text x=\"" << x_mix << "\" y=\"12\">operation mix</text>\n";
      for (int i = 0; i < n; ++i) {
        const int y = top + i * row_h;
        const std::string& row_name = rows[i];
        std::string label = row_name.size() > 36 ? row_name.substr(0, 35) + "~" : row_name;
        const auto it = std::find_if(r.layers.begin(), r.layers.end(),
                                     [&](const LayerProfile& l) { return l.name == row_name; });
        if (it == r.layers.end()) {
          h << "<g class=\"layer missing\" data-layer=\"" << xml_escape(row_name) << "\"><text class=\"missing\" x=\""
            << label_w - 4 << "\" y=\"" << y + 10 << "\" text-anchor=\"end\">" << xml_escape(label)
            << "</text><text class=\"missing\" x=\"" << label_w << "\" y=\"" << y + 10 << "\">&#8212;</text></g>\n";
          continue;
        }
        const LayerProfile& l = *it;
        const std::string name = xml_escape(l.name);
        const char* colour = kind_colour(l.kind);
        const double tw = bar_w * l.ms / max_ms, ew = bar_w * l.energy_pj / max_pj;
        h << "<g class=\"layer\" data-layer=\"" << name << "\" data-kind=\"" << xml_escape(l.kind) << "\">"
          << "<text x=\"" << label_w - 4 << "\" y=\"" << y + 10 << "\" text-anchor=\"end\">" << xml_escape(label)
          << "</text>"
          << "<rect class=\"bar time\" data-bar=\"time\" fill=\"" << colour << "\" x=\"" << label_w << "\" y=\""
          << y + 2 << "\" width=\"" << fmt("%.2f", tw) << "\" height=\"" << row_h - 4 << "\"><title>" << name
          << " (" << xml_escape(l.kind) << "): " << fmt("%.4f", l.ms) << " ms, " << fmt("%.1f", 100 * l.share)
          << "%</title></rect>"
          << "<text x=\"" << fmt("%.2f", label_w + tw + 3) << "\" y=\"" << y + 10 << "\">" << fmt("%.3f", l.ms)
          << "</text>"
          << "<rect class=\"bar energy\" data-bar=\"energy\" fill=\"" << colour << "\" x=\"" << x_energy << "\" y=\""
          << y + 2 << "\" width=\"" << fmt("%.2f", ew) << "\" height=\"" << row_h - 4 << "\"><title>" << name
          << ": " << fmt("%.3f", l.energy_pj * 1e-6) << " uJ</title></rect>"
          << "<text x=\"" << fmt("%.2f", x_energy + ew + 3) << "\" y=\"" << y + 10 << "\">"
          << fmt("%.3f", l.energy_pj * 1e-6) << "</text>";
        // Operation mix: shares of this layer's operations, as one stacked bar.
        const double total = double(l.ops.mults) + double(l.ops.adds) + double(l.ops.shifts) + double(l.ops.other_ops);
        const std::pair<const char*, double> parts[] = {{"mults", double(l.ops.mults)},
                                                        {"adds", double(l.ops.adds)},
                                                        {"shifts", double(l.ops.shifts)},
                                                        {"other", double(l.ops.other_ops)}};
        double x = x_mix;
        for (const auto& [cls, count] : parts) {
          if (total <= 0 || count <= 0) continue;
          const double w = mix_w * count / total;
          h << "<rect class=\"mix " << cls << "\" data-bar=\"mix-" << cls << "\" x=\"" << fmt("%.2f", x) << "\" y=\""
            << y + 2 << "\" width=\"" << fmt("%.2f", w) << "\" height=\"" << row_h - 4 << "\"><title>" << name
            << ": " << human(count) << " " << cls << " (" << fmt("%.1f", 100 * count / total) << "%)</title></rect>";
          x += w;
        }
        h << "</g>\n";
      }
      h << "</svg>\n</div>\n";
    }
    h << "</div></section>\n";
  }
  h << "</body></html>\n";
  return h.str();
}

}  // namespace shiftadd
