// Whether a large power_sum / scale_ call of cpu_math.cpp runs in torch's OpenMP team or on the
// calling thread alone, chosen by the measured speed of each.
//
// Why a choice at all: an OpenMP region ends only when every thread of the team has arrived, and
// a thread whose core another process holds arrives at a later scheduler tick.  When a competing
// process is in another scheduling group (another session: a second job, a notebook; Linux's
// autogroup then shares a core between the *groups*, so our thread there gets a third of it, not
// half), the team is far slower than one thread on the free core.  2-core EPYC VM, one busy-loop
// process started with setsid, one 33.6 M-element bf16 clip, medians of 31: team 21.0 ms, calling
// thread 11.2 ms, torch 24.0 ms; quiet: team 8.1 ms, calling thread 12.5 ms, torch 11.1 ms.
// Which one wins depends on what else runs, and changes while a job runs, so it is measured.
//
// The policy, per kind of call (power sum or scaling, x element size): the first call runs in the
// team, the second on the calling thread; after that the team runs where its seconds per element
// (an average over recent calls, weight kWeight for the newest) are kTeamMargin lower, else the
// calling thread, and every
// ``probe_every``-th call tries the other one.  A probe that loses by more than kClearMargin
// doubles ``probe_every`` (up to kProbeMax: on a quiet machine one call in 64 runs on one thread,
// ~1 % of the time at 1.5x); one that wins, or comes close, resets it to kProbeMin, so a change of
// load is noticed within kProbeMax calls.  Results do not depend on the mode (cpu_math.cpp adds
// partial sums in piece order), only the time does.
//
// team_choice(mode=None) -> str    "auto" (default), "team" or "caller": the setting (set it with mode)
// team_stats() -> dict             per kind: measured ns per element of each mode, calls, probe_every
// replay_team_choice(times) -> str the choices the policy makes for calls whose (caller, team) times
//                                  are given ("c"/"t" per call), on a fresh state: its test
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "team_choice.h"

namespace {

constexpr double kWeight = 0.25;      // of the newest call in a mode's average
// The team must be this much faster to be chosen: it also takes the other cores' time, and
// leaves their threads spinning for milliseconds, which slows whatever runs next on the calling
// thread.  33.6 M fp32 values, a core taken by another session's process: norm 16.4 ms on the
// calling thread against 16.0 in the team, but the scaling after a team norm 16 ms, after one on
// the calling thread 10.8 ms.
constexpr double kTeamMargin = 1.1;
constexpr double kClearMargin = 1.25;  // a probe this much slower than the best doubles probe_every
constexpr int64_t kProbeMin = 8;
constexpr int64_t kProbeMax = 64;
constexpr int kKinds = 6;  // {power sum, scaling} x element size {2, 4, 8}

enum class Mode { kAuto, kTeam, kCaller };

struct Choice {
  double rate[2] = {0.0, 0.0};  // seconds per element, [caller, team]; 0: not measured yet
  int64_t calls[2] = {0, 0};
  int64_t since_probe = 0;
  int64_t probe_every = kProbeMin;

  bool best_is_team() const { return kTeamMargin * rate[1] < rate[0]; }

  fastclip::TeamPick pick() {
    if (rate[1] == 0.0) {
      return {true, false};
    }
    if (rate[0] == 0.0) {
      return {false, true};
    }
    const bool best = best_is_team();
    if (++since_probe >= probe_every) {
      since_probe = 0;
      return {!best, true};
    }
    return {best, false};
  }

  void record(fastclip::TeamPick used, double seconds_per_element) {
    const int m = used.team ? 1 : 0;
    calls[m] += 1;
    // a probe replaces its mode's average: the previous value is probe_every calls old
    rate[m] = (rate[m] == 0.0 || used.probe) ? seconds_per_element
                                            : rate[m] + kWeight * (seconds_per_element - rate[m]);
    if (used.probe && rate[1 - m] > 0.0) {
      const bool lost_clearly = seconds_per_element > kClearMargin * rate[1 - m];
      probe_every = lost_clearly ? std::min(2 * probe_every, kProbeMax) : kProbeMin;
    }
  }
};

std::mutex lock;
Mode mode = Mode::kAuto;
Choice choices[kKinds];

const char* mode_name(Mode m) {
  return m == Mode::kTeam ? "team" : m == Mode::kCaller ? "caller" : "auto";
}

}  // namespace

