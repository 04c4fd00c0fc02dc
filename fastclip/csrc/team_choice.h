// What cpu_math.cpp asks of team_choice.cpp: for a large call of one kind (0-2: power sums of 2-,
// 4-, 8-byte elements, 3-5: scalings), whether to run it in torch's OpenMP team, and afterwards
// how long it took.  The policy is described in team_choice.cpp.
#pragma once

#include <cstdint>

namespace fastclip {

struct TeamPick {
  bool team;   // run in torch's OpenMP team (else on the calling thread)
  bool probe;  // a trial of the mode that is not the best so far
};

TeamPick pick_team(int kind);
void record_team(int kind, TeamPick used, double seconds, int64_t numel);

}  // namespace fastclip
