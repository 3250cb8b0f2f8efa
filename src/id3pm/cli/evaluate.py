"""`id3pm evaluate`."""

from __future__ import annotations

from pathlib import Path

from id3pm.cli.registry import command, flags_of


def add_upscale_flag(p) -> None:
    p.add_argument("--upscale", action="append",
                   help="verification rows again after an upsampler: lanczos or a folder, optionally name=path "
                        "(repeatable), beside the real crop at its size")


def judge_list(text: str) -> list[str]:
    return [j.strip() for j in text.split(",") if j.strip()]


@command("evaluate", "identity distance, verification accuracy, diversity and FID of reconstructions vs baselines")
def cmd_evaluate(args):
    from id3pm.evaluation import EvalConfig, Evaluation

    cfg = EvalConfig(
        out=args.out, models=args.model or [], data=args.data, split=args.split, limit=args.limit,
        threshold_ids=args.threshold_ids,
        train_data=args.train_data, baselines=[b for b in args.baselines.split(",") if b],
        independent=args.independent or None, judges=judge_list(args.judges), encoder=args.encoder, pairs=args.pairs, pairs_root=args.pairs_root,
        pairs_limit=args.pairs_limit, guidance=args.guidance, prior_starts=args.prior_start, steps=args.steps, sampler=args.sampler,
        diversity_ids=args.diversity_ids, diversity_samples=args.diversity_samples, fid=args.fid,
        inception=args.inception, lpips_backbone=args.lpips_backbone, lpips_heads=args.lpips_heads,
        seed=args.seed, device=args.device, queries=args.queries, searches=args.search, report=args.report,
        protections=args.protect or [], adapter=args.adapter, upscale=args.upscale or [],
    )
    metrics = Evaluation(cfg).run()
    print((Path(args.out) / "report.md").read_text())
    print(f"total {metrics['timing']['total_seconds']:.0f} s; report: {args.out}/report.md, metrics: {args.out}/metrics.json")
    return 0


