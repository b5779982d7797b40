"""Reads Prometheus text exposition on stdin with prometheus_client's own parser and prints
every family as JSON: {"families": [{"name", "type", "help", "samples": [{"name", "labels",
"value"}]}]}. A malformed exposition raises, and the metrics test fails with its message."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "help": family.documentation,
        "samples": [
            {
                "name": s.name,
                "labels": s.labels,
                "value": s.value if math.isfinite(s.value) else str(s.value),
            }
            for s in family.samples
        ],
    })
json.dump({"families": families}, sys.stdout)
