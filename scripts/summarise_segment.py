"""Prints one line per /v1/segment answer (read from stdin): source, miner decision, timings, top classes."""
import json
import sys

answer = json.load(sys.stdin)
miner, timings = answer["miner"], answer["timings"]
counts = sorted(zip(answer["class_counts"], answer["classes"]), reverse=True)[:3]
top = ", ".join(f"{name} {count / (answer['width'] * answer['height']):.0%}" for count, name in counts)
print(
    f"{sys.argv[1]:<22} source={answer['source']:<13} score={miner['score']:.3f} hard={str(miner['hard']):<5} "
    f"edge={timings['inference_ms']:.0f} ms cloud={timings.get('cloud_ms', 0):.0f} ms "
    f"total={timings['total_ms']:.0f} ms  [{top}]"
)