@flags_of("evaluate")
def _evaluate_flags(p):
    p.add_argument("--model", action="append", help="model folder, optionally name=path (repeatable); one trained "
                                                    "on protected vectors is an aware attacker of its scheme")
    p.add_argument("--data", help="prepared data set whose held-out split gives the originals")
    p.add_argument("--adapter", help="adapter folder (`id3pm adapt`): the models invert the templates of --data's "
                                     "encoder through it (prepare --data and --train-data with that encoder)")
    p.add_argument("--split", default="holdout")
    p.add_argument("--limit", type=int, default=100, help="originals to evaluate (a fixed random sample)")
    p.add_argument("--threshold-ids", type=int, default=2000,
                   help="images of the split whose impostor pairs set the SAR thresholds")
    p.add_argument("--train-data", help="prepared set for the nearest-neighbour / random baselines")
    p.add_argument("--baselines", default="nn,random,real", help="nn,random,real,regression=MODEL_DIR")
    p.add_argument("--independent", default="faceres", help="independent encoder spec ('' to skip)")
    p.add_argument("--judges", default="mobilefacenet",
                   help="more FR models judging every row, comma-separated encoder specs ('' for none); each gets "
                        "its own columns, and one whose model file is missing is skipped with a note")
    p.add_argument("--encoder", default="dlib", help="conditioning encoder when there is no --data/--model")
    p.add_argument("--pairs", help="LFW pairs.txt or path_a,path_b,same,fold CSV")
    p.add_argument("--pairs-root", help="folder the pair paths are relative to (default: the file's folder)")
    p.add_argument("--pairs-limit", type=int)
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="one row per guidance scale")
    p.add_argument("--prior-start", type=float, nargs="*", default=[],
                   help="extra rows of a model with a prior: sampling starts from g(y) noised to these fractions "
                        "of the schedule (e.g. 0.9 0.95 1.0; 1.0 is pure noise): diversity against identity")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--diversity-ids", type=int, default=10)
    p.add_argument("--diversity-samples", type=int, default=10)
    p.add_argument("--fid", action="store_true", help="FID / precision / recall (needs --inception or `make fid-model`)")
    p.add_argument("--inception", help="Inception TorchScript file (default cache/fid/default_1.pt)")
    p.add_argument("--lpips-backbone", help="AlexNet weights (safetensors or .pth) for LPIPS")
    p.add_argument("--lpips-heads", help="LPIPS linear heads (alex.pth) for LPIPS")
    p.add_argument("--queries", type=int, nargs="*", default=[],
                   help="extra rows: each model refined with N black-box queries per identity (e.g. 4 16 64 256)")
    p.add_argument("--search", nargs="+", default=["best_of_n", "renoise"], choices=["best_of_n", "renoise"],
                   help="how the queries are spent")
    p.add_argument("--report", default="", choices=["", "attack"],
                   help="attack: also attack.md and attack.png (SAR against queries, every judging encoder)")
    p.add_argument("--protect", action="append",
                   help="a template protection to attack (repeatable): orthonormal:key=7, biohash:key=7,bits=128, "
                        "noise:snr_db=10,key=7, pca:path=basis.npz,k=32. A --model trained on protected vectors "
                        "(prepare --encoder protected:...) adds its own scheme and attacks it as an aware attacker")
    add_upscale_flag(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", default="eval")


@command("yardstick", "the identity-disjoint yardstick: CelebA / AAF test people, ORL and Yale, every judging encoder")
def cmd_yardstick(args):
    from id3pm.evaluation import EvalConfig
    from id3pm.evaluation.yardstick import render_yardstick, run_yardstick, yardstick_sets

    base = EvalConfig(
        out=args.out, models=args.model or [], train_data=args.train_data, baselines=["nn"] if args.train_data else [],
        limit=args.limit, pairs_limit=args.pairs_limit, guidance=args.guidance, prior_starts=args.prior_start,
        steps=args.steps, sampler=args.sampler, independent=args.independent or None, judges=judge_list(args.judges),
        diversity_ids=args.diversity_ids, diversity_samples=args.diversity_samples, seed=args.seed, device=args.device,
        upscale=args.upscale or [],
    )
    sets = yardstick_sets(Path(args.out), celeba=args.celeba, aaf=args.aaf, orl=args.orl, yale=args.yale)
    table = run_yardstick(base, sets)
    print(render_yardstick(table))
    print(f"{args.out}/yardstick.md, {args.out}/yardstick.json; each set's report in {args.out}/<set>/report.md")
    return 1 if table["failed_sets"] else 0


@flags_of("yardstick")
def _yardstick_flags(p):
    p.add_argument("--model", action="append", help="model folder, optionally name=path (repeatable)")
    p.add_argument("--celeba", help="prepared CelebA (prepare --metadata celeba:FILE --split-by identity)")
    p.add_argument("--aaf", help="prepared All-Age-Faces (prepare --metadata aaf --split-by identity)")
    p.add_argument("--orl", help="ORL folder with pairs.csv")
    p.add_argument("--yale", help="Yale folder with pairs.csv")
    p.add_argument("--train-data", help="the models' training set: the nearest-neighbour retrieval row")
    p.add_argument("--limit", type=int, default=100, help="held-out originals of the type-I rows per set")
    p.add_argument("--pairs-limit", type=int, help="at most N pairs per set, taken in turn from each fold")
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    p.add_argument("--prior-start", type=float, nargs="*", default=[],
                   help="extra rows on CelebA: sampling from g(y) noised to these fractions of the schedule")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--independent", default="faceres", help="independent encoder spec ('' to skip)")
    p.add_argument("--judges", default="mobilefacenet",
                   help="more FR models judging every row, comma-separated encoder specs ('' for none); each gets "
                        "its own columns, and one whose model file is missing is skipped with a note")
    p.add_argument("--diversity-ids", type=int, default=10, help="CelebA identities for the diversity rows")
    p.add_argument("--diversity-samples", type=int, default=10)
    add_upscale_flag(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", default="yardstick")
