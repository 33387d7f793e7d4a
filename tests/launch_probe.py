"""A stand-in task for trainer.launch tests: says which task it is, then exits with a code or waits.

    TF_CONFIG='{"cluster": {"chief": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}' \\
        python -m tests.launch_probe chief:0 3      # exits 3; any other task sleeps, as a stuck peer would
"""

import json
import os
import sys
import time

task = json.loads(os.environ["TF_CONFIG"])["task"]
name = f"{task['type']}:{task['index']}"
print(f"hello from {name}, {len(json.loads(os.environ['TF_CONFIG'])['cluster'].get('worker', []))} worker(s)",
      flush=True)
failing, code, wait_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if name == failing:
    sys.exit(code)
time.sleep(wait_s)
print(f"{name} done", flush=True)
