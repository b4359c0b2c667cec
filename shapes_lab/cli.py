"""``editsynth shapes ...``: train the shipped shapes-world models and evaluate them."""
from __future__ import annotations

import json


def _train_clip(args):
    from .train import train_clip

    print(json.dumps(train_clip(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                work=args.work, out=args.out, image_only=args.image_only)))


def _train_vae(args):
    from .train import train_vae

    print(json.dumps(train_vae(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               work=args.work, decoder_only=args.decoder_only, edge_weight=args.edge_weight,
                               tip_weight=args.tip_weight)))


def _train_t2i(args):
    from .train import train_unet, train_vae

    if args.vae_steps:
        train_vae(steps=args.vae_steps, seed=args.seed, work=args.work)
    print(json.dumps(train_unet(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                work=args.work, out=args.out)))


def _eval_t2i(args):
    from .train import evaluate_shipped_t2i

    print(json.dumps(evaluate_shipped_t2i(n=args.n, steps=args.steps, guidance=args.guidance, model=args.model)))


def _eval_clip(args):
    from .train import evaluate_shipped_clip

    print(json.dumps(evaluate_shipped_clip(n=args.n)))


def _publish_editor(args):
    from .card import write_model_card
    from .train import publish_editor

    print(publish_editor(args.trained, args.eval))
    print(write_model_card())


def _log_editor_eval(args):
    from .card import write_model_card
    from .train import log_shipped_editor_eval

    print(log_shipped_editor_eval(args.eval, args.note))
    print(write_model_card())


def _adopt_decoder(args):
    from .train import SHIPPED_T2I, adopt_decoder

    print(adopt_decoder(args.editor, args.vae or SHIPPED_T2I / "vae"))


def _report(args):
    from .stage_value import write_oracle_report

    print(json.dumps(write_oracle_report(args.run, compare_modes=not args.no_modes, num_triples=args.mode_triples,
                                         num_candidates=args.mode_candidates), indent=1))


def _seed_probe(args):
    from .stage_value import layout_follows_seed

    print(json.dumps(layout_follows_seed(num_triples=args.triples)))


