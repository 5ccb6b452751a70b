"""`xlplastic bench analysis`: the analysis kernels against straightforward NumPy, side by side in one run.

* CKA (`cka_bench.py`): streaming linear CKA over all layer pairs of two models (default 13 layers x 768,
  as RoBERTa-base with its embeddings) on `--cka-tokens` rows, vs NumPy materialising every hidden
  state and looping over pairs with the float64 reference.
* CSLS (`csls_bench.py`): word retrieval with CSLS (k = 10) on a `--csls-vocab` x `--csls-vocab`
  problem, chunked on device vs NumPy's full similarity matrix.

Each peer's memory need is computed first; past the limit it is recorded as "cannot run" with the reason.
`--json PATH` writes {"cka": {...}, "csls": {...}} with both sides' figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic bench analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("--cka-tokens", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--layers", type=int, default=13)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--cka-batch", type=int, default=8192)
    p.add_argument("--csls-vocab", type=int, default=50_000)
    p.add_argument("--csls-dim", type=int, default=300)
    p.add_argument("--skip", choices=("cka", "csls"), action="append", default=[], help="leave a part out")
    p.add_argument("--numpy-memory-limit-gb", type=float, default=None, help="default: 70%% of physical RAM")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    from xlplastic.bench import cka_bench, csls_bench
    from xlplastic.bench.common import check_json_path, write_json

    args = build_parser().parse_args(argv)
    check_json_path(args.json)
    limit = [] if args.numpy_memory_limit_gb is None else ["--numpy-memory-limit-gb", str(args.numpy_memory_limit_gb)]
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "cka" not in args.skip:
            path = Path(tmp) / "cka.json"
            cka_bench.main(["--tokens", *map(str, args.cka_tokens), "--layers", str(args.layers), "--width",
                            str(args.width), "--batch", str(args.cka_batch), "--json", str(path), *limit])
            out["cka"] = json.loads(path.read_text())
        if "csls" not in args.skip:
            path = Path(tmp) / "csls.json"
            csls_bench.main(["--vocab", str(args.csls_vocab), "--dim", str(args.csls_dim), "--json", str(path), *limit])
            out["csls"] = json.loads(path.read_text())
    write_json(args.json, out)
    return 0
