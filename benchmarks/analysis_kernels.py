"""CKA and CSLS kernels vs straightforward NumPy, side by side (time, memory, where NumPy cannot run).

    python benchmarks/analysis_kernels.py [--json out.json] [--cka-tokens 10000 1000000] [--csls-vocab 50000]

Same as `xlplastic bench analysis`; see xlplastic/bench/analysis_bench.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlplastic.bench.analysis_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
