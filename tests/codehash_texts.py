"""Print the hash of every definition text of the package as codehash reads it, under whichever Python runs this
(only the standard library is needed): tests/test_codehash.py compares them across Python versions."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

path = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("taskstudy.engine.codehash", path)
codehash = importlib.util.module_from_spec(spec)
sys.modules["taskstudy.engine.codehash"] = codehash
spec.loader.exec_module(codehash)
state = codehash._package_state()
out = {}
for f in codehash._package_files(codehash.ROOT):
    rel = f.relative_to(codehash.ROOT).with_suffix("")
    module = ".".join(["taskstudy", *(p for p in rel.parts if p != "__init__")])
    m = codehash._module(module)
    for name in [*m.defs, *m.values]:
        out[f"{module}:{name}"] = hashlib.sha256(codehash._raw((module, name), state).text.encode()).hexdigest()[:16]
print(json.dumps(out, sort_keys=True))
