"""vLLM's own request/response models, answered over stdin/stdout.

Runs in the separate vLLM environment (its protocol module needs torch):
`scripts/vllm_env.sh python tests/vllm/vllm_oracle.py`. One JSON object per
line in, one per line out:
  {"op": "request", "body": {...}}  -> {"ok", "error", "ignored"}
  {"op": "shapes", "model", "pieces", "prompt", "completion", "cached"} -> shapes()
A line {"ready": true} is written once the models are imported.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wire_models import check_request, shapes, vllm_runtime


def main() -> None:
    rt = vllm_runtime()
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "request":
                reply = check_request(rt, msg["body"])
            elif msg["op"] == "shapes":
                reply = shapes(
                    rt,
                    model=msg["model"],
                    pieces=msg["pieces"],
                    prompt=msg["prompt"],
                    completion=msg["completion"],
                    cached=msg["cached"],
                )
            else:
                reply = {"fault": f"unknown op {msg['op']!r}"}
        except Exception as exc:  # report, don't die: the test names the failing case
            reply = {"fault": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