def _p2p_study(args):
    from datagen.config import load_config

    from .p2p_study import run_study

    try:
        p_sweep = [float(p) for p in args.p_sweep.split(",") if p.strip()]
    except ValueError:
        raise SystemExit(f"--p-sweep must be comma-separated numbers, got {args.p_sweep!r}") from None
    try:
        report = run_study(load_config(args.pipeline, args.set), num_triples=args.triples, num_seeds=args.seeds,
                           p_sweep=p_sweep, triple_seed=args.triple_seed, out=args.out)
    except ValueError as e:
        raise SystemExit(f"p2p-study: {e}") from None
    for arm, f in report["arms"].items():
        print(f"{arm:>14}  pairs {f['pairs']}  correct {f['correct']}  correct_full {f['correct_full']}  "
              f"preserved_full {f['preserved_full']}")
    for name, test in report["sign_tests"].items():
        t = test["correct_full"]
        print(f"{name:>28}  correct_full: {t['a_only']} vs {t['b_only']} discordant of {t['pairs']}, "
              f"sign test p = {t['p_value']}")
    sim = report["filter_sim_image"]
    print(f"sim_image AUC for preserved_full {sim['auc_preserved_full']}, for correct_full among correct "
          f"{sim['auc_correct_full_among_correct']} ({sim['pairs']} pairs of {', '.join(sim['arms'])})")
    if "target" in report:
        print("target:", json.dumps(report["target"]))
    print(f"report: {args.out}")


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
        if name == "train-vae":
            p.add_argument("--decoder-only", action="store_true",
                           help="fine-tune only the decoder of the trained VAE: latents, and the UNet trained "
                                "on them, stay valid")
            p.add_argument("--edge-weight", type=float, default=0.0,
                           help="extra loss weight on the pixels along object outlines (sharper small shapes)")
            p.add_argument("--tip-weight", type=float, default=0.0,
                           help="extra loss weight on and around the parts of objects thinner than 3 pixels "
                                "(the tips of small triangles)")
        if name == "train-clip":
            p.add_argument("--image-only", action="store_true",
                           help="train the image tower alone: the text tower, the T2I's frozen text encoder, stays")
            p.add_argument("--out", help="write snapshots and the log into this candidate folder instead of the "
                                         "shipped weights (it is resumed from when --work is gone)")
        if name == "train-t2i":
            p.add_argument("--vae-steps", type=int, default=0, help="train the VAE this far first")
            p.add_argument("--out", help="write snapshots and the log into this candidate folder instead of the "
                                         "shipped weights (it is resumed from when --work is gone); ship it "
                                         "only once `eval-t2i --model OUT` clears the bar")
        p.set_defaults(func=func)
    p = ssub.add_parser("eval-t2i", help="judge the shipped T2I on held-out captions with the oracle",
                        description="Sample the shipped tiny SD on N held-out captions, judge each image with "
                                    "the oracle, and record the figures in its log and train_state.json.")
    p.add_argument("--n", type=int, default=200, help="held-out captions")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--model", help="a candidate folder (train-t2i --out) instead of the shipped T2I")
    p.set_defaults(func=_eval_t2i)
    p = ssub.add_parser("eval-clip", help="judge the shipped CLIP on held-out renders (caption retrieval top-1)",
                        description="Caption retrieval top-1 of the shipped tiny CLIP on N held-out renders of "
                                    "the current world, logged in its log.")
    p.add_argument("--n", type=int, default=200, help="held-out renders")
    p.set_defaults(func=_eval_clip)
    p = ssub.add_parser("publish-editor", help="ship a trained editor as `shapes` (fp16) with its oracle figures",
                        description="Copy an editor trained with `train_editor.py --pipeline shapes --out DIR` into "
                                    "datagen/shapes/weights/editor (fp16), log its oracle figures from "
                                    "`editsynth eval --oracle --editor DIR --out EVAL`, and rewrite the model card.")
    p.add_argument("trained", help="the training output folder (DIR)")
    p.add_argument("--eval", help="the folder holding oracle_edit.json (EVAL)")
    p.set_defaults(func=_publish_editor)
    p = ssub.add_parser("log-editor-eval", help="add an oracle eval of the shipped editor to its model card",
                        description="Log the figures of `editsynth eval --oracle --editor shapes --out EVAL` for the "
                                    "shipped editor as it is (a new default setting, say) and rewrite the model card.")
    p.add_argument("--eval", required=True, help="the folder holding oracle_edit.json (EVAL)")
    p.add_argument("--note", required=True, help="what this evaluation is, e.g. the command that made it")
    p.set_defaults(func=_log_editor_eval)
    p = ssub.add_parser("adopt-decoder", help="give a trained editor the decoder of a decoder-only fine-tuned VAE",
                        description="Replace the VAE of the editor in EDITOR (a diffusers folder) by --vae (default: "
                                    "the shipped T2I's), after checking that both encode identically, so that "
                                    "the editor's latents stay valid while its outputs decode sharper.")
    p.add_argument("editor", help="the editor's folder (e.g. a train_editor.py --out DIR)")
    p.add_argument("--vae", help="the VAE folder (default datagen/shapes/weights/t2i/vae)")
    p.set_defaults(func=_adopt_decoder)
    p = ssub.add_parser("report", help="add shapes-world figures (P2P modes, model scores) to RUN/report/oracle.json",
                        description="Re-render a sample of the run's triples with P2P self, cross and no sharing "
                                    "(same seeds) and judge them with the oracle; add the shipped models' held-out "
                                    "figures. `editsynth audit` then shows them.")
    p.add_argument("--run", required=True)
    p.add_argument("--no-modes", action="store_true", help="skip the P2P mode comparison")
    p.add_argument("--mode-triples", type=int, default=24, help="triples re-rendered per mode")
    p.add_argument("--mode-candidates", type=int, default=4, help="candidates per triple per mode")
    p.set_defaults(func=_report)
    p = ssub.add_parser("seed-probe", help="does the shipped T2I lay objects out by the seed alone?",
                        description="Render before/after pairs with no sharing, the after image from the same seed "
                                    "and from another; print how often untouched objects keep their un-named "
                                    "facts among oracle-correct pairs in each case.")
    p.add_argument("--triples", type=int, default=48)
    p.set_defaults(func=_seed_probe)
    p = ssub.add_parser("p2p-study", help="P2P self vs cross vs none, paired by seed, with sign tests and a p sweep",
                        description="Render the same grammar triples x seeds with P2P self and cross sharing (at "
                                    "the drawn p and, for self, at each fixed p of --p-sweep), with no sharing "
                                    "from the same seed (none) and from another seed (none_new_seed); judge every "
                                    "pair with the oracle and the filter's CLIP; print rates per arm and exact "
                                    "sign tests against none, and write the full report (with the sim_image "
                                    "threshold sweep) to --out. Rows are kept in OUT.parts/: a killed study resumes.")
    p.add_argument("--triples", type=int, default=96)
    p.add_argument("--seeds", type=int, default=4, help="seeds per triple (at least 2)")
    p.add_argument("--p-sweep", default="0.1,0.3,0.5,0.7,0.9", help="fixed p values of self sharing ('' for none)")
    p.add_argument("--triple-seed", type=int, default=0, help="seed of the grammar triples")
    p.add_argument("--pipeline", default="shapes", help="the pipeline whose render and filter settings are used")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--out", required=True, help="the report (JSON)")
    p.set_defaults(func=_p2p_study)
