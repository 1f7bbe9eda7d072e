"""`ernie-style fill-mask`: what a release's masked-LM head predicts, through stock transformers."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fill-mask` subcommand."""
    parser = subparsers.add_parser(
        "fill-mask", help="top predictions of a release for a masked text (stock pipeline)"
    )
    parser.add_argument("--model", required=True, help="release directory (from `export`)")
    parser.add_argument(
        "text", nargs="+", help="texts with [MASK] (the tokenizer's mask token) in them"
    )
    parser.add_argument("--top-k", type=int, default=5, help="predictions per text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the release with `AutoModelForMaskedLM` and print each text's top predictions."""
    from transformers import AutoModelForMaskedLM, pipeline

    from ernie_style.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.model, key="--model")
    model = AutoModelForMaskedLM.from_pretrained(
        args.model, local_files_only=True, trust_remote_code=False
    ).eval()
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=args.top_k)
    for text in args.text:
        if "[MASK]" in text and tokenizer.mask_token != "[MASK]":
            text = text.replace("[MASK]", tokenizer.mask_token)
        if tokenizer.mask_token not in text:
            raise ValueError(f"fill-mask: {text!r} holds no {tokenizer.mask_token}")
        predictions = fill(text)
        if predictions and isinstance(predictions[0], list):  # several masks: the first one
            predictions = predictions[0]
        shown = ", ".join(f"{p['token_str']} ({p['score']:.3f})" for p in predictions)
        print(f"{text}\n  -> {shown}")
    return 0
