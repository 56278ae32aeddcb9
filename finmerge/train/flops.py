"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

Training FLOPs per token follow the PaLM appendix: 6·N for the matmul parameters (forward + backward)
plus 12·L·d·T for attention scores and values at sequence length T. Recomputation from gradient
checkpointing is not counted (that is hardware FLOPs, not model FLOPs), as is the convention.
"""

from __future__ import annotations

import functools
import time

import torch

# Dense bf16 peak TFLOP/s per device (vendor data sheets, no sparsity).
GPU_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 125.0,
    "A10": 125.0,
}


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all but the input embedding lookup (an lm_head counts)."""
    emb = model.get_input_embeddings()
    skip = {id(p) for p in emb.parameters()} if emb is not None else set()
    out = model.get_output_embeddings()
    tied_head = out is not None and any(id(p) in skip for p in out.parameters())
    n = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    if tied_head:  # the tied lm_head is a real matmul even though its weight is the embedding
        n += sum(p.numel() for p in out.parameters())
    return n


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", 0)
    hidden = getattr(cfg, "hidden_size", 0)
    return 6.0 * matmul_params(model) + 12.0 * layers * hidden * seq_len


def gpu_peak_tflops(name: str) -> float | None:
    for key, value in GPU_PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def measured_cpu_tflops(size: int = 1024, seconds: float = 0.3) -> float:
    """Sustained fp32 matmul throughput of this CPU with the current thread count (measured once)."""
    return _measure(size, seconds, torch.get_num_threads())


@functools.lru_cache(maxsize=8)
def _measure(size: int, seconds: float, _threads: int) -> float:
    g = torch.Generator().manual_seed(0)  # a private generator: never shift the training RNG stream
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    a @ b  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2.0 * size**3 * n / (time.perf_counter() - t0) / 1e12


def peak_tflops(device: torch.device, configured: float | None = None) -> float | None:
    """Per-device peak: the configured figure, else the GPU table, else a CPU measurement."""
    if configured:
        return configured
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return measured_cpu_tflops()
    return None


def mfu(tokens_per_s: float, per_token: float, peak: float | None, devices: int = 1) -> float | None:
    if not peak:
        return None
    return tokens_per_s * per_token / (peak * 1e12 * devices)
