// A list of tensors handed to one launch by value, in the kernel's parameter space, so that an
// optimizer step over a hundred small tensors (the biases, LayerNorms and LoRA factors of a
// PEFT plan) is a few launches instead of one per tensor per op.
//
// Each tensor owns a run of consecutive blocks, `first_block[t] .. first_block[t + 1]`, as many
// as a launch over that tensor alone would have (the host sizes both the same way), and walks
// its elements with that run as its grid. So every element is visited by the same thread of
// the same local block as in a per-tensor launch: elementwise results and per-block partial
// sums come out bit for bit the same. Mirrored field for field by TensorList in
// src/backend/cuda/tensor_list.rs.
#pragma once
#include "common.cuh"

#define TENSOR_LIST_CAPACITY 48
#define TENSOR_LIST_OPERANDS 4

struct TensorList {
    // Up to four operands per tensor (e.g. AdamW's p, g, m, v), all of n[t] elements.
    void* operand[TENSOR_LIST_CAPACITY][TENSOR_LIST_OPERANDS];
    long n[TENSOR_LIST_CAPACITY];
    // A per-tensor scalar (AdamW's decay factor 1 − lr·wd); unused by other ops.
    float scalar[TENSOR_LIST_CAPACITY];
    int first_block[TENSOR_LIST_CAPACITY + 1];
    int count;
};

// The classic 4 KiB of kernel parameters, kept even though sm_70+ with CUDA 12.1 takes 32 KiB:
// the launch then works under any driver this PTX loads on.
static_assert(sizeof(TensorList) + 64 <= 4096, "a TensorList and its scalars fit 4 KiB of parameters");

// Which tensor of the list this block works on, and the block's place in that tensor's run.
struct ListBlock {
    int tensor;
    long block;
    long blocks;
};

__device__ __forceinline__ ListBlock list_block(const TensorList& list) {
    int t = 0;
    while (t + 1 < list.count && (int)blockIdx.x >= list.first_block[t + 1]) ++t;
    ListBlock b;
    b.tensor = t;
    b.block = (long)blockIdx.x - list.first_block[t];
    b.blocks = (long)list.first_block[t + 1] - list.first_block[t];
    return b;
}

// The grid-stride loop of a per-tensor launch, over the tensor's own run of blocks.
#define LIST_STRIDE(i, b, n) \
    for (long i = (b).block * (long)blockDim.x + threadIdx.x; i < (n); i += (b).blocks * (long)blockDim.x)