namespace fastclip {

TeamPick pick_team(int kind) {
  std::lock_guard<std::mutex> guard(lock);
  if (mode != Mode::kAuto) {
    return {mode == Mode::kTeam, false};
  }
  return choices[kind].pick();
}

void record_team(int kind, TeamPick used, double seconds, int64_t numel) {
  std::lock_guard<std::mutex> guard(lock);
  if (mode == Mode::kAuto && numel > 0) {
    choices[kind].record(used, seconds / static_cast<double>(numel));
  }
}

}  // namespace fastclip

PyObject* fastclip_team_choice(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs > 1) {
    PyErr_SetString(PyExc_TypeError, "team_choice(mode: str | None = None)");
    return nullptr;
  }
  std::lock_guard<std::mutex> guard(lock);
  const char* previous = mode_name(mode);
  if (nargs == 1 && args[0] != Py_None) {
    const char* name = PyUnicode_Check(args[0]) ? PyUnicode_AsUTF8(args[0]) : nullptr;
    const std::string wanted = name ? name : "";
    if (wanted == "auto") {
      mode = Mode::kAuto;
    } else if (wanted == "team") {
      mode = Mode::kTeam;
    } else if (wanted == "caller") {
      mode = Mode::kCaller;
    } else {
      PyErr_Clear();
      PyErr_SetString(PyExc_ValueError, "team_choice: mode must be 'auto', 'team' or 'caller'");
      return nullptr;
    }
  }
  return PyUnicode_FromString(previous);
}

PyObject* fastclip_team_stats(PyObject* /*self*/, PyObject* const* /*args*/, Py_ssize_t nargs) {
  if (nargs != 0) {
    PyErr_SetString(PyExc_TypeError, "team_stats() takes no arguments");
    return nullptr;
  }
  static const char* names[kKinds] = {"power_sum 2", "power_sum 4", "power_sum 8", "scale 2", "scale 4", "scale 8"};
  std::lock_guard<std::mutex> guard(lock);
  PyObject* out = PyDict_New();
  for (int k = 0; out != nullptr && k < kKinds; ++k) {
    const Choice& c = choices[k];
    PyObject* entry = Py_BuildValue("{s:d,s:d,s:L,s:L,s:L}", "caller_ns", c.rate[0] * 1e9, "team_ns", c.rate[1] * 1e9,
                                    "caller_calls", static_cast<long long>(c.calls[0]), "team_calls",
                                    static_cast<long long>(c.calls[1]), "probe_every",
                                    static_cast<long long>(c.probe_every));
    if (entry == nullptr || PyDict_SetItemString(out, names[k], entry) != 0) {
      Py_XDECREF(entry);
      Py_CLEAR(out);
      break;
    }
    Py_DECREF(entry);
  }
  return out;
}

PyObject* fastclip_replay_team_choice(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  const char* usage = "replay_team_choice(times: list of (caller_seconds, team_seconds))";
  if (nargs != 1 || !PyList_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, usage);
    return nullptr;
  }
  Choice c;
  std::string trace;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); ++i) {
    double caller = 0.0;
    double team = 0.0;
    if (!PyArg_ParseTuple(PyList_GET_ITEM(args[0], i), "dd", &caller, &team)) {
      return nullptr;
    }
    const fastclip::TeamPick used = c.pick();
    c.record(used, used.team ? team : caller);
    trace.push_back(used.team ? 't' : 'c');
  }
  return PyUnicode_FromStringAndSize(trace.data(), static_cast<Py_ssize_t>(trace.size()));
}
