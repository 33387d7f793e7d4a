"""One full training step: the project's Keras model (JAX backend) vs a best-effort PyTorch WRN, one command.

    # GPU (needs only jax[cuda], torch, keras, namex, optree; no TensorFlow):
    KERAS_BACKEND=jax python benchmarks/model_step.py --steps 30 --rounds 3
    # CPU correctness check (tiny sizes; fails loudly if the two step-0 losses disagree):
    KERAS_BACKEND=jax /tmp/gpu_bench_venv/bin/python benchmarks/model_step.py --tiny

Project side: trainer.model.network.build_model (augmentation layers inside) compiled with
trainer.objective.losses.make_losses, trainer.objective.metrics.head_metrics and trainer.optim.schedules'
ScheduledSGD + one-cycle schedule, exactly as trainer/training/train.py compiles it, under the mixed_bfloat16
policy; the step is Keras' own jitted train_function, driven as model.fit drives it (state carried between steps).
PyTorch side: the same pre-activation WRN, heads, dropout, L2 (as SGD weight decay), one-cycle LR and a GPU
augmentation of the same kinds, bf16 autocast, channels_last, torch.compile. Both get synthetic device-resident
batches. FLOPs are counted analytically (convs + heads, training = 3x forward). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX would take 75% of the GPU from torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tfds_person_attrs.schema import HVC  # noqa: E402
from trainer.config_loader import load_config  # noqa: E402
from trainer.model.network import build_model  # noqa: E402
from trainer.model.scratch_nets import stem_stride  # noqa: E402
from trainer.objective.losses import make_losses  # noqa: E402
from trainer.objective.metrics import head_metrics  # noqa: E402
from trainer.optim.schedules import make_optimizer, make_schedule  # noqa: E402

# (name, depth, width, height, width_px, batch); "hvc" takes the preset's own model, size and batch.
WORKLOADS = [("wrn16_4_224px_b128", 16, 4, 224, 224, 128), ("wrn16_8_128px_b256", 16, 8, 128, 128, 256),
             ("wrn28_10_64px_b256", 28, 10, 64, 64, 256), ("hvc_preset", None, None, None, None, None)]
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12,
             "L4": 121e12}  # dense bf16 tensor-core peaks from NVIDIA's datasheets; longest match wins


def workload_config(name, depth, width, h, w, batch, tiny):
    cfg = load_config("hvc")
    if depth is not None:
        cfg = cfg.replace(**{"model.depth": depth, "model.width": width, "data.height": h, "data.width": w,
                             "train.batch_size": batch})
    if tiny:  # same depth and code paths, CPU-sized
        cfg = cfg.replace(**{"model.width": 1, "data.height": 32, "data.width": 32 if depth else 16,
                             "train.batch_size": 8})
    return cfg


def train_flops(cfg, n_out: int) -> float:
    """Multiply-adds x2 of every conv and head, forward, times 3 (forward + input grads + weight grads)."""
    m, h, w = cfg.model, cfg.data.height, cfg.data.width
    s = stem_stride(h, m.stem_stride)
    h, w = -(-h // min(s, 2)), -(-w // min(s, 2))
    fl = 2 * h * w * 3 * 16 * 9
    if s == 4:
        h, w = -(-h // 2), -(-w // 2)
    cin = 16
    for g, c in enumerate((16 * m.width, 32 * m.width, 64 * m.width)):
        for i in range((m.depth - 4) // 6):
            if g > 0 and i == 0:
                h, w = -(-h // 2), -(-w // 2)
            fl += 2 * h * w * (cin * c * 9 + c * c * 9 + (cin * c if cin != c or (g > 0 and i == 0) else 0))
            cin = c
    return 3.0 * (fl + 2 * cin * n_out) * cfg.train.batch_size


# ---------------------------------------------------------------- the project's model (Keras 3, JAX backend)
def keras_step(cfg, x, y, force_jit=False):
    keras.utils.set_random_seed(0)
    model = build_model(HVC, cfg)
    # One layer with supports_jit=False (keras.layers.RandomTranslation/RandomZoom) makes compile() drop
    # jit_compile for the WHOLE model: under JAX the step then runs op by op. The project's augmentation is
    # jit-compilable since RandomShift replaced RandomTranslation; jit_ok records it, force_jit checks it.
    jit_ok = all(layer.supports_jit for layer in model._flatten_layers())
    if force_jit:
        for layer in model._flatten_layers():
            layer.supports_jit = True
    losses, weights = make_losses(HVC, cfg.loss)
    schedule = make_schedule(cfg.optim, 1000, 100)
    model.compile(optimizer=make_optimizer(cfg.optim, schedule), loss=losses, loss_weights=weights,
                  metrics=head_metrics(HVC), jit_compile=True)
    logs = model.train_on_batch(x, y, return_dict=True)  # builds, compiles, runs step 0
    reg = float(sum(keras.ops.convert_to_numpy(v) for v in model.losses)) if model.losses else 0.0
    shapes = {k: tuple(v.shape) for k, v in model(x[:2], training=False).items()}
    state = [model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                  optimizer_variables=True, metrics_variables=True)]

    def run(n):  # what model.fit does per step: the jitted step on (state, batch), state carried over
        for _ in range(n):
            logs, state[0] = model.train_function(state[0], iter([(x, y, None)]))
        jax.block_until_ready(state[0])
    return run, float(logs["loss"]) - reg, shapes, jit_ok or force_jit


# ---------------------------------------------------------------- best-effort PyTorch WRN
class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride, dropout):
        super().__init__()
        self.bn1, self.bn2 = torch.nn.BatchNorm2d(cin, momentum=0.1), torch.nn.BatchNorm2d(cout, momentum=0.1)
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = torch.nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        y = self.conv2(self.drop(F.relu(self.bn2(self.conv1(pre)))))
        return (self.proj(pre) if self.proj is not None else x) + y


class WRN(torch.nn.Module):
    def __init__(self, m, height, heads):
        super().__init__()
        s = stem_stride(height, m.stem_stride)
        layers = [torch.nn.Conv2d(3, 16, 3, min(s, 2), 1, bias=False)] + ([torch.nn.MaxPool2d(3, 2, 1)] if s == 4
                                                                           else [])
        cin = 16
        for g, c in enumerate((16 * m.width, 32 * m.width, 64 * m.width)):
            for i in range((m.depth - 4) // 6):
                layers.append(Block(cin, c, 2 if (g > 0 and i == 0) else 1, m.dropout))
                cin = c
        layers += [torch.nn.BatchNorm2d(cin), torch.nn.ReLU()]
        self.trunk = torch.nn.Sequential(*layers)
        self.heads = torch.nn.ModuleDict({n: torch.nn.Linear(cin, k) for n, k in heads})
        for mod in self.modules():  # Keras' initialisers: he_normal convs, glorot_uniform heads, zero biases
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(mod.weight), torch.nn.init.zeros_(mod.bias)

    def forward(self, x):
        f = self.trunk(x / 127.5 - 1.0).mean((2, 3))
        return {n: h(f) for n, h in self.heads.items()}


def torch_augment(x, a):
    """flip, translate (bilinear, zero fill), colour jitter, erasing: vectorised, on the device, float32."""
    b = x.shape[0]
    r = lambda *s: torch.rand(*s, device=x.device)  # noqa: E731
    if a.flip:
        x = torch.where(r(b, 1, 1, 1) < 0.5, x.flip(3), x)
    if a.translate:
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, :, 2] = (r(b, 2) * 2 - 1) * 2 * a.translate
        x = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    if a.color_jitter:
        f = a.color_jitter
        x = x + (r(b, 1, 1, 1) * 2 - 1) * f * 255
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + (r(b, 1, 1, 1) * 2 - 1) * f) + mean
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (gray + (x - gray) * (1 + (r(b, 1, 1, 1) * 2 - 1) * f)).clamp(0, 255)
    if a.erasing:
        h, w = x.shape[2:]
        area = a.erasing_scale[0] + r(b) * (a.erasing_scale[1] - a.erasing_scale[0])
        eh, ew = (area.sqrt() * h).view(b, 1, 1), (area.sqrt() * w).view(b, 1, 1)
        y0, x0 = r(b, 1, 1) * (h - eh), r(b, 1, 1) * (w - ew)
        yy, xx = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
        box = (yy >= y0) & (yy < y0 + eh) & (xx >= x0) & (xx < x0 + ew) & (r(b, 1, 1) < a.erasing)
        x = torch.where(box.unsqueeze(1), r(b, 3, 1, 1) * 255, x)
    return x


def torch_step(cfg, x_np, y_np, device, compile_):
    torch.manual_seed(0)
    heads = [(a.name, a.num_classes) for a in HVC.attributes]
    weights = {n: float(cfg.loss.weights.get(n, 1.0)) for n, _ in heads}
    model = WRN(cfg.model, cfg.data.height, heads).to(device).to(memory_format=torch.channels_last)
    x = torch.from_numpy(x_np).to(device).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    y = {n: torch.from_numpy(np.asarray(v)).long().to(device) for n, v in y_np.items()}
    # Keras' L2(wd) adds wd*|w|^2 to the loss, i.e. 2*wd*w to the gradient: SGD weight_decay=2*wd, same update.
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 2 * cfg.model.weight_decay},
                           {"params": rest, "weight_decay": 0.0}], lr=cfg.optim.max_lr, momentum=0.9,
                          **({"fused": True} if device == "cuda" else {}))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.optim.max_lr, total_steps=1000, pct_start=0.25)

    def loss_fn(xb, yb):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = model(torch_augment(xb, cfg.augment).contiguous(memory_format=torch.channels_last))
        return sum(weights[n] * F.cross_entropy(out[n].float(), yb[n]) for n in out), out
    fwd = torch.compile(loss_fn) if compile_ else loss_fn

    def step():
        loss, _ = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss
    loss0 = float(step())
    with torch.no_grad():
        model.eval()
        shapes = {n: tuple(v.shape) for n, v in model(x[:2]).items()}
        model.train()

    def run(n):
        for _ in range(n):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    return run, loss0, shapes


def timed(run, steps):
    t0 = time.perf_counter()
    run(steps)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU-sized correctness check")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    p.add_argument("--only", default="", help="comma-separated workload names")
    p.add_argument("--no_compile", action="store_true", help="PyTorch eager (to isolate torch.compile)")
    p.add_argument("--tolerance", type=float, default=0.25, help="max relative gap of the step-0 data losses")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    peak = max(((k, v) for k, v in PEAK_BF16.items() if gpu and k in gpu), key=lambda kv: len(kv[0]),
               default=(None, None))[1]
    keras.config.set_dtype_policy("mixed_bfloat16")
    results, failures = [], []
    for wl in WORKLOADS:
        if a.only and wl[0] not in a.only.split(","):
            continue
        cfg = workload_config(*wl, a.tiny)
        b, h, w = cfg.train.batch_size, cfg.data.height, cfg.data.width
        rng = np.random.default_rng(0)
        x_np = rng.uniform(0, 255, (b, h, w, 3)).astype("float32")
        y_np = {at.name: rng.integers(0, at.num_classes, (b,)).astype("int32") for at in HVC.attributes}
        x, y = jax.device_put(x_np), {k: jax.device_put(v) for k, v in y_np.items()}  # device-resident
        k_run, k_loss, k_shapes, k_jit = keras_step(cfg, x, y)
        f_run, _, _, _ = keras_step(cfg, x, y, force_jit=True)
        t_run, t_loss, t_shapes = torch_step(cfg, x_np, y_np, device, not a.no_compile)
        k_run(2), f_run(2), t_run(2)  # warm-up (autotuning, allocator)
        kt, ft, tt = [], [], []
        for _ in range(a.rounds):  # interleaved: all three see the same machine state
            kt.append(timed(k_run, a.steps))
            ft.append(timed(f_run, a.steps))
            tt.append(timed(t_run, a.steps))
        flops = train_flops(cfg, sum(at.num_classes for at in HVC.attributes))
        ks, fs, ts = min(kt) / a.steps, min(ft) / a.steps, min(tt) / a.steps
        perf = lambda s, b=b, flops=flops: {"step_ms": round(s * 1e3, 2), "images_per_s": round(b / s, 1),  # noqa: E731
                                           "tflops": round(flops / s / 1e12, 3),
                                           "share_of_peak": round(flops / s / peak, 3) if peak else None}
        gap = abs(k_loss - t_loss) / max(abs(t_loss), 1e-9)
        ok = gap <= a.tolerance and k_shapes == t_shapes
        if not ok:
            failures.append(wl[0])
        results.append({
            "workload": wl[0], "model": f"WRN-{cfg.model.depth}-{cfg.model.width}", "input": [h, w], "batch": b,
            "stem_stride": stem_stride(h, cfg.model.stem_stride), "train_gflop_per_step": round(flops / 1e9, 2),
            "keras_jax": {**perf(ks), "jit_compiled": k_jit},
            "keras_jax_jit_fixed": {**perf(fs), "jit_compiled": True},
            "torch": perf(ts),
            "keras_over_torch": round(ts / ks, 3), "keras_jit_fixed_over_torch": round(ts / fs, 3),
            "step0_data_loss": {"keras": round(k_loss, 4), "torch": round(t_loss, 4), "rel_gap": round(gap, 3)},
            "output_shapes_match": k_shapes == t_shapes, "shapes": {k: list(v) for k, v in k_shapes.items()},
        })
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    out = {"benchmark": "model_step", "tiny": a.tiny, "device": gpu or "cpu", "peak_bf16_flops": peak,
           "precision": "keras mixed_bfloat16 / torch bf16 autocast", "torch_compile": not a.no_compile,
           "versions": {"jax": jax.__version__, "keras": keras.__version__, "torch": torch.__version__},
           "steps": a.steps, "rounds": a.rounds, "results": results, "correctness_failures": failures}
    print(json.dumps(out, indent=1))
    if failures:
        sys.exit(f"step-0 losses or output shapes disagree for {failures}")


if __name__ == "__main__":
    main()
