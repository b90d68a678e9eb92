"""oneDNN's strided 1x1 convolution backward in channels_last corrupts the heap when it reads fewer channels than
its kernel's block (8 on AVX2, 16 on AVX-512): uxlfoundation/oneDNN#6035 ("1x1 convolution backward_weights writes
past the rtus workspace (nhwc, IC < ic_block)"). Seen with torch 2.14.1 (jit_1x1:avx2) on an AVX2-only AMD EPYC:
"free(): invalid next size", a segfault under MALLOC_CHECK_=3. The study steers around it (models.Pointwise).

    MALLOC_CHECK_=3 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/repro_onednn_1x1.py [CIN COUT]
"""
import sys

import torch

cin, cout = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (4, 8)
conv = torch.nn.Conv2d(cin, cout, kernel_size=1, stride=2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(32, cin, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
for _ in range(200):
    conv(x).pow(2).mean().backward()
print(f"torch {torch.__version__}, {cin} -> {cout} channels: 200 backward passes ended without a crash")
