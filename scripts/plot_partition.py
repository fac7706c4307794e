#!/usr/bin/env python
"""Plot a per-client label histogram (stacked bars: samples per label for every client).

    python scripts/plot_partition.py outputs/runs/<run>             # its clients.parquet -> clients.png
    python scripts/plot_partition.py path/to/clients.parquet -o out.png
    python scripts/plot_partition.py model=minilm data=bbc data.partition=dirichlet data.alpha=0.1 \\
        fl.num_clients=10 -o bbc_dirichlet.png                      # any config: builds the data only

With Hydra overrides instead of a path, the data is built exactly as the run would build it
(same seed, same partition) and nothing trains; the histogram's CSV is written next to the PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument(
        "source",
        nargs="+",
        help="a run folder, its clients.parquet (or an older clients.csv), or Hydra overrides",
    )
    p.add_argument("-o", "--out", help="PNG to write (default: next to the CSV / partition.png)")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)

    from fedbench.data.partition import label_histogram, plot_label_histogram

    first = Path(args.source[0])
    # one argument that is no override (KEY=VALUE, ~KEY): a run folder or a histogram file
    is_path = "=" not in args.source[0] and not args.source[0].startswith("~")
    if len(args.source) == 1 and (is_path or first.is_dir()):
        from fedbench.results import label_histogram_path

        table = label_histogram_path(first)  # a run folder: clients.parquet (older: clients.csv)
        if not table.is_file():
            print(f"plot_partition: {table} not found", file=sys.stderr)
            return 2
        out = Path(args.out) if args.out else table.with_suffix(".png")
        plot_label_histogram(table, out, title=args.title or str(table.parent.name))
    else:
        from hydra import compose, initialize_config_dir
        from hydra.errors import HydraException

        from fedbench.config import ConfigError, load_registry, validate

        load_registry()  # the components' structured configs, which the groups' YAML extend
        try:
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("config", overrides=list(args.source))
        except HydraException as exc:
            print(f"plot_partition: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        try:
            spec = validate(cfg)
        except ConfigError as exc:
            print(f"plot_partition: {exc}", file=sys.stderr)
            return 2
        data = spec.data.build(spec.fl.num_clients, spec.seed)
        df = label_histogram(data)
        out = Path(args.out) if args.out else Path("partition.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out.with_suffix(".csv"), index=False)
        names = getattr(getattr(spec.data, "source", None), "classes", None)
        plot_label_histogram(df, out, title=args.title or data.partition, class_names=names)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
