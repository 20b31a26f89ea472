"""Writes the JSON guard bench inputs: valid_2k.json (a realistic structured answer) and
malformed_8k.txt (the same kind of answer as a model gets it wrong: prose, a fence, single
quotes, bare keys, Python constants, trailing commas, comments, cut off at the end)."""
import json
import os
import random

here = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(42)

items = [
    {"id": i, "title": f"item {i}", "price": round(rng.uniform(1, 500), 2),
     "tags": rng.sample(["red", "green", "blue", "small", "large", "sale"], 3),
     "in_stock": rng.random() > 0.3, "note": None}
    for i in range(20)
]
valid = {"query": "products under 500", "count": len(items), "items": items}
with open(os.path.join(here, "valid_2k.json"), "w") as f:
    json.dump(valid, f)

parts = ["Sure! Here are the products you asked for:\n```json\n{\n  // results\n  query: 'products under 500',\n  items: [\n"]
i = 0
while sum(len(p) for p in parts) < 8000:
    tags = ", ".join(f"'{t}'" for t in rng.sample(["red", "green", "blue", "small", "large", "sale"], 3))
    parts.append(
        f"    {{id: {i}, 'title': 'item {i}', price: {round(rng.uniform(1, 500), 2)}, "
        f"tags: [{tags},], in_stock: {rng.choice(['True', 'False'])}, note: None,}},\n"
    )
    i += 1
text = "".join(parts)[:8192]
with open(os.path.join(here, "malformed_8k.txt"), "w") as f:
    f.write(text)
