"""The loss ops' Triton kernels compile for the GPU (sm_90 PTX) on a machine without one.

The interpreter runs the kernels' logic on CPU but accepts things the GPU compiler rejects (dot
shapes and dtypes, constexpr branches, type promotion); this compiles every kernel variant the
launchers can pick, in a subprocess without TRITON_INTERPRET (tests/conftest.py sets it here).
Run directly for another architecture: python tests/test_triton_compile.py 80
"""
import os
import subprocess
import sys

import pytest


def compile_all(arch: int):
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from perfloss.kernels import feature_distance as fd
    from perfloss.kernels import gram as gm
    from perfloss.kernels import style_loss as st
    from perfloss.kernels import tv_loss as tv

    def comp(kernel, sig, consts, num_warps=4):
        fn = kernel.fn if hasattr(kernel, "configs") else kernel  # unwrap the autotuner
        full = {n: ("constexpr" if n in consts else sig[n]) for n in fn.arg_names}
        src = ASTSource(fn=fn, signature=full, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})

    f32 = tl.float32
    for dt in ("bf16", "fp32"):
        p = "*" + dt
        for kind in (0, 1):
            comp(fd._elementwise_kernel, dict(a_ptr=p, b_ptr=p, g_ptr=p, part_ptr="*fp32", L="i64", n_blocks="i32",
                                              gscale="fp32"), dict(KIND=kind, GRAD=True, ACC=f32, BLOCK=1024))
        for kind, chunks, has_w in ((2, 1, False), (3, 1, True), (2, 8, False), (3, 8, True)):
            comp(fd._normalized_kernel,
                 dict(a_ptr=p, b_ptr=p, g_ptr=p, w_ptr="*fp32", part_ptr="*fp32", C="i32", P="i32", stride_c="i32",
                      stride_p="i32", n_blocks="i32", inv_p="fp32", eps="fp32"),
                 dict(KIND=kind, GRAD=True, HAS_W=has_w, ACC=f32, BLOCK_C=64, N_CHUNKS=chunks, BLOCK_P=64))
        comp(tv._tv_kernel, dict(x_ptr=p, g_ptr=p, part_ptr="*fp32", L="i64", H="i32", W="i32", s_h="i32", s_w="i32",
                                 n_blocks="i32", gh="fp32", gw="fp32"), dict(L1=True, GRAD=True, ACC=f32, BLOCK=2048))
        for bm, prec in ((16, "ieee"), (128, "tf32" if dt == "fp32" else "ieee")):
            comp(gm._gram_partial_kernel,
                 dict(x_ptr=p, ws_ptr="*fp32", tile_i_ptr="*i32", tile_j_ptr="*i32", B="i32", C="i32", N="i32",
                      stride_b="i64", stride_c="i32", stride_k="i32"),
                 dict(ACC=f32, UPCAST=False, PRECISION=prec, BM=bm, BK=64, K_ITERS=4), num_warps=8)
        comp(gm._gram_reduce_kernel, dict(ws_ptr="*fp32", out_ptr=p, B="i32", C="i32", scale="fp32"),
             dict(SPLIT=8, ACC=f32, BLOCK=1024))
        comp(st._style_grad_kernel, dict(s_ptr="*fp32", x_ptr=p, g_ptr=p, C="i32", N="i32", stride_b="i64",
                                         stride_c="i32", stride_k="i32"),
             dict(ACC=f32, PRECISION="tf32", BM=64, BJ=32, N_J=8, BN=128))
    comp(st._style_diff_kernel, dict(g_ptr="*fp32", t_ptr="*fp32", s_ptr="*fp32", part_ptr="*fp32", C="i32",
                                     t_sb="i32", t_si="i32", t_sj="i32", n_iblk="i32", gscale="fp32"),
         dict(ACC=f32, BI=16, BJ=64, N_J=8))


def _cuda_backend_present():
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _cuda_backend_present(), reason="triton without its NVIDIA backend")
def test_loss_op_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "90"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    compile_all(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
    print("compiled")
