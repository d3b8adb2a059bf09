"""The peer packages against perfloss's compat classes: peak memory and time of forward + backward.

    python benchmarks/compat_peers.py [--device cpu] [--threads 2] [--batch 8] [--size 128] [--repeat 3]

Cases (random weights, the same in both: memory and time do not depend on them):
  lpips    LPIPS-VGG                       lpips.LPIPS(net="vgg")  vs perfloss.compat.lpips.LPIPS(net="vgg")
  basicsr  BasicSR VGG-19 L1, ESRGAN taps  basicsr PerceptualLoss  vs perfloss.compat.basicsr.PerceptualLoss
           (conv1_2 0.1, conv2_2 0.1, conv3_4 1, conv4_4 1, conv5_4 1)
  dists    DISTS                           DISTS_pytorch.DISTS()   vs perfloss.compat.dists_pytorch.DISTS()
The peers are imported as the tests import them (tests/peers.py: a stand-in torchvision serving
perfloss's torchvision-layout networks; BasicSR's two loss files by path), so they need the pinned
`pip install --no-deps` of .ci/run. Each step is warmed up, then timed over --repeat interleaved
rounds (median); the peak (perfloss.engine.memory.peak_bytes: exact allocator peak above what was
allocated before the step) comes from a run of its own. Writes <out>.md, .json and .csv.
"""
import argparse
import os
import sys
import warnings
from typing import Dict, List, Optional

import pytest
import torch

import _timing  # benchmarks/_timing.py, next to this script

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import peers  # noqa: E402  (tests/peers.py: the stand-in torchvision and BasicSR's loader)

ESRGAN = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
CASES = {"lpips": "LPIPS-VGG", "basicsr": "BasicSR VGG-19 L1 (ESRGAN)", "dists": "DISTS"}
QUICK = dict(size=32, batch=2, repeat=1)


def build(case: str, mp: pytest.MonkeyPatch, device: torch.device):
    """({"peer": loss, "perfloss": loss}, input range) for ``case``; loss(x, y) is the scalar to backpropagate."""
    import perfloss.compat.basicsr
    import perfloss.compat.dists_pytorch
    import perfloss.compat.lpips

    backbone = {"lpips": "vgg16", "basicsr": "vgg19", "dists": "vgg16"}[case]
    state = peers.random_state(backbone)
    peers.STAND_IN.states[backbone] = state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case == "lpips":
            peer = peers.import_peer("lpips").LPIPS(net="vgg", verbose=False).to(device)
            ours = perfloss.compat.lpips.LPIPS(net="vgg", verbose=False, weights=state).to(device)
            return {"peer": lambda x, y: peer(x, y).sum(), "perfloss": lambda x, y: ours(x, y).sum()}, (-1.0, 1.0)
        if case == "basicsr":
            peer = peers.basicsr_loss_module(mp).PerceptualLoss(ESRGAN).to(device)
            ours = perfloss.compat.basicsr.PerceptualLoss(ESRGAN, weights=state).to(device)
            return {"peer": lambda x, y: peer(x, y)[0], "perfloss": lambda x, y: ours(x, y)[0]}, (0.0, 1.0)
        peer = peers.import_peer("DISTS_pytorch").DISTS().to(device)
        ours = perfloss.compat.dists_pytorch.DISTS(weights=state).to(device)
        return ({"peer": lambda x, y: peer(x, y, require_grad=True).sum(),
                 "perfloss": lambda x, y: ours(x, y, require_grad=True).sum()}, (0.0, 1.0))


def run(args, device: torch.device) -> List[Dict]:
    rows = []
    with pytest.MonkeyPatch.context() as mp:
        peers.STAND_IN.install(mp)
        for case in args.cases:
            losses, (lo, hi) = build(case, mp, device)
            gen = torch.Generator().manual_seed(0)
            x = (torch.rand(args.batch, 3, args.size, args.size, generator=gen) * (hi - lo) + lo).to(device)
            y = (torch.rand(args.batch, 3, args.size, args.size, generator=gen) * (hi - lo) + lo).to(device)

            def step_of(loss):
                def step():
                    xi = x.detach().requires_grad_()
                    loss(xi, y).backward()
                return step

            steps = {impl: step_of(loss) for impl, loss in losses.items()}
            for step in steps.values():
                _timing.warm_up(step, device)
            times = _timing.interleaved_medians(steps, args.repeat, device)
            for impl, step in steps.items():
                rows.append(dict(case=case, impl=impl, batch=args.batch, size=args.size,
                                 peak_mib=_timing.peak_mib(step, device), median_ms=times[impl].ms,
                                 round_ms=list(times[impl].round_ms)))
    return rows


def markdown(rows: List[Dict]) -> str:
    by = {(r["case"], r["impl"]): r for r in rows}
    table = []
    for case in dict.fromkeys(r["case"] for r in rows):
        peer, ours = by[(case, "peer")], by[(case, "perfloss")]
        table.append([CASES[case], _timing.number(peer["peak_mib"]), _timing.number(ours["peak_mib"]),
                      _timing.ratio(peer["peak_mib"], ours["peak_mib"]), _timing.number(peer["median_ms"]),
                      _timing.number(ours["median_ms"]), _timing.paired_ratio(ours["round_ms"], peer["round_ms"])])
    header = ["loss", "peer peak MiB", "perfloss peak MiB", "peer / perfloss peak", "peer ms", "perfloss ms",
              "perfloss / peer time (rounds' median, IQR)"]
    return _timing.markdown_table(header, table)


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES))
    p.add_argument("--batch", type=int, help="default 8")
    p.add_argument("--size", type=int, help="image side (default 128)")
    p.add_argument("--repeat", type=int, help="timed rounds (default 3)")
    _timing.add_machine_arguments(p, "benchmarks/results/compat_peers_<device>")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: defaults size {QUICK['size']}, batch {QUICK['batch']}, repeat {QUICK['repeat']}")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = _timing.machine(args)
    args.size = args.size or (QUICK["size"] if args.quick else 128)
    args.batch = args.batch or (QUICK["batch"] if args.quick else 8)
    args.repeat = args.repeat or (QUICK["repeat"] if args.quick else 3)
    out = args.out or f"{_timing.RESULTS}/compat_peers_{device.type}"
    env = _timing.environment(device, __file__, argv)
    rows = run(args, device)
    _timing.write_results(out, env, rows, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
