"""The real-image analogs' small ResNet on this CPU (issue 27 item 5): its training step and its attack query against
a FLOP bound, with memory format and batch size as the variants, from interleaved rounds (benchmarks/harness.py), CPU
time on one thread with its IQR; written to benchmarks/results/conv_*.csv.

Circular padding: the steps pad through `models.resnet.CircularConv2d` (the library's); "step b=128 F.pad circular" is
the same step with torch's own F.pad(mode="circular"), whose backward builds a full-size zero tensor and a full-size
sum for every wrapped strip (bit-identical gradients, tested).
FLOP bound: a training step executes ≈ 3× the forward multiply-adds (forward, input gradient, weight gradient; the
first conv's input gradient is not needed, a < 1 % term at 1 input channel) = 6 · forward_macs FLOPs per image
(`models.small_resnet_cost`, exact, tested); an attack query executes the forward only, 2 · forward_macs. The rate
is a GEMM of the net's typical im2col shape (rows = batch · 8², k = 9 · 64, n = 64 at base width 16's third stage)
timed in the same rounds; the ratio measured / bound says how far the convolutions run below that rate.
--compile adds the attack query through `torch.compile` (inductor, CPU; compiled once before the rounds, its compile
time and its largest output difference from the eager forward recorded). A probe on the loaded machine (1 thread,
median of 15, three repeats): 91 s to compile, then 0.82–0.92× the eager query, outputs within 1.1e-7 and the same
argmax on 512 images — not adopted for the figures: ≤ 18 % on the queries, a compile per job process, and attack
results no longer bit-identical to the eager runs'.

--query-batches times the attack's model calls alone instead: the same 2048 images in calls of 16 … 2048 rows, and a
Tangent Attack (8 Fashion-MNIST-sized images, T = 2) with the rows per call the attacks choose for a conv net on the
CPU (`attacks.base.query_rows`) against one call of up to 8192 rows; written to conv_query_rows_w<width>_b<blocks>.csv.

Run: python benchmarks/bench_conv.py [--rounds 20] [--width 16] [--blocks 1] [--compile | --query-batches]
"""

from __future__ import annotations

import argparse

import torch
from harness import machine, print_machine, run_rounds, show, summarise, write

