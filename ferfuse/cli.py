"""The `ferfuse` command: demo, bench, flops, export-onnx, env; predict, evaluate, explain (pipeline/cli.py)."""
import argparse
import statistics
import sys
import time

import torch


def _median_ms(fn, runs: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), (max(times) - min(times))


def demo(args) -> int:
    """Build DAN with seeded random weights and non-trivial BN statistics, optimise it (verified),
    print the report and a latency table eager vs ferfuse."""
    from ferfuse import engine, models

    torch.manual_seed(args.seed)
    model = models.randomize_batchnorm(models.dan(num_classes=7, num_heads=4), seed=args.seed).eval()
    eager = models.randomize_batchnorm(models.dan(num_classes=7, num_heads=4), seed=args.seed).eval()
    eager.load_state_dict(model.state_dict())
    print(f"DAN: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(model.state_dict())} state_dict entries, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    t0 = time.perf_counter()
    model.optimize(backend=args.backend)
    print(f"optimize() took {time.perf_counter() - t0:.2f} s (folding and verification)\n")

    gen = torch.Generator().manual_seed(args.seed + 1)
    print(f"{'batch':>5} {'eager ms':>10} {'ferfuse ms':>11} {'speed-up':>9} {'logits rel err':>15}")
    for batch in args.batch:
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        with torch.no_grad():
            ref, out = eager(x)[0], model(x)[0]
            t_eager, _ = _median_ms(lambda: eager(x), args.runs)
            t_fused, _ = _median_ms(lambda: model(x), args.runs)
        rel = ((out - ref).norm() / ref.norm()).item()
        print(f"{batch:>5} {t_eager:>10.1f} {t_fused:>11.1f} {t_eager / t_fused:>8.2f}x {rel:>15.2e}")
    print(f"\n(median of {args.runs} runs each after the first calls, which time the executors for the shape; "
          "CPU timings are noisy)\n")
    print(engine.report(model))  # after the calls: it lists the executor each batch size ran on
    return 0


def bench(args) -> int:
    """Run the latency suite through pytest-benchmark, write its JSON, print the table."""
    import os
    import tempfile
    from pathlib import Path

    import pytest

    from ferfuse.bench import report as bench_report

    if args.plot:
        rows = bench_report.load_rows(args.plot)
        out = args.output or str(Path(args.plot).with_suffix(".png"))
        print(f"wrote {bench_report.plot(rows, out)}")
        return 0
    import ferfuse.bench

    json_path = args.json or os.path.join(tempfile.mkdtemp(prefix="ferfuse-bench-"), "bench.json")
    if args.alternate:
        from ferfuse.bench import alternating
        from ferfuse.bench.providers import PROVIDERS

        rows = alternating.run(args.model, args.batch, args.providers or PROVIDERS, rounds=args.rounds,
                               device=args.device)
        alternating.write_json(rows, json_path)
        print(bench_report.table(rows))
        print(f"\nJSON: {json_path}")
        return 0
    suite = Path(ferfuse.bench.__file__).parent / "test_latency.py"
    pytest_args = [str(suite), "-p", "no:cacheprovider", "-v", "--benchmark-enable", "--benchmark-only",
                   f"--benchmark-json={json_path}", "--benchmark-columns=median,iqr,rounds",
                   f"--bench-device={args.device}", f"--bench-models={','.join(args.model)}",
                   f"--bench-batches={','.join(map(str, args.batch))}", f"--bench-dtypes={','.join(args.dtype)}",
                   f"--bench-providers={','.join(args.providers) if args.providers else 'all'}"]
    if args.quick:
        pytest_args.append("--bench-quick")
    code = pytest.main(pytest_args)
    if code not in (0, 5):
        return int(code)
    print(bench_report.table(bench_report.load_rows(json_path)))
    print(f"\nJSON: {json_path}")
    return 0


def flops(args) -> int:
    import json

    from ferfuse.bench.flops import flops_report, format_report

    rep = flops_report(args.model, args.input_size)
    if args.json:
        print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "table"} if isinstance(v, dict) else v)
                          for k, v in rep.items()}, indent=2))
    else:
        print(format_report(rep))
    return 0


def export_onnx(args) -> int:
    from ferfuse import engine
    from ferfuse.pipeline.cli import load_model

    model = load_model(args.model, args.checkpoint)
    if not args.plain:
        model.optimize()
        print(engine.report(model))
    print(engine.export_onnx(model, args.output, opset=args.opset))
    return 0


def env(args) -> int:
    from ferfuse.env import main

    main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferfuse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="optimise a seeded DAN, print the report and a latency table")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.set_defaults(func=demo)
    p = sub.add_parser("bench", help="latency suite against eager, torch.compile, ONNX Runtime (pytest-benchmark)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", nargs="+", default=["dan"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--providers", nargs="+", default=None, help="default: every provider available")
    p.add_argument("--quick", action="store_true", help="fewer rounds per case")
    p.add_argument("--alternate", action="store_true",
                   help="time the providers alternately in rounds (bench/alternating.py), not one after another")
    p.add_argument("--rounds", type=int, default=9, help="rounds with --alternate")
    p.add_argument("--json", default=None, help="where to write pytest-benchmark's JSON")
    p.add_argument("--plot", default=None, metavar="JSON", help="draw latency against batch from a JSON")
    p.add_argument("--output", default=None, help="PNG path for --plot")
    p.set_defaults(func=bench)
    p = sub.add_parser("flops", help="parameters and multiply-adds (fvcore), reference and optimised")
    p.add_argument("--model", default="dan")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=flops)
    p = sub.add_parser("export-onnx", help="export an optimised model to ONNX, checked with ONNX Runtime")
    p.add_argument("--model", default="dan")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--plain", action="store_true", help="export the model without optimising it")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("output")
    p.set_defaults(func=export_onnx)
    p = sub.add_parser("env", help="versions and backends, for bug reports")
    p.set_defaults(func=env)
    from ferfuse.pipeline import cli as pipeline_cli

    pipeline_cli.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
