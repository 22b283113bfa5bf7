"""``virtual-stain models``: list the bundled and user models with their cards."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list bundled and user models with their cards")
    p.add_argument("--task", default=None, help="only models for this task (stain, deepliif, impute)")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=run)


def _scores_line(scores: dict) -> str:
    """A compact view of a card's headline scores (model vs baselines) if it has them."""
    parts = []
    for key, value in scores.items():
        if isinstance(value, (int, float)):
            parts.append(f"{key}={value:.3g}")
    return ", ".join(parts[:6])


def run(args: argparse.Namespace) -> int:
    from ..models.registry import list_models, user_model_dir

    entries = list_models(task=args.task)
    if args.json:
        print(json.dumps([{"name": e.name, "source": e.source, "path": str(e.path),
                           "card": e.card.to_dict() if e.card else None, "problem": e.problem}
                          for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no models found (user folder: {user_model_dir()})")
        return 0
    for e in entries:
        if e.card is None:
            print(f"{e.name} [{e.source}] UNREADABLE: {e.problem}")
            continue
        c = e.card
        print(f"{e.name} [{e.source}] {c.task}, {c.spatial_dims}D, "
              f"{'+'.join(c.input_channels)} -> {'+'.join(c.output_channels)}")
        if c.description:
            print(f"    {c.description}")
        trained = c.training.get("data") if isinstance(c.training, dict) else None
        if trained:
            print(f"    trained on: {trained}")
        flat = c.scores.get("summary", c.scores) if isinstance(c.scores, dict) else {}
        line = _scores_line(flat)
        if line:
            print(f"    scores: {line}")
        print(f"    file: {e.path}")
    print(f"(user models folder: {user_model_dir()})")
    return 0
