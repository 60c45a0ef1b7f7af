"""Command line: `python -m saelib data|lm|train|evaluate --profile NAME [--run NAME] [--set key=value ...]`.

  data      text -> tokenizer -> packed training and held-out token sequences
  lm        train the profile's small LM (or check that the pretrained one loads) and report held-out loss
  train     train one SAE run (or every run of the profile)
  evaluate  evaluate trained runs on held-out tokens (sparsities, MSEs, FVU, CE loss recovered)
  export    `python -m saelib export RUN_FOLDER --format sae-lens OUT_FOLDER [--force]`: a trained run in
            sae-lens's on-disk format (loadable with sae_lens.SAE.load_from_disk)
  evaluate-released
            evaluate a released sae-lens SAE (default: the paper's L1 reference, gpt2-small-res-jb) on the
            profile's held-out tokens into runs/released_ref/ (Table 1 shows it when present)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from .config import ConfigError, load_profile


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m saelib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in [("data", "prepare tokenizer and token sequences"), ("lm", "train or load the LM"),
                        ("train", "train SAE runs"), ("evaluate", "evaluate SAE runs")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("--profile", default="tiny", help="profile name in config/ (paper, tiny, smoke) or a YAML path")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value by dotted path, e.g. train.tokens=200000 (repeatable)")
        s.add_argument("--no-progress", action="store_true", help="no progress bars")
        s.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch CPU threads (default: torch's; the workflow passes each rule's `threads`)")
        if name in ("train", "evaluate"):
            s.add_argument("--run", default="all",
                           help="run name(s) from the profile, comma-separated, trained/evaluated together in one "
                                "process on one activation stream (default: all, in groups of "
                                "train.runs_per_process)")
        if name == "train":
            s.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint if any")
    r = sub.add_parser("evaluate-released", help="evaluate a released sae-lens SAE into runs/released_ref")
    r.add_argument("--profile", default="paper", help="profile name in config/ or a YAML path (default: paper)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted path (repeatable)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    r.add_argument("--source", default=None, metavar="RELEASE_OR_FOLDER",
                   help="an sae-lens release (with --sae-id) or folder; default: the paper's reference release")
    r.add_argument("--sae-id", default=None, help="SAE id inside the release")
    e = sub.add_parser("export", help="export a trained run (sae-lens format)")
    e.add_argument("run_folder", metavar="RUN_FOLDER", help="a run folder, e.g. results/tiny/runs/l0a_3")
    e.add_argument("--format", required=True, choices=["sae-lens"], help="output format")
    e.add_argument("out", metavar="OUT_FOLDER", help="folder to create (must be absent or empty)")
    e.add_argument("--force", action="store_true", help="replace a non-empty OUT_FOLDER")
    return p


def cmd_data(cfg, args) -> dict:
    if cfg.synthetic_source:
        from .synthetic import prepare

        return prepare(cfg)
    from .data import prepare_data

    return prepare_data(cfg)


def cmd_lm(cfg, args) -> dict:
    from .data import data_info, load_tokens
    from .io import atomic_write_json
    from .lm import heldout_loss, load_lm, pick_device, save_lm, train_lm
    from .provenance import provenance

    if cfg.synthetic_source:
        raise ConfigError(f"profile {cfg.name!r} draws its activations from a synthetic model: it has no LM to train")
    device = pick_device(cfg.train.device)
    data = data_info(cfg)
    held = load_tokens(cfg, "heldout")
    t0 = time.time()
    if cfg.lm.source == "train":
        model, rows = train_lm(cfg, load_tokens(cfg, "train"), held, data["vocab_size"], device,
                               progress=not args.no_progress)
    else:
        model, _ = load_lm(cfg, device)
        rows = []
    info = {"source": cfg.lm.source, "name": cfg.lm.name if cfg.lm.source == "pretrained" else "saelib-tiny",
            "n_params": sum(p.numel() for p in model.parameters()),
            "heldout_loss_nats": heldout_loss(model, held[:256]),
            "heldout_unigram_entropy_nats": data["heldout_unigram_entropy_nats"],
            "seconds": round(time.time() - t0, 2), "log": rows, "stage_hash": cfg.stage_hash("lm"),
            "provenance": provenance(cfg, device)}
    if cfg.lm.source == "train":
        save_lm(model, cfg.lm_dir, info)
    else:
        atomic_write_json(cfg.lm_dir / "info.json", info)
    return {k: v for k, v in info.items() if k not in ("log", "provenance")}


def _groups(cfg, args) -> list[list[str]]:
    if args.run == "all":
        return cfg.run_groups
    names = [n.strip() for n in args.run.split(",") if n.strip()]
    for n in names:
        cfg.run(n)  # raises ConfigError listing the valid runs
    if len(set(names)) != len(names):
        raise ConfigError(f"--run names a run twice: {args.run}")
    return [names]


def cmd_train(cfg, args) -> dict:
    from .train import train_runs

    out = {}
    for group in _groups(cfg, args):
        folders = train_runs(cfg, group, resume=args.resume, progress=not args.no_progress)
        out |= {name: str(f) for name, f in zip(group, folders)}
    return out


def cmd_evaluate(cfg, args) -> dict:
    from .evaluate import evaluate_runs

    out = {}
    for group in _groups(cfg, args):
        out |= evaluate_runs(cfg, group, progress=not args.no_progress)
    return out


def cmd_export(args) -> dict:
    from .export import export_run

    out = export_run(args.run_folder, args.out, force=args.force)
    return {"format": args.format, "run": args.run_folder, "out": str(out)}


def cmd_evaluate_released(cfg, args) -> dict:
    from .evaluate import evaluate_sae
    from .export import REFERENCE_RELEASE, load_sae_lens
    from .io import atomic_write_json, save_safetensors
    from .lm import check_hook, load_lm, pick_device
    from .provenance import provenance
    from .study import RELEASED_RUN

    source, sae_id = (args.source, args.sae_id) if args.source else REFERENCE_RELEASE
    device = pick_device(cfg.train.device)
    t0 = time.time()
    model, tok = load_lm(cfg, device)
    check_hook(model, cfg.activations.hook)
    sae = load_sae_lens(source, sae_id, device=str(device))
    ref = cfg.run(cfg.reference_run)
    result, s_F, max_F = evaluate_sae(model, sae, cfg, ref.eps, not args.no_progress, tok.bos_id)
    folder = cfg.out / "runs" / RELEASED_RUN
    save_safetensors({"sparsity": s_F, "max_act": max_F}, folder / "features.safetensors")
    label = f"released reference ({source})" if sae_id is None else f"released reference ({source}/{sae_id})"
    result = {"run": RELEASED_RUN, "label": label, "family": "released reference", "sparsity_term": "l1",
              "lambda_sparsity": ref.lambda_sparsity, "source": str(source), "sae_id": sae_id, "d_sae": sae.d_sae,
              **result, "eval_seconds": round(time.time() - t0, 2), "settings": {"eval": cfg.stage_config("eval",
              cfg.reference_run)["eval"]}, "provenance": provenance(cfg, device)}
    atomic_write_json(folder / "eval.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    from .kernels import keep_freed_memory
    from .text import HubUnreachableError
    from .train import TrainingDiverged

    keep_freed_memory()
    if getattr(args, "no_progress", False):
        os.environ["TQDM_DISABLE"] = "1"  # libraries' own progress bars too (sae-lens's orthogonalisation)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)

    try:
        # libraries print progress notes to stdout; keep stdout for the JSON result alone
        with contextlib.redirect_stdout(sys.stderr):
            if args.command == "export":  # works on a run folder, not a profile
                result = cmd_export(args)
            else:
                cfg = load_profile(args.profile, args.overrides)
                cmd = {"data": cmd_data, "lm": cmd_lm, "train": cmd_train, "evaluate": cmd_evaluate,
                       "evaluate-released": cmd_evaluate_released}[args.command]
                result = cmd(cfg, args)
    except (ConfigError, FileNotFoundError, HubUnreachableError, TrainingDiverged, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