from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.models import small_resnet, small_resnet_cost
from repspec_utils.models.resnet import CircularConv2d
from repspec_utils.training import TrainConfig, make_optimizer, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also the attack query through torch.compile")
    ap.add_argument("--query-batches", action="store_true", help="only the attack's calls, by rows per call")
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = machine()
    if args.query_batches:
        return query_batches(args, info)
    print_machine(info)
    cost = small_resnet_cost(args.width, args.blocks, channels=1, image_size=28, pad=2)
    g = torch.Generator().manual_seed(0)
    fns, flops, images = {}, {}, {}
    # the steps pad through CircularConv2d; the last one, the same step through torch's own F.pad(mode="circular")
    steps = [(batch, fmt, "") for batch in (64, 128, 256) for fmt in ("contiguous", "channels_last")]
    for batch, fmt, pad in steps + [(128, "contiguous", "F.pad circular")]:
        model = small_resnet(width=args.width, blocks=args.blocks, pad=2, seed=0).train()
        if pad:
            for m in model.modules():
                if isinstance(m, CircularConv2d):
                    m.__class__ = torch.nn.Conv2d
        x = torch.rand(batch, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        if fmt == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        opt = make_optimizer(TrainConfig(dataset="fashion_mnist", model={"kind": "small_resnet"}, lr=0.01), model)
        name = f"step b={batch} {pad or fmt}"
        fns[name] = (lambda model=model, opt=opt, x=x, y=y:
                     train_step(model, opt, OBJECTIVES["supervised"], x, y, None, None, 0.0))
        flops[name], images[name] = 6 * cost["forward_macs"] * batch, batch
    for fmt in ("contiguous", "channels_last"):
        model = small_resnet(width=args.width, blocks=args.blocks, pad=2, seed=0).eval()
        x = torch.rand(512, 1, 28, 28, generator=g)
        if fmt == "channels_last":
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        name = f"query b=512 {fmt}"

        def query(model=model, x=x):
            with torch.no_grad():
                model(x).argmax(1)
        fns[name], flops[name], images[name] = query, 2 * cost["forward_macs"] * 512, 512
    extra = {}
    if args.compile:
        import time

        model = small_resnet(width=args.width, blocks=args.blocks, pad=2, seed=0).eval()
        x = torch.rand(512, 1, 28, 28, generator=g)
        t0 = time.perf_counter()
        compiled = torch.compile(model)
        with torch.no_grad():
            diff = float((compiled(x) - model(x)).abs().max())
        extra = {"compile_s": time.perf_counter() - t0, "compiled_max_abs_diff": diff}

        def query_compiled(compiled=compiled, x=x):
            with torch.no_grad():
                compiled(x).argmax(1)
        fns["query b=512 compiled"], flops["query b=512 compiled"], images["query b=512 compiled"] = (
            query_compiled, 2 * cost["forward_macs"] * 512, 512)
    a, b = torch.randn(128 * 64, 9 * 4 * args.width), torch.randn(9 * 4 * args.width, 4 * args.width)
    fns["gemm"] = lambda: a @ b
    flops["gemm"] = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    table = summarise(run_rounds(fns, rounds=args.rounds, warmup=1), baseline="step b=128 contiguous")
    rate = flops["gemm"] / float(table.loc[table.variant == "gemm", "cpu_s"].iloc[0])
    table["gflop"] = table["variant"].map(flops) / 1e9
    table["bound_s"] = table["variant"].map(flops) / rate
    table["cpu_over_bound"] = table["cpu_s"] / table["bound_s"]
    table["per_image_ms"] = table["cpu_s"] * 1e3 / table["variant"].map(images)
    show(table)
    print(f"GEMM rate {rate / 1e9:.1f} GFLOP/s; small ResNet width {args.width}, {args.blocks} block(s)/stage: "
          f"{cost['forward_macs'] / 1e6:.1f} M MACs per image at 32 px")
    print(table[["variant", "per_image_ms", "cpu_over_bound"]].to_string(index=False))
    epoch = table.loc[table.variant == "step b=128 contiguous", "cpu_s"].iloc[0] * 60000 / 128
    print(f"a 60000-image epoch at batch 128: ≈ {epoch / 60:.1f} CPU min")
    write(f"conv_small_resnet_w{args.width}_b{args.blocks}",
          table.assign(benchmark="conv_small_resnet", width=args.width, blocks=args.blocks,
                       forward_macs=cost["forward_macs"], gemm_gflops=rate / 1e9, epoch_cpu_min=epoch / 60, **extra),
          info)


def query_batches(args, info) -> None:
    from repspec_utils.attacks import tangent_attack
    from repspec_utils.attacks.base import DENSE_QUERY_ROWS, query_rows

    model = small_resnet(width=args.width, blocks=args.blocks, pad=2, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2048, 1, 28, 28, generator=g)
    chosen = query_rows(model, "cpu")
    fns, images = {}, {}
    for rows in sorted({16, 64, 256, 1024, 2048, chosen}):
        def calls(rows=rows):
            with torch.no_grad():
                for s in range(0, x.shape[0], rows):
                    model(x[s:s + rows]).argmax(1)
        fns[f"calls of {rows} rows"], images[f"calls of {rows} rows"] = calls, x.shape[0]
    xa = x[:8]
    for name, rows in (("tangent attack, rows chosen", None), (f"tangent attack, {DENSE_QUERY_ROWS} rows", DENSE_QUERY_ROWS)):
        fns[name] = (lambda rows=rows: tangent_attack(model, xa, None, (0.0, 1.0), T=2, max_batch=rows,
                                                      progress=False))
    queries = int(tangent_attack(model, xa, None, (0.0, 1.0), T=2, progress=False).queries.sum())
    images.update({"tangent attack, rows chosen": queries, f"tangent attack, {DENSE_QUERY_ROWS} rows": queries})
    rounds = run_rounds(fns, rounds=args.rounds, warmup=1)
    # the calls' ratios are to one call of all 2048 images; the attack's, to the same attack in calls of 8192 rows
    table = summarise(rounds, baseline="calls of 2048 rows")
    versus = summarise(rounds, baseline=f"tangent attack, {DENSE_QUERY_ROWS} rows").set_index("variant")
    is_attack = table["variant"].str.startswith("tangent attack")
    ratio_cols = [c for c in table.columns if "_ratio" in c]
    table.loc[is_attack, ratio_cols] = versus.loc[table.loc[is_attack, "variant"], ratio_cols].to_numpy()
    table["baseline"] = [f"tangent attack, {DENSE_QUERY_ROWS} rows" if a else "calls of 2048 rows" for a in is_attack]
    table["per_image_ms"] = table["cpu_s"] * 1e3 / table["variant"].map(images)
    print(table[["variant", "cpu_ratio", "cpu_ratio_q1", "cpu_ratio_q3", "per_image_ms", "baseline"]]
          .to_string(index=False))
    print(f"rows chosen for this net: {chosen}")
    write(f"conv_query_rows_w{args.width}_b{args.blocks}",
          table.assign(benchmark="conv_query_rows", width=args.width, blocks=args.blocks, rows_chosen=chosen,
                       attack_queries=queries), info)


if __name__ == "__main__":
    main()
