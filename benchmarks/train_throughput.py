"""Training tokens/s, step time, model FLOPs/token, MFU and peak memory: xlplastic vs HF RobertaForMaskedLM.

    python benchmarks/train_throughput.py [--json out.json] [--layers 4 --hidden 256 --vocab 8000 --seq 128 ...]

Same as `xlplastic bench train`; see xlplastic/bench/train_bench.py for what is measured and how.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlplastic.bench.train_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
