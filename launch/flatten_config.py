"""Checks an xlplastic config with its `--set` overrides and writes it with its `base:` chain merged in, as
one self-contained YAML file (what launch/tpu_pod.sh and launch/slurm.sbatch copy for the workers, so that
a later edit of the checkout's configs cannot change a launched or requeued run).

    python launch/flatten_config.py CONFIG OUT.yaml [KEY=VALUE ...]

The overrides are only checked here, not written: the launch passes them to `xlplastic run` as given.
Relative paths in the config (data.data_dir, corpus paths) stay relative to the workers' working folder.
Exits 2 with one line when the config is wrong.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    import yaml

    from xlplastic.config import load_config, load_raw
    from xlplastic.errors import UserError

    config, out, sets = argv[0], argv[1], argv[2:]
    try:
        load_config(config, sets, run=False)
        flat = load_raw(config)
    except UserError as e:
        print(f"xlplastic: error: {e}", file=sys.stderr)
        return 2
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# {config} with its base: chain merged in (launch/flatten_config.py)\n")
        yaml.safe_dump(flat, f, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
