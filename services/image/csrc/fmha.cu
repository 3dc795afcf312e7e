// Hopper attention forward for the image service: CUTLASS's warp-specialized FMHA collectives (shipped as
// example 88 in the CUTLASS source tree, which services/image/csrc/build.sh takes from the nvidia-cutlass
// wheel) instantiated for head dim 128, no mask, in diffusers' (batch, seq, heads, dim) layout, with a
// C entry point that services/image/fmha.py calls through ctypes. Nothing here depends on PyTorch's C++ ABI.
//
// Two element types:
// - bf16 Q, K, V and output;
// - e4m3 Q and K in the same layout, e4m3 V transposed to (batch, heads, dim, seq) (Hopper's fp8 tensor
//   cores need the reduction dimension contiguous), bf16 output. The caller folds Q's and K's scales into
//   `scale` and multiplies the output by V's scale.
#include <cmath>
#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "collective/fmha_fusion.hpp"
#include "device/device_universal.hpp"
#include "kernel/fmha_kernel_builder.hpp"

using namespace cute;
namespace fmha = cutlass::fmha;

namespace modelplat_fmha {

using StrideQK = cute::tuple<int, _1, cute::tuple<int, int>>;  // seq, dim, (batch, heads)
using StrideVt = cute::tuple<_1, int, cute::tuple<int, int>>;  // V^T: seq contiguous
using TileShape = Shape<_128, _128, _128>;

// Same composition as the example's builder, but the epilogue's element type is chosen separately so fp8
// inputs write bf16 output.
template <class Element, class Out, class StrideV, class Policy, class... Options>
struct Build {
  using In = Element;
  using Output = Out;
  using LayoutV = StrideV;
  using Mainloop = fmha::collective::FmhaMainloopTmaWarpSpecialized<
      Element, float, float, TileShape, StrideQK, StrideQK, StrideV, fmha::collective::DefaultFusion, Options...>;
  using Epilogue = fmha::collective::FmhaFwdEpilogue<Out, float, typename Mainloop::TileShapePV>;
  using Kernel = fmha::kernel::FmhaKernelTmaWarpSpecialized<Mainloop, Epilogue, Policy, Options...>;
};

using Persistent = fmha::kernel::PersistentTileScheduler;
using Individual = fmha::kernel::IndividualTileScheduler;
template <bool V> using Flag = std::integral_constant<bool, V>;
using PingpongOpts = fmha::kernel::Option<fmha::kernel::Tag::kIsPersistent, Flag<true>>;
using QSeparately = fmha::kernel::Option<fmha::kernel::Tag::kLoadsQSeparately, Flag<true>>;

using Bf16Pingpong = Build<cutlass::bfloat16_t, cutlass::bfloat16_t, StrideQK, Persistent, PingpongOpts, QSeparately>;
using Bf16Coop = Build<cutlass::bfloat16_t, cutlass::bfloat16_t, StrideQK, Individual>;
using Fp8Pingpong = Build<cutlass::float_e4m3_t, cutlass::bfloat16_t, StrideVt, Persistent, PingpongOpts, QSeparately>;
using Fp8Coop = Build<cutlass::float_e4m3_t, cutlass::bfloat16_t, StrideVt, Individual>;

template <class B>
int launch(const void* q, const void* k, const void* v, void* o, float* lse, int b, int h, int s_q, int s_k,
           const long long* strides, float scale, cudaStream_t stream) {
  using Kernel = typename B::Kernel;
  using Element = typename B::In;
  using Out = typename B::Output;
  using Op = cutlass::device::Universal<Kernel>;
  constexpr int d = 128;
  // strides[0..5]: token and batch strides (elements) of q, k and v; heads are d apart, dims contiguous
  StrideQK dq = make_stride(int(strides[0]), _1{}, make_stride(int(strides[1]), d));
  StrideQK dk = make_stride(int(strides[2]), _1{}, make_stride(int(strides[3]), d));
  StrideQK d_o = make_stride(h * d, _1{}, make_stride(s_q * h * d, d));
  typename B::LayoutV dv;
  if constexpr (sizeof(Element) == 1) {
    dv = make_stride(_1{}, s_k, make_stride(h * d * s_k, d * s_k));  // (batch, heads, dim, seq) contiguous
  } else {
    dv = make_stride(int(strides[4]), _1{}, make_stride(int(strides[5]), d));
  }
  typename Kernel::Arguments args{
      {b, h, s_q, s_k, d},
      {static_cast<const Element*>(q), dq, static_cast<const Element*>(k), dk, static_cast<const Element*>(v), dv},
      {static_cast<Out*>(o), d_o, lse, make_stride(_1{}, make_stride(h * s_q, s_q))},
      cutlass::KernelHardwareInfo{0, cutlass::KernelHardwareInfo::query_device_multiprocessor_count(0)}};
  if (!Kernel::can_implement(args)) return 2;
  static bool configured = false;  // the shared-memory opt-in, once per kernel
  if (!configured) {
    if (cudaFuncSetAttribute(cutlass::device_kernel<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Kernel::SharedStorageSize) != cudaSuccess) return 3;
    configured = true;
  }
  auto params = Kernel::to_underlying_arguments(args, nullptr);
  params.mainloop.scale_softmax = scale;
  params.mainloop.scale_softmax_log2 = scale * static_cast<float>(M_LOG2E);
  return Op::run(params, stream) == cutlass::Status::kSuccess ? 0 : 4;
}

}  // namespace modelplat_fmha

extern "C" {

// kind: 0 bf16 ping-pong, 1 bf16 cooperative, 2 fp8 ping-pong, 3 fp8 cooperative. Returns 0 on success,
// 2 when the kernel cannot take these shapes or strides, 3-4 when CUDA refused the launch.
int modelplat_fmha_fwd(int kind, const void* q, const void* k, const void* v, void* o, float* lse, int b, int h,
                       int s_q, int s_k, const long long* strides, float scale, cudaStream_t stream) {
  switch (kind) {
    case 0: return modelplat_fmha::launch<modelplat_fmha::Bf16Pingpong>(q, k, v, o, lse, b, h, s_q, s_k, strides, scale, stream);
    case 1: return modelplat_fmha::launch<modelplat_fmha::Bf16Coop>(q, k, v, o, lse, b, h, s_q, s_k, strides, scale, stream);
    case 2: return modelplat_fmha::launch<modelplat_fmha::Fp8Pingpong>(q, k, v, o, lse, b, h, s_q, s_k, strides, scale, stream);
    case 3: return modelplat_fmha::launch<modelplat_fmha::Fp8Coop>(q, k, v, o, lse, b, h, s_q, s_k, strides, scale, stream);
    default: return 1;
  }
}

}  // extern "C"
