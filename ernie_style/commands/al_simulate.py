"""`ernie-style al-simulate`: simulated active-learning rounds with oracle labels.

ernie-style al-simulate --config configs/active_learning/simulate_wnut16.yaml [key=value ...]
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `al-simulate` subcommand."""
    parser = subparsers.add_parser(
        "al-simulate", help="select -> fine-tune -> evaluate rounds with oracle labels"
    )
    parser.add_argument(
        "--config", required=True, help="simulation YAML (configs/active_learning/)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. rounds=2")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run every strategy x seed x round (finished rounds are reused) and write the results."""
    from ernie_style.active_learning.simulate import Simulation, SimulationConfig
    from ernie_style.config import load_config

    config = load_config(SimulationConfig, args.config, args.overrides)
    rows = Simulation(config).run()
    print(f"{len(rows)} result rows: {config.output_dir}/results.csv, learning_curves.png")
    return 0
