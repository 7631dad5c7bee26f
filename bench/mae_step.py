"""Benchmark: one MAE pretraining step, ours (models.mae) vs a reference-equivalent model (a benchmark, not a test).

Setup (the paper's pretraining model): MAE tiny (encoder 384/3/6, decoder 256/2/8), input
(B, 1, 12, 2500), patch (1, 100) -> 300 tokens, mask ratio 0.8, ncc_weight 0.1, fp32 by default.
One step = forward + loss + backward + AdamW step (zero_grad(set_to_none=True) first).

Models, with identical weights (ours' state dict is loaded strictly into the reference, which also
checks key compatibility) and identical masking noise (both draw torch.rand(B, L) from the global RNG):
  ours       models.mae.SignalMAE with loss_on="all" (the reference's MSE over all patches)
  reference  the oetu/mae structure rebuilt here from its facts on timm's PatchEmbed and
             timm.models.vision_transformer.Block (its masking with .repeat, decoder_pred on all
             1 + L tokens, its loss); the reference's extra contrastive branch (a second encoder pass
             + projector/predictor, not part of the paper's MAE objective) and its figure tensors
             are left out, so both do the same computation.
Before timing, the two losses on the same batch are compared (they must agree to ~1e-5).

Reported, per model: median step time over --steps timed steps (after --warmup), samples/s, model
FLOPs per step counted with torch.utils.flop_counter.FlopCounterMode over forward + loss + backward
(the optimizer step is not counted; the CPU flash-attention ops, which FlopCounterMode does not know,
are counted with its SDPA formulas), achieved GFLOP/s and MFU = achieved / peak, where the peak is the
median GFLOP/s of a large square torch.mm in the step's dtype on the same device with torch's default
(or --threads) intra-op threads. Steps of the two models alternate, and one matmul sample follows each
round, so load from other processes and clock drift hit all three alike.

Run from the repository root:
    python bench/mae_step.py [--batch 64] [--steps 10] [--warmup 2] [--threads N]
                             [--device cpu|cuda] [--amp none|bf16|fp16] [--mm-size 2048]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.factory import build_network  # noqa: E402
from models.pos_embed import sincos_pos_embed_2d  # noqa: E402
from util.flops import MatmulPeak, synchronize, flop_counter  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# The reference-equivalent MAE: oetu/mae's MaskedAutoencoderViT structure on timm layers
# ---------------------------------------------------------------------------------------------------
class ReferenceMAE(nn.Module):
    """oetu/mae's MAE (minus the contrastive branch) on timm's PatchEmbed and Block; same state-dict keys."""

    def __init__(self, input_size=(12, 2500), patch_size=(1, 100), in_chans=1, embed_dim=384, depth=3,
                 num_heads=6, decoder_embed_dim=256, decoder_depth=2, decoder_num_heads=8, mlp_ratio=4.0,
                 ncc_weight=0.1):
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed

        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(input_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        L = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, L + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth))
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, L + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth))
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size[0] * patch_size[1] * in_chans, bias=True)
        self.ncc_weight = ncc_weight
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(embed_dim, self.grid_size)[None])
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(decoder_embed_dim, self.grid_size)[None])

    def patchify(self, imgs):
        p, q = self.patch_size
        N, C, H, W = imgs.shape
        x = imgs.reshape(N, C, H // p, p, W // q, q)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(N, (H // p) * (W // q), p * q * C)

    def unpatchify(self, x):
        p, q = self.patch_size
        h, w = self.grid_size
        c = x.shape[2] // (p * q)
        x = x.reshape(x.shape[0], h, w, p, q, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * q)

    def random_masking(self, x, mask_ratio):
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x, mask_ratio):
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)
        return x[:, 1:, :]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        loss = (pred - target) ** 2
        imgs_hat = self.unpatchify(pred)
        t_n = (imgs - imgs.mean(dim=-1, keepdim=True)) / (imgs.var(dim=-1, keepdim=True) + 1e-12) ** 0.5
        p_n = (imgs_hat - imgs_hat.mean(dim=-1, keepdim=True)) / (imgs_hat.var(dim=-1, keepdim=True) + 1e-12) ** 0.5
        n_signals = imgs.shape[0] * imgs.shape[1] * imgs.shape[2]
        ncc = ((1.0 / (imgs.shape[-1] - 1)) * torch.sum(t_n * p_n, dim=-1)).sum() / n_signals
        loss = loss.sum() / (torch.numel(loss) + 1e-5)
        return (1 - self.ncc_weight) * loss + self.ncc_weight * (1 - ncc)

    def forward(self, imgs, mask_ratio=0.8):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return {"loss": self.forward_loss(imgs, pred, mask)}


# ---------------------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------------------
def count_flops(model, x, mask_ratio, autocast_ctx) -> int:
    with flop_counter() as counter:
        with autocast_ctx():
            loss = model(x, mask_ratio=mask_ratio)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                    help="autocast dtype (default none = fp32)")
    ap.add_argument("--mm-size", type=int, default=None, help="matmul size for the peak (2048 cpu, 8192 cuda)")
    ap.add_argument("--mask-ratio", type=float, default=0.8)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    def autocast_ctx():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    torch.manual_seed(0)
    ours = build_network("signal_vit", "mae", "tiny", loss_on="all", mask_ratio=args.mask_ratio).to(device)
    ref = ReferenceMAE().to(device)
    ref.load_state_dict(ours.state_dict(), strict=True)
    models = {"ours (models.mae)": ours, "reference (timm Block)": ref}
    x = torch.randn(args.batch, 1, 12, 2500, device=device)

    # same weights + same noise -> same loss
    with torch.no_grad(), autocast_ctx():
        torch.manual_seed(1)
        l_ours = ours(x, mask_ratio=args.mask_ratio)["loss"].item()
        torch.manual_seed(1)
        l_ref = ref(x, mask_ratio=args.mask_ratio)["loss"].item()

    flops = {name: count_flops(m, x, args.mask_ratio, autocast_ctx) for name, m in models.items()}
    opts = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4,
                                    betas=(0.9, 0.95), weight_decay=0.15) for name, m in models.items()}
    scalers = {name: torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16) for name in models}

    def step(name):
        m, opt, scaler = models[name], opts[name], scalers[name]
        opt.zero_grad(set_to_none=True)
        with autocast_ctx():
            loss = m(x, mask_ratio=args.mask_ratio)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    peak_dtype = amp_dtype or torch.float32
    mm_size = args.mm_size or (8192 if device.type == "cuda" else 2048)
    mm = MatmulPeak(device, peak_dtype, mm_size, reps=10 if device.type == "cuda" else 1)
    times = {name: [] for name in models}
    peaks = []
    for i in range(args.warmup + args.steps):
        for name in models:  # alternate the models ...
            synchronize(device)
            t0 = time.perf_counter()
            step(name)
            synchronize(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        if i >= args.warmup:  # ... and the peak, so that load from elsewhere hits all three alike
            peaks.append(mm.sample())
    peak = statistics.median(peaks)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"MAE tiny pretraining step: batch {args.batch}, input 1x12x2500, patch 1x100, mask {args.mask_ratio}, "
          f"{args.amp if amp_dtype else 'fp32'}, AdamW step included")
    print(f"device {dev_name}, torch {torch.__version__}, intra-op threads {torch.get_num_threads()}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per model (median, [min-max])")
    print(f"loss on the same batch and noise: ours {l_ours:.6f}, reference {l_ref:.6f}, "
          f"|diff| {abs(l_ours - l_ref):.2e}")
    print(f"peak: torch.mm {mm_size}x{mm_size} {str(peak_dtype).replace('torch.', '')}, one sample after each round "
          f"of steps: median {peak:.1f} GFLOP/s [{min(peaks):.1f}-{max(peaks):.1f}]")
    print("FLOPs: FlopCounterMode, forward + loss + backward (optimizer not counted)")
    print()
    hdr = f"{'model':<24} {'step ms':>26} {'samples/s':>10} {'GFLOP/step':>11} {'GFLOP/s':>9} {'MFU':>7}"
    print(hdr)
    print("-" * len(hdr))
    med = {}
    for name in models:
        ts = times[name]
        med[name] = statistics.median(ts)
        gflop = flops[name] / 1e9
        rate = gflop / med[name]
        span = f"{med[name] * 1e3:.1f} [{min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f}]"
        print(f"{name:<24} {span:>26} {args.batch / med[name]:>10.1f} {gflop:>11.2f} {rate:>9.1f} "
              f"{100 * rate / peak:>6.1f}%")
    names = list(models)
    best = {name: min(times[name]) for name in models}
    print(f"\nstep time reference / ours: median {med[names[1]] / med[names[0]]:.3f}, "
          f"best {best[names[1]] / best[names[0]]:.3f}  (> 1 means ours is faster)")


if __name__ == "__main__":
    main()
