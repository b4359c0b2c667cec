"""``editsynth shapes ...``: train the shipped shapes-world models and evaluate them."""
from __future__ import annotations

import json


def _train_clip(args):
    from .train import train_clip

    print(json.dumps(train_clip(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                work=args.work)))


def _train_vae(args):
    from .train import train_vae

    print(json.dumps(train_vae(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               work=args.work)))


def _train_t2i(args):
    from .train import train_unet, train_vae

    if args.vae_steps:
        train_vae(steps=args.vae_steps, seed=args.seed, work=args.work)
    print(json.dumps(train_unet(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                work=args.work)))


def register(sub) -> None:
    shapes = sub.add_parser("shapes", help="the shapes world: train and evaluate its tiny models")
    ssub = shapes.add_subparsers(dest="shapes_command", metavar="COMMAND")
    for name, func, steps, bs, lr, doc in (
        ("train-clip", _train_clip, 1500, 128, 1e-3, "train the tiny CLIP (run first: its text tower feeds the T2I)"),
        ("train-vae", _train_vae, 3000, 32, 2e-3, "train the tiny SD's VAE"),
        ("train-t2i", _train_t2i, 6000, 64, 6e-4, "train the tiny SD's UNet (after train-clip and train-vae)"),
    ):
        p = ssub.add_parser(name, help=doc, description=doc + ". Resumes from --work; publishes fp16 "
                            "weights into datagen/shapes/weights/ with oracle figures in its log.")
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--batch-size", type=int, default=bs)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--work", default="runs/shapes-train", help="folder of the full training state (resume)")
        if name == "train-t2i":
            p.add_argument("--vae-steps", type=int, default=0, help="train the VAE this far first")
        p.set_defaults(func=func)
