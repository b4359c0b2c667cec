"""Subcommands ``edit`` and ``serve``: an InstructPix2Pix editor in people's and programs' hands."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.editor.sampling import DEFAULT_SCHEDULER, PAPER_GUIDANCE, EditSettings

log = logging.getLogger(__name__)


def _model_args(p: argparse.ArgumentParser) -> None:
    d = EditSettings()
    p.add_argument("--model", default="shapes",
                   help="an InstructPix2Pix diffusers directory, a hub id (timbrooks/instruct-pix2pix), "
                        "or 'shapes' (the shipped shapes editor); default: shapes")
    p.add_argument("--steps", type=int, default=d.steps, help=f"sampling steps (default {d.steps})")
    p.add_argument("--text-guidance", type=float, default=None,
                   help="s_T: how strongly to follow the instruction (default: the model's edit_config.json, "
                        f"else {PAPER_GUIDANCE['text_guidance']})")
    p.add_argument("--image-guidance", type=float, default=None,
                   help="s_I: how closely to keep the input image (default: the model's edit_config.json, "
                        f"else {PAPER_GUIDANCE['image_guidance']})")
    p.add_argument("--resolution", type=int, default=None,
                   help="long side of the edit in pixels (default: the model's native size, 512 for SD)")
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help="a diffusers scheduler class name")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16")
    p.add_argument("--compile", default="", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the UNet (CUDA mode: default, reduce-overhead, max-autotune; "
                        "on CPU: with freezing). Minutes of warm-up, then faster edits")


def _settings(args, **extra) -> EditSettings:
    return EditSettings(text_guidance=args.text_guidance, image_guidance=args.image_guidance, steps=args.steps,
                        resolution=args.resolution, scheduler=args.scheduler, **extra)


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit an image (or a folder) by an instruction, or a chain of them",
                       description="Edit IMAGE by INSTRUCTION. Several instructions make a chain: each applies "
                                   "to the last result and every step is saved. IMAGE may be a folder: every "
                                   "image in it gets the same instruction(s), edited in batches.")
    p.add_argument("image", type=Path, help="an image file or a folder of images")
    p.add_argument("instructions", nargs="+", metavar="INSTRUCTION", help="e.g. \"make the circle red\"")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output file (for a folder: output folder); default IMAGE-edited.png / IMAGE-edited/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variations", type=int, default=1, help="edits per image with seeds seed, seed+1, ...")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch")
    p.add_argument("--overwrite", action="store_true", help="folder: redo images whose outputs exist")
    _model_args(p)
    p.set_defaults(func=run_edit)

    p = sub.add_parser("serve", help="serve an editor: web UI (/ui) and HTTP API (/api, docs at /docs)",
                       description="Run the web UI and the HTTP API on one server with one model and a bounded "
                                   "queue. Binds 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.add_argument("--max-queue", type=int, default=8, help="edits allowed to wait; more get 503")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may wait for its edit")
    p.add_argument("--max-steps", type=int, default=200, help="most steps a request may ask for")
    p.add_argument("--max-upload-mb", type=float, default=25.0)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    _model_args(p)
    p.set_defaults(func=run_serve)


def run_edit(args) -> int:
    from model.editor.files import edit_files
    from model.editor.loading import EditorLoadError, load_editor

    source: Path = args.image
    output = args.output or (source.with_name(source.name + "-edited") if source.is_dir()
                             else source.with_name(source.stem + "-edited.png"))
    try:
        settings = _settings(args, seed=args.seed, batch_size=args.batch_size)
        editor = load_editor(args.model, device=args.device, dtype=args.dtype, compile_mode=args.compile)
        settings = settings.for_editor(editor)
        own = "the model's edit_config.json" if editor.edit_defaults else "the paper's defaults"
        print(f"guidance: s_T {settings.text_guidance:g} / s_I {settings.image_guidance:g} "
              f"(unless given: {own})")
        report = edit_files(editor, source, output, args.instructions, settings, args.variations, args.overwrite)
    except (EditorLoadError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"editsynth edit: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(report.written)} image(s); skipped {len(report.skipped)} already done; "
          f"{len(report.failed)} failed")
    for path, reason in report.failed.items():
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def run_serve(args) -> int:
    from model.editor.images import UploadLimits
    from model.editor.loading import EditorLoadError
    from model.serving.server import ServeConfig, serve

    try:
        config = ServeConfig(host=args.host, port=args.port, share=args.share, max_queue=args.max_queue,
                             request_timeout_s=args.timeout, max_steps=args.max_steps,
                             limits=UploadLimits(max_bytes=int(args.max_upload_mb * 1024 * 1024),
                                                 max_pixels=args.max_pixels),
                             defaults=_settings(args))
        if config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("binding %s: the editor is reachable from other machines", config.host)
        serve(args.model, config, device=args.device, dtype=args.dtype, compile_mode=args.compile)
    except (EditorLoadError, ValueError) as e:
        print(f"editsynth serve: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m model.serving.cli edit|serve ...``: the two subcommands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="editsynth")
    parser.add_argument("-v", "--verbose", action="store_true")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
