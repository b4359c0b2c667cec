"""``editsynth captions ...``: Stage 1 tools beside the pipeline run (fine-tuning data export)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datagen.config import ConfigError

from .prompts import finetune_row, load_seed_triples


def export_finetune(args: argparse.Namespace) -> int:
    try:
        seeds = load_seed_triples(args.seed_triples)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for seed in seeds:
            f.write(json.dumps(finetune_row(seed, args.format), ensure_ascii=False) + "\n")
    print(f"wrote {len(seeds)} {args.format} fine-tuning example(s) to {out}")
    return 0


def register(sub) -> None:
    captions = sub.add_parser("captions", help="Stage 1 tools: export the seed triples for fine-tuning",
                              description="Tools for Stage 1 (LLM triples). The stage itself runs with "
                                          "`editsynth generate --stages captions`.")
    csub = captions.add_subparsers(dest="captions_command", metavar="TOOL")
    p = csub.add_parser(
        "export-finetune", help="write the seed triples as OpenAI fine-tuning JSONL",
        description="Write the human-written seed triples as OpenAI fine-tuning JSONL, for the paper's "
                    "fine-tuned-model route. chat: system/user/assistant messages whose assistant turn is "
                    "the JSON reply the chat backend parses (use the tuned model with few_shot=0). "
                    "completion: the original prompt/completion format, prompt 'input\\n##\\n', completion "
                    "'edit\\n%%\\noutput\\nEND' (set captions.openai.api=completions, few_shot=0).")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--format", choices=("chat", "completion"), default="chat",
                   help="chat messages (default) or legacy prompt/completion")
    p.add_argument("--seed-triples", default=None,
                   help="a jsonl of input/edit/output triples (default: the shipped seed triples)")
    p.set_defaults(func=export_finetune)
    captions.set_defaults(func=lambda args: (captions.print_help(), 2)[1])
