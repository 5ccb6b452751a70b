"""Per-device parameter + optimizer-state bytes on 1 device vs 8 FSDP devices (compiled step's memory analysis).

    python benchmarks/fsdp_memory.py [--json out.json] [--devices 8 --layers 4 --hidden 256 --vocab 8000 ...]

Same as `xlplastic bench memory`; see xlplastic/bench/memory_bench.py for what is measured and how.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlplastic.bench.memory_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
