"""`modtrain submit ...` and `modtrain status ...`."""

from __future__ import annotations

import argparse


def _resources(args: argparse.Namespace):
    from modtrain.cluster.submit import Resources

    return Resources(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time, cpu=args.cpu,
        launch=args.launch, cpus_per_task=args.cpus_per_task, signal_seconds=args.signal_seconds,
        max_restarts=args.max_restarts, partition=args.partition, account=args.account,
        qos=args.qos, constraint=args.constraint, reservation=args.reservation,
        mail_user=args.mail_user, mail_type=args.mail_type, exclusive=args.exclusive,
        extra=args.sbatch)


def _submit(args: argparse.Namespace) -> None:
    from pathlib import Path

    from modtrain.cluster.submit import plan_pipeline, plan_train, submit
    from modtrain.data.tokenizer import load_spec

    res = _resources(args)
    if args.pipeline:
        spec = str(Path(args.tokenizer_spec).absolute()) if args.tokenizer_spec else None
        tokenizer_args = (["--spec", spec] if spec else
                          ["--type", args.tokenizer_type, "--vocab-size", str(args.vocab_size)])
        vocab = load_spec(spec).get("vocab_size", 8000) if spec else args.vocab_size
        subs = plan_pipeline(args.config, args.overrides, res, args.corpus or [],
                             tokenizer_args, args.prepare_tasks, args.export, vocab)
    else:
        subs = [plan_train(args.config, args.overrides, res)]
    submit(subs, dry_run=args.dry_run)


def _status(args: argparse.Namespace) -> None:
    from modtrain.cluster.status import status_lines

    print("\n".join(status_lines(args.run_dir)))


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "submit", help="submit training (or the whole pipeline) to Slurm",
        description="Render a Slurm job script from the config and resources, submit it with "
        "sbatch, print the job id and where its logs go (RUN_DIR/logs). The training job is "
        "requeued after the pre-timeout signal and resumes from the latest checkpoint.")
    s.add_argument("config", help="YAML config, e.g. configs/shakespeare_mod.yaml")
    s.add_argument("overrides", nargs="*", help="dotted overrides: train.steps=5000")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=1,
                   help="GPUs per node: one training task (rank) per GPU")
    s.add_argument("--time", default="01:00:00", help="time limit, HH:MM:SS or D-HH:MM:SS")
    s.add_argument("--launch", choices=["srun", "torchrun"], default="srun",
                   help="srun: a task per GPU (default); torchrun: a task per node")
    s.add_argument("--cpu", action="store_true",
                   help="nodes without GPUs: request tasks only (no GPU GRES); gloo")
    s.add_argument("--cpus-per-task", type=int, help="CPU cores per rank")
    s.add_argument("--signal-seconds", type=int, default=300,
                   help="send the save-and-requeue signal this long before the time limit "
                        "(must cover one step plus a checkpoint save; default 300)")
    s.add_argument("--max-restarts", type=int, default=50, help="stop requeueing after this")
    for name in ("partition", "account", "qos", "constraint", "reservation", "mail-user"):
        s.add_argument(f"--{name}")
    s.add_argument("--mail-type", default="END,FAIL")
    s.add_argument("--exclusive", action="store_true", help="whole nodes")
    s.add_argument("--sbatch", action="append", default=[], metavar="--OPT=VALUE",
                   help="any other sbatch option (repeatable), e.g. --sbatch=--mem=0")
    s.add_argument("--dry-run", action="store_true",
                   help="print the job script(s) and the sbatch command; submit nothing")
    p = s.add_argument_group("pipeline: tokenizer -> prepare -> train -> convert (afterok)")
    p.add_argument("--pipeline", action="store_true")
    p.add_argument("--corpus", nargs="+", help="text/JSONL files, directories or globs")
    p.add_argument("--tokenizer-spec", help="tokenizer/NAME.yaml (otherwise --tokenizer-type)")
    p.add_argument("--tokenizer-type", default="bpe", choices=["char", "bpe", "unigram"])
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--prepare-tasks", type=int, default=2, help="MPI ranks of the prepare job")
    p.add_argument("--export", help="export directory (default exports/RUN_NAME)")
    s.set_defaults(func=_submit, trailing_overrides=True)

    st = sub.add_parser("status", help="a run's Slurm jobs, restarts, last step and loss")
    st.add_argument("run_dir", help="the run directory (run.dir)")
    st.set_defaults(func=_status)
