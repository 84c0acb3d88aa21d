"""Summarises a lifelong scenario run directory (scripts/lifelong_scenario.sh): samples transfer ratio, the
accuracy matrix (rows: after round r; columns: day-val = old task, dusk-eval = new task), BWT and the new-task gain.

BWT follows Ianvs (mean over earlier tasks of R[T][i] - R[i][i]); with one drift it is R[1][day] - R[0][day].
"""
import glob
import json
import os
import sys

run = sys.argv[1]
stream = open(os.path.join(run, "stream.txt")).read().splitlines()
uploaded = sum(1 for line in stream if "source=cloud" in line)
fallback = sum(1 for line in stream if "source=edge-fallback" in line)
decisions = sorted(glob.glob(os.path.join(run, "retrain", "*", "decision.json")))
report = json.load(open(decisions[-1]))
decision = report["decision"]
parent, candidate = decision["parent"], decision["candidate"]
rows = [("after round 0 (day-trained)", parent), ("after round 1 (retrained)", candidate)]

print(f"# Lifelong scenario: {run}\n")
print(f"- dusk-stream frames: {len(stream)}; sent to the cloud: {uploaded} (samples transfer ratio "
      f"{uploaded / max(len(stream), 1):.2f}); edge-fallback: {fallback}")
print(f"- buffer snapshot {report['snapshot_id']}: {json.dumps(report['frames'])}; epochs {report['epochs']}")
print(f"- gate: {'PUBLISHED ' + report['candidate_version'] if decision['publish'] else 'refused'}"
      + ("" if decision["publish"] else f" ({json.dumps(decision['refusals'])})"))
print("\n| round | day-val mIoU (old task) | dusk-eval mIoU (new task) | held-back buffer mIoU vs cloud labels |")
print("|---|---|---|---|")
for name, scores in rows:
    dusk = scores["new_task_labelled_miou"]
    print(f"| {name} | {scores['old_task_miou']:.4f} | {dusk:.4f} | {scores['new_task_buffer_miou']:.4f} |")
bwt = candidate["old_task_miou"] - parent["old_task_miou"]
gain = candidate["new_task_labelled_miou"] - parent["new_task_labelled_miou"]
print(f"\nBWT {bwt:+.4f} (goal >= -0.01); edge-only dusk-eval mIoU {parent['new_task_labelled_miou']:.4f} -> "
      f"{candidate['new_task_labelled_miou']:.4f} ({gain * 100:+.1f} points; goal +8)")
